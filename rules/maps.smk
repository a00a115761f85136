"""Maps: BLMM's outputs, in the images' kind, and the resolved config.

INPUT   fit.npz and stats.npz of every voxel batch, design.npz, the first image
        (a table study: its parcel list)
OUTPUT  <outdir>/blmm_vox_<name>{.nii[.gz],.func.gii,.dscalar.nii,.tsv},
        <outdir>/inputs.yml; a table study also <outdir>/blmm_parcels.tsv
"""


rule maps:
    """Assemble the output maps of all voxel batches."""
    input:
        fit=all_voxel_batches("fit.npz"),
        stats=all_voxel_batches("stats.npz"),
        design=work("setup/design.npz"),
        reference=grid_reference(),
        until_maps=temporary_until_maps(),
    output:
        **map_files(),
        inputs=f"{OUTDIR}/inputs.yml",
    log:
        work("logs/maps.log"),
    benchmark:
        work("benchmarks/maps.tsv")
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    params:
        maps=MAPS,
        resolved=resolved_config(),
        volumes=volume_names(),
    script:
        "../blmm_scripts/workflow/maps.py"
