"""Count the cluster jobs a Snakemake run would submit, from a dry run.

Usage: python count_jobs.py SNAKEMAKE_ARGS...   (without -n; it is added)

A dry run hands the dry-run executor the same jobs and group jobs that a cluster
executor would get, one call per submission. This wraps `snakemake` in-process, records
each of those calls instead of printing the job (printing the inputs of every job is
what makes a dry run of a 20,000-image analysis slow), and prints one JSON line:

    {"submitted": N, "by_name": {"setup": 1, "products": 23, ...}, "rule_jobs": M,
     "by_rule": {"batch": 1112, ...}}

`submitted` leaves out jobs that run on the submitting host (local rules and rules
without an action, such as `all`); `by_name` splits it by rule or group name.
`rule_jobs` counts every rule job, grouped or not, and `by_rule` splits it by rule.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from snakemake.executors import dryrun

submitted: Counter[str] = Counter()
by_rule: Counter[str] = Counter()


def _record(self, job) -> None:
    """Record one submission (a job or a group job) instead of printing it."""
    if job.is_group():
        by_rule.update(member.rule.name for member in job.jobs)
        submitted[job.groupid] += 1
        return
    by_rule[job.rule.name] += 1
    # Workflow.is_local() says True for every job in a dry run; ask what it asks
    # otherwise.
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
                "rule_jobs": sum(by_rule.values()),
                "by_rule": dict(sorted(by_rule.items())),
            }
        )
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
