"""The example study: images, masks, lists and CSVs simulated from a seed.

Only active when the config has a `simulate` key (the default config/config.yaml).
"""

from blmm_scripts.simulate import study_files

if config.get("simulate"):

    rule simulate:
        """Simulate the example longitudinal study from its seed."""
        output:
            [
                as_relative(p)
                for p in study_files(
                    Path(config["simulate"]["folder"]).absolute(),
                    config["simulate"]["n_subjects"],
                    config["simulate"]["visits"],
                ).values()
            ],
        log:
            "logs/simulate.log",
        conda:
            "../envs/blmm.yaml"
        threads: 1
        params:
            settings=config["simulate"],
        script:
            "../blmm_scripts/workflow/simulate.py"
