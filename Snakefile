# BLMM (Big Linear Mixed Models) on Snakemake.
#
# Inputs: a BLMM config (config/config.yaml, the example, or --configfile yours).
# Outputs: BLMM's maps in <outdir>/blmm_vox_*.nii and <outdir>/inputs.yml.
# Intermediates: <outdir>/work/{setup,batch/<b>,vox/<j>,logs}/ (see README).
from snakemake.utils import min_version

min_version("9.0")


# ---- Configuration ----
# The example config applies only when no --configfile is given, so that none of
# its keys leak into a user's BLMM config (Snakemake would merge the two).  It is
# found next to this Snakefile, so the example also runs with --directory.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


report: "report/workflow.rst"


# ---- Rules ----
include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/setup.smk"
include: "rules/batch.smk"
include: "rules/concat.smk"
include: "rules/estimate.smk"
include: "rules/inference.smk"
include: "rules/maps.smk"
include: "rules/fdr.smk"
include: "rules/parcels.smk"
include: "rules/report.smk"
include: "rules/compare.smk"


# ---- Handlers ----
onstart:
    lock_outdir()


onsuccess:
    unlock_outdir()
    end_promptly()
    print(f"BLMM finished: maps in {OUTDIR}/ (blmm_vox_*{MAP_SUFFIX})")


onerror:
    unlock_outdir()
    end_promptly()
    print(f"BLMM failed: see the logs in {OUTDIR}/work/logs/")


# ---- Target ----
rule all:
    """Every map of the analysis and the resolved config."""
    default_target: True
    input:
        final_outputs(),
        FDR_FILES,
        PARCEL_FILES,
        REPORT_FILES,
