"""Setup: the design (X, factors) and the analysis-mask voxel list, once; a table
study's values as an array that batch jobs memory-map.

OUTPUT  <outdir>/work/setup/design.npz
        <outdir>/work/setup/{values.npy,parcels.tsv} (Y_table only)
"""


rule setup:
    """Read X, the random factors and the analysis mask into design.npz."""
    input:
        **design_inputs(),
        **({} if INPUTS.table else {"first_image": as_relative(INPUTS.images[0])}),
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
        grid=list(INPUTS.shape),
    script:
        "../blmm_scripts/workflow/setup.py"


if INPUTS.table is not None:

    rule table:
        """Write Y_table's values as float64 (NaN missing) and its parcel names."""
        input:
            table=as_relative(INPUTS.table.path),
        output:
            values=work("setup/values.npy"),
            parcels=work("setup/parcels.tsv"),
        log:
            work("logs/table.log"),
        benchmark:
            work("benchmarks/table.tsv")
        conda:
            "../envs/blmm.yaml"
        threads: 1
        resources:
            mem_mb=job_mem,
        params:
            max_bytes=SETTINGS.MAXMEM,
        script:
            "../blmm_scripts/workflow/table.py"
