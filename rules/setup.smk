"""Setup: the design (X, factors) and the analysis-mask voxel list, once.

OUTPUT  <outdir>/work/setup/design.npz
"""


rule setup:
    """Read X, the random factors and the analysis mask into design.npz."""
    input:
        **design_inputs(),
        first_image=as_relative(INPUTS.images[0]),
    output:
        design=work("setup/design.npz"),
    log:
        work("logs/setup.log"),
    benchmark:
        work("benchmarks/setup.tsv")
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    params:
        names=[spec.name for spec in SETTINGS.factors],
        formula=formula_params(),
    script:
        "../blmm_scripts/workflow/setup.py"
