"""The example study: images, masks, lists and CSVs simulated from a seed.

Only active when the config has a `simulate` key (the default config/config.yaml).
"""

from blmm_scripts.simulate import study_files

if SETTINGS.simulate:

    rule simulate:
        """Simulate the example longitudinal study from its seed."""
        output:
            [
                as_relative(p)
                for p in study_files(
                    SETTINGS.simulate.folder,
                    SETTINGS.simulate.n_subjects,
                    SETTINGS.simulate.visits,
                ).values()
            ],
        log:
            "logs/simulate.log",
        conda:
            "../envs/blmm.yaml"
        threads: 1
        params:
            # one mapping, as the config writes it (the folder is where the
            # study goes, not a prefix of files read elsewhere)
            simulation={
                "folder": as_relative(SETTINGS.simulate.folder),
                "seed": SETTINGS.simulate.seed,
                "n_subjects": SETTINGS.simulate.n_subjects,
                "visits": SETTINGS.simulate.visits,
                "shape": list(SETTINGS.simulate.shape),
            },
        script:
            "../blmm_scripts/workflow/simulate.py"
