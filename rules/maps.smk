"""Maps: BLMM's NIfTI outputs and the resolved config.

INPUT   fit.npz and stats.npz of every voxel batch, design.npz, the first image
OUTPUT  <outdir>/blmm_vox_<name>.nii[.gz], <outdir>/inputs.yml
"""


rule maps:
    """Assemble the output maps of all voxel batches."""
    input:
        fit=all_voxel_batches("fit.npz"),
        stats=all_voxel_batches("stats.npz"),
        design=work("setup/design.npz"),
        reference=as_relative(INPUTS.images[0]),
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
    script:
        "../blmm_scripts/workflow/maps.py"
