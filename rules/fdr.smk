"""FDR: Benjamini-Hochberg -log10 q maps over the analysis mask (config fdr: true).

INPUT   <outdir>/blmm_vox_con{T,F}lp, <outdir>/blmm_vox_mask
OUTPUT  <outdir>/blmm_vox_con{T,F}lq: -log10 q, one volume per contrast, float32
"""

FDR_FILES = (
    [
        f"{OUTDIR}/blmm_vox_con{stat}lq{MAP_SUFFIX}"
        for stat, count in (("T", N_T), ("F", N_F))
        if count
    ]
    if SETTINGS.fdr
    else []
)


rule fdr:
    """-log10 q (BH over the mask voxels) of every T or F contrast."""
    input:
        lp=f"{OUTDIR}/blmm_vox_con{{stat}}lp{MAP_SUFFIX}",
        mask=map_files()["mask"],
    output:
        lq=f"{OUTDIR}/blmm_vox_con{{stat}}lq{MAP_SUFFIX}",
    log:
        work("logs/fdr/con{stat}.log"),
    benchmark:
        work("benchmarks/fdr/con{stat}.tsv")
    wildcard_constraints:
        stat="T|F",
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    script:
        "../blmm_scripts/workflow/fdr.py"
