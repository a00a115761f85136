"""Batch: products of one chunk of images at every analysis-mask voxel.

INPUT   the images (and data masks) of batch b, design.npz; a table study:
        work/setup/values.npy (its batch's rows)
OUTPUT  <outdir>/work/batch/<b>/{XtY,ZtY,ZtY_columns,YtY,n}.npy, missing.npz, or with
        grouped statistics <outdir>/work/batch/<b>/groups.npz (temporary);
        with one image batch, each voxel batch's <outdir>/work/vox/<j>/products.npz
        (what concat would write; there is no concat stage then)
"""


rule batch:
    """X'Y, Z'Y, Y'Y, image counts and missing images of one image batch."""
    input:
        images=batch_images,
        masks=batch_masks,
        design=work("setup/design.npz"),
    output:
        **(
            {"products": [intermediate(p) for p in all_voxel_batches("products.npz")]}
            if ONE_IMAGE_BATCH
            else {
                name: temp(work(f"batch/{{b}}/{file}"))
                for name, file in BATCH_FILES.items()
            }
        ),
    log:
        work("logs/batch/{b}.log" if not ONE_IMAGE_BATCH else "logs/batch/0000.log"),
    benchmark:
        work(
            "benchmarks/batch/{b}.tsv"
            if not ONE_IMAGE_BATCH
            else "benchmarks/batch/0000.tsv"
        )
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    params:
        rows=image_range,
        table_rows=batch_table_rows,
        grouped=GROUPED,
        thresh=SETTINGS.data_mask_thresh,
        voxel_batches=PLAN.voxel_batches if ONE_IMAGE_BATCH else None,
    script:
        "../blmm_scripts/workflow/batch.py"
