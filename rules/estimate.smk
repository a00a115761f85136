"""Estimate: missingness rules and the model fit of voxel batch j.

INPUT   products.npz of j, design.npz
OUTPUT  <outdir>/work/vox/<j>/fit.npz: beta, sigma2, D, llh, nit, status, n
"""


rule estimate:
    """Fit the linear mixed model at every voxel of one voxel batch."""
    input:
        products=work("vox/{j}/products.npz"),
        design=work("setup/design.npz"),
    output:
        fit=work("vox/{j}/fit.npz"),
    log:
        work("logs/estimate/{j}.log"),
    benchmark:
        work("benchmarks/estimate/{j}.tsv")
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    params:
        min_percent=SETTINGS.min_percent,
        min_n=SETTINGS.min_n,
        safe_mode=SETTINGS.safe_mode,
        method=SETTINGS.method,
        reml=SETTINGS.reml,
        tol=SETTINGS.tol,
        maxnit=SETTINGS.maxnit,
    script:
        "../blmm_scripts/workflow/estimate.py"
