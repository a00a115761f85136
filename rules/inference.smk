"""Inference: contrasts, standard errors, T and F statistics of voxel batch j.

INPUT   products.npz and fit.npz of j, design.npz
OUTPUT  <outdir>/work/vox/<j>/stats.npz
"""


rule inference:
    """Statistics of every contrast at every fitted voxel of one voxel batch."""
    input:
        products=work("vox/{j}/products.npz"),
        fit=work("vox/{j}/fit.npz"),
        design=work("setup/design.npz"),
    output:
        stats=work("vox/{j}/stats.npz"),
    log:
        work("logs/inference/{j}.log"),
    benchmark:
        work("benchmarks/inference/{j}.tsv")
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    params:
        contrasts=[{"name": c.name, "L": c.L.tolist()} for c in SETTINGS.contrasts],
        two_sided=SETTINGS.two_sided,
        minlog=SETTINGS.minlog,
    script:
        "../blmm_scripts/workflow/inference.py"
