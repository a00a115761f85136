"""Report: figures and a run summary for Snakemake's HTML report.

    snakemake --cores 2 --config report=true   # or `report: true` in the config
    snakemake --report report.html             # after the run

INPUT   the final maps of the analysis, inputs.yml, <outdir>/work/benchmarks/
OUTPUT  <outdir>/report/{contrast_<c>.png, map_<name>.png, summary.{tsv,html}};
        a table study also contrast_<c>_parcels.tsv (parcels by -log10 p)

Every output is flagged with report(), with a caption from report/*.rst.
"""

from blmm_scripts.report import contrast_volumes

REPORT_DIR = f"{OUTDIR}/report"
REPORT_CONTRASTS = contrast_volumes(SETTINGS.contrasts)
# Figures threshold -log10 p at 3 (p < 0.001, uncorrected), the captions say so.
REPORT_THRESHOLD = 3.0
REPORT_MAPS = {
    "mask": "Analysis mask (blmm_vox_mask): voxels fitted and kept",
    "n": "Images present (blmm_vox_n)",
    "status": "Voxel status (blmm_vox_status)",
    "nit": "Iterations to convergence (blmm_vox_nit)",
}
# The analysis mask as an input, if the config has one: the voxels considered (the
# summary counts them; the mosaics draw them in colour, the rest dark grey).
REPORT_ANALYSIS_MASK = (
    {"analysis_mask": as_relative(SETTINGS.analysis_mask)}
    if SETTINGS.analysis_mask
    else {}
)
# Surface data are drawn on the surface_mesh meshes; a table study's contrasts
# also list the parcels ranked by -log10 p.
REPORT_MESHES = {"meshes": [as_relative(m) for m in SETTINGS.surface_mesh]}
REPORT_RANKING = (
    {
        "ranking": report(
            f"{REPORT_DIR}/contrast_{{con}}_parcels.tsv",
            caption="../report/parcels.rst",
            category="Contrasts",
            labels={"contrast": "{con}", "figure": "parcels by -log10 p"},
        )
    }
    if INPUTS.kind == "table"
    else {}
)
REPORT_FILES = (
    [f"{REPORT_DIR}/contrast_{con}.png" for con in REPORT_CONTRASTS]
    + (
        [f"{REPORT_DIR}/contrast_{con}_parcels.tsv" for con in REPORT_CONTRASTS]
        if INPUTS.kind == "table"
        else []
    )
    + [f"{REPORT_DIR}/map_{name}.png" for name in REPORT_MAPS]
    + [f"{REPORT_DIR}/summary.html", f"{REPORT_DIR}/summary.tsv"]
    if SETTINGS.report
    else []
)


wildcard_constraints:
    con=r"c\d+",


rule report_contrast:
    """Figure of one contrast: T or F map and -log10 p, thresholded."""
    input:
        **{
            name: path
            for name, path in map_files().items()
            if name in ("mask", "conT", "conTlp", "conF", "conFlp")
        },
        **REPORT_MESHES,
    output:
        **REPORT_RANKING,
        figure=report(
            f"{REPORT_DIR}/contrast_{{con}}.png",
            caption="../report/contrast.rst",
            category="Contrasts",
            labels={"contrast": "{con}", "figure": "statistic and -log10 p"},
        ),
    log:
        work("logs/report/contrast_{con}.log"),
    benchmark:
        work("benchmarks/report_contrast/{con}.tsv")
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    params:
        contrasts=REPORT_CONTRASTS,
        threshold=REPORT_THRESHOLD,
        kind=INPUTS.kind,
        meshes=bool(SETTINGS.surface_mesh),
    script:
        "../blmm_scripts/workflow/report_contrast.py"


rule report_maps:
    """Mosaics of the analysis mask, n and the diagnostics maps."""
    input:
        **{name: map_files()[name] for name in REPORT_MAPS},
        **REPORT_ANALYSIS_MASK,
    output:
        **{
            name: report(
                f"{REPORT_DIR}/map_{name}.png",
                caption="../report/maps.rst",
                category="Mask and diagnostics",
                labels={"map": f"blmm_vox_{name}"},
            )
            for name in REPORT_MAPS
        },
    log:
        work("logs/report/maps.log"),
    benchmark:
        work("benchmarks/report_maps/maps.tsv")
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    params:
        titles=REPORT_MAPS,
    script:
        "../blmm_scripts/workflow/report_maps.py"


rule report_summary:
    """Run summary: images, voxels, drops by reason, convergence, time per stage."""
    input:
        **{name: map_files()[name] for name in ("mask", "n", "status", "nit")},
        **REPORT_ANALYSIS_MASK,
        inputs=f"{OUTDIR}/inputs.yml",
    output:
        html=report(
            f"{REPORT_DIR}/summary.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={"table": "run summary"},
        ),
        tsv=report(
            f"{REPORT_DIR}/summary.tsv",
            caption="../report/summary.rst",
            category="Summary",
            labels={"table": "run summary (TSV)"},
        ),
    log:
        work("logs/report/summary.log"),
    benchmark:
        work("benchmarks/report_summary/summary.tsv")
    conda:
        "../envs/blmm.yaml"
    threads: 1
    resources:
        mem_mb=job_mem,
    params:
        n_images=INPUTS.n_images,
        benchmarks=work("benchmarks"),
        # Rules that may run after the summary: left out, so it does not depend
        # on job order.
        skip=["report_contrast", "report_maps", "report_summary", "fdr"],
    script:
        "../blmm_scripts/workflow/report_summary.py"
