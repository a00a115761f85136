"""Count the cluster jobs a Snakemake run would submit, from a dry run.

Usage: python count_jobs.py SNAKEMAKE_ARGS...   (without -n; it is added)

A dry run hands the dry-run executor the same jobs and group jobs that a cluster executor
would get, one call per submission. This wraps `snakemake` in-process, records each of
those calls instead of printing the job (printing the inputs of every job is what makes
a dry run of a 20,000-image analysis slow), and prints one JSON line:

    {"submitted": N, "by_name": {"setup": 1, "products": 23, ...}, "rule_jobs": M}

`submitted` leaves out jobs that run on the submitting host (local rules and rules
without an action, such as `all`); `rule_jobs` counts every rule job, grouped or not.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from snakemake.executors import dryrun

submitted: Counter[str] = Counter()
rule_jobs = 0


def _record(self, job) -> None:
    """Record one submission (a job or a group job) instead of printing it."""
    global rule_jobs
    if job.is_group():
        members = list(job.jobs)
        rule_jobs += len(members)
        submitted[job.groupid] += 1
        return
    rule_jobs += 1
    # Workflow.is_local() says True for every job in a dry run; ask what it asks otherwise.
    if not (job.rule.norun or job.rule.name in job.dag.workflow._localrules):
        submitted[job.rule.name] += 1


dryrun.Executor.printjob = _record


def main(argv: list[str]) -> int:
    """Run the dry run and print the counts."""
    from snakemake.cli import main as snakemake_main

    try:
        snakemake_main(["--dry-run", "--quiet", "all", *argv])
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    print(
        json.dumps(
            {
                "submitted": sum(submitted.values()),
                "by_name": dict(sorted(submitted.items())),
                "rule_jobs": rule_jobs,
            }
        )
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
