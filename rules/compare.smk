"""Compare: likelihood-ratio test of two finished, nested analyses.

    snakemake --cores 1 compare --config compare_small=DIR0 compare_large=DIR1 \
        compare_out=DIR

INPUT   DIR0 and DIR1: inputs.yml, blmm_vox_llh, blmm_vox_mask of each analysis
OUTPUT  DIR/blmm_vox_{mask,Chi2,Chi2lp} (the analyses' kind: .nii, .func.gii, ...),
        DIR/logs/compare.log

The analysis config (the example's, or --configfile) is parsed as usual but not
used.  Without compare_small and compare_large the rule's only input is a file that
cannot exist, named so that Snakemake's "missing input" error says what to do.
"""

from blmm_scripts import compare as blmm_compare

COMPARE_OUT = as_relative(SETTINGS.compare_out)
COMPARE_INPUTS = (
    {
        f"{which}_{name}": path
        for which, folder in (
            ("small", SETTINGS.compare_small),
            ("large", SETTINGS.compare_large),
        )
        for name, path in blmm_compare.analysis_files(as_relative(folder)).items()
    }
    if SETTINGS.compare_small and SETTINGS.compare_large
    else {"missing": "(give --config compare_small=DIR compare_large=DIR)"}
)
# The maps come out in the kind of the analyses' maps (NIfTI, GIFTI, CIFTI, TSV).
COMPARE_SUFFIX = (
    blmm_compare.map_suffix_of(as_relative(SETTINGS.compare_small))
    if SETTINGS.compare_small
    else ".nii"
)


rule compare:
    """Check the analyses are nested; write Chi2 and -log10 p maps."""
    input:
        **COMPARE_INPUTS,
    output:
        mask=f"{COMPARE_OUT}/blmm_vox_mask{COMPARE_SUFFIX}",
        Chi2=f"{COMPARE_OUT}/blmm_vox_Chi2{COMPARE_SUFFIX}",
        Chi2lp=f"{COMPARE_OUT}/blmm_vox_Chi2lp{COMPARE_SUFFIX}",
    log:
        f"{COMPARE_OUT}/logs/compare.log",
    benchmark:
        f"{COMPARE_OUT}/benchmarks/compare.tsv"
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    script:
        "../blmm_scripts/workflow/compare.py"
