"""Concat: sums over image batches for the voxels of voxel batch j.

INPUT   every image batch's files, design.npz
OUTPUT  <outdir>/work/vox/<j>/products.npz: X'Y, Z'Y, Y'Y, n and the missing images
        of each voxel (sparse), or the grouped sums per level size; kept unless
        keep_intermediates is false.  Not a stage with one image batch (the batch
        job writes these files then).
"""

if not ONE_IMAGE_BATCH:

    rule concat:
        """Sufficient statistics of one voxel batch."""
        input:
            **{name: all_batches(file) for name, file in BATCH_FILES.items()},
            design=work("setup/design.npz"),
        output:
            products=intermediate(work("vox/{j}/products.npz")),
        log:
            work("logs/concat/{j}.log"),
        benchmark:
            work("benchmarks/concat/{j}.tsv")
        conda:
            "../envs/blmm.yaml"
        threads: 1
        resources:
            mem_mb=job_mem,
        params:
            voxels=voxel_range,
            image_batches=PLAN.image_batches,
            grouped=GROUPED,
        script:
            "../blmm_scripts/workflow/concat.py"
