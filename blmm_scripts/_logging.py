"""Route logging, warnings and an uncaught traceback of a rule's job to its log file."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def log_to_file(path: str | Path, level: int = logging.INFO) -> Iterator[None]:
    """Send ``logging`` records and warnings to ``path`` while the block runs.

    An exception raised in the block is written to the log with its traceback and
    then re-raised, so Snakemake marks the job as failed and shows the log.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    try:
        yield
    except BaseException:
        handler.stream.write(traceback.format_exc())
        raise
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        sys.stderr.flush()
