"""Parcels: every map of a table study (key Y_table) in one table.

INPUT   <outdir>/blmm_vox_<name>.tsv (the maps and the FDR maps)
OUTPUT  <outdir>/blmm_parcels.tsv: a row per parcel, a column per map volume
"""

PARCEL_FILES = [f"{OUTDIR}/blmm_parcels.tsv"] if INPUTS.table is not None else []


if INPUTS.table is not None:

    rule parcels:
        """One table of every map of a table study: a row per parcel."""
        input:
            *map_files().values(),
            *FDR_FILES,
        output:
            table=PARCEL_FILES[0],
        log:
            work("logs/parcels.log"),
        conda:
            "../envs/blmm.yaml"
        threads: 1
        resources:
            mem_mb=job_mem,
        script:
            "../blmm_scripts/workflow/parcels.py"
