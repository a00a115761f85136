"""Parcel tables: ``Y_table`` in (one row per image), ``blmm_vox_<map>.tsv`` out.

``Y_table`` (``.tsv``, ``.csv`` or ``.parquet``) has a header row; its first column
holds one id per image, every other column is a parcel (or ROI) named in the
header.  An empty cell or ``n/a`` is missing for that image at that parcel.  It is
read in chunks of rows, so that no step holds more than ``MAXMEM`` bytes of it:
:func:`scan` checks every cell before any job, :func:`write_values` (the table
rule) writes the values once as a float64 ``.npy`` file that batch jobs
memory-map.

A parcel map (an output of a table study) is a TSV with a first column ``parcel``
(the parcel names, in the input's column order) and one column per volume.

Only :mod:`blmm_scripts.io` and the config check call this module.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

#: Suffixes of a Y_table.
TABLE_SUFFIXES = (".tsv", ".csv", ".txt", ".parquet")
#: Cells that mean "missing".
MISSING_CELLS = ("", "n/a")
#: The first column of a parcel map.
PARCEL = "parcel"


@dataclass(frozen=True)
class TableHeader:
    """The columns of a Y_table.

    Parameters
    ----------
    id_column : str
        The first column's name: the images' ids.
    parcels : tuple of str
        The other columns' names, in order.
    """

    id_column: str
    parcels: tuple[str, ...]


def _sep(path: Path) -> str:
    """Return the field separator of a text table."""
    return "\t" if Path(path).suffix.lower() in (".tsv", ".txt") else ","


def _is_parquet(path: Path) -> bool:
    """Return True for a Parquet file."""
    return Path(path).suffix.lower() == ".parquet"


def read_header(path: Path) -> TableHeader:
    """Return the columns of a Y_table from its header alone.

    Raises
    ------
    ValueError
        If there is no parcel column, or a column name is empty or repeated.
    """
    if _is_parquet(path):
        import pyarrow.parquet as pq

        names = [str(c) for c in pq.ParquetFile(path).schema_arrow.names]
    else:  # the raw first line: pandas renames repeated names (p1, p1.1)
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            first = next(csv.reader(fh, delimiter=_sep(path)), [])
        names = [c.strip() for c in first]
    if len(names) < 2:
        raise ValueError(
            "needs a first column of image ids and at least one parcel column "
            f"(its header has {len(names)} column(s))"
        )
    blank = [i + 1 for i, n in enumerate(names) if not n or n.startswith("Unnamed:")]
    if blank:
        raise ValueError(f"header column(s) {blank} have no name")
    seen: set[str] = set()
    repeated = [n for n in names if n in seen or seen.add(n)]
    if repeated:
        raise ValueError(f"header names repeated: {', '.join(sorted(set(repeated)))}")
    return TableHeader(names[0], tuple(names[1:]))


def chunk_rows(n_parcels: int, max_bytes: int) -> int:
    """Return how many rows to read at once so that a chunk stays below max_bytes.

    A chunk costs about four copies of its float64 values while it is parsed.
    """
    return int(max(1, min(100_000, max_bytes // (32 * (n_parcels + 1)))))


def chunks(path: Path, max_bytes: int) -> Iterator[tuple[list[str], NDArray]]:
    """Yield (ids, values) of consecutive chunks of rows; values float64, NaN missing.

    Raises
    ------
    ValueError
        At the first chunk with a cell that is not a number or missing, naming its
        row (counted from 1 below the header), its column and its text.
    """
    header = read_header(path)
    rows = chunk_rows(len(header.parcels), max_bytes)
    start = 0
    for frame in _frames(path, header, rows):
        ids = [str(v) for v in frame.iloc[:, 0]]
        try:
            values = frame.iloc[:, 1:].to_numpy(dtype=np.float64)
        except ValueError:
            raise ValueError(_first_bad_cell(frame, start)) from None
        yield ids, values
        start += len(frame)


def _frames(path: Path, header: TableHeader, rows: int):
    """Yield chunks of a table as DataFrames of text ids and number-or-text cells."""
    import pandas as pd

    if _is_parquet(path):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield batch.to_pandas()
        return
    dtypes = {header.id_column: str}
    try:
        reader = pd.read_csv(
            path,
            sep=_sep(path),
            dtype=dtypes,
            keep_default_na=False,
            na_values={c: list(MISSING_CELLS) for c in header.parcels},
            skipinitialspace=True,
            chunksize=rows,
        )
        yield from reader
    except pd.errors.ParserError as err:
        raise ValueError(f"cannot be read as a table ({err})") from err


def _first_bad_cell(frame, start: int) -> str:
    """Describe the first cell of a chunk that is not a number or missing."""
    import pandas as pd

    cells = frame.iloc[:, 1:]
    num = cells.apply(pd.to_numeric, errors="coerce")
    bad = (num.isna() & cells.notna()).to_numpy()
    r, c = np.argwhere(bad)[0]
    return (
        f"not numbers only: row {start + r + 1} ({frame.iloc[r, 0]}), column "
        f"{cells.columns[c]!r} is {cells.iloc[r, c]!r} (a missing value is empty "
        "or n/a)"
    )


def scan(path: Path, max_bytes: int) -> list[str]:
    """Check every cell of a Y_table and return its ids, one per row.

    Raises
    ------
    ValueError
        If a cell is not a number or missing, the table has no rows, or an id is
        empty or repeated.
    """
    ids: list[str] = []
    for part, _ in chunks(path, max_bytes):
        ids += part
    if not ids:
        raise ValueError("has a header but no rows")
    check_ids(ids)
    return ids


def read_ids(path: Path) -> list[str]:
    """Return the first column of a Y_table (the ids), without checking the values."""
    import pandas as pd

    if _is_parquet(path):
        import pyarrow.parquet as pq

        column = pq.ParquetFile(path).schema_arrow.names[0]
        return [str(v) for v in pq.read_table(path, columns=[column])[0].to_pylist()]
    frame = pd.read_csv(
        path, sep=_sep(path), usecols=[0], dtype=str, keep_default_na=False
    )
    return [str(v).strip() for v in frame.iloc[:, 0]]


def check_ids(ids: Sequence[str]) -> None:
    """Raise if an id is empty or repeated (rows are matched on them)."""
    empty = [i + 1 for i, v in enumerate(ids) if v.strip() in MISSING_CELLS]
    if empty:
        raise ValueError(f"the id (first column) is empty in rows {empty[:10]}")
    seen: set[str] = set()
    repeated = sorted({v for v in ids if v in seen or seen.add(v)})
    if repeated:
        raise ValueError(
            f"ids repeated in the first column: {', '.join(repeated[:10])}"
            + (f" ({len(repeated)} in all)" if len(repeated) > 10 else "")
        )


def write_values(path: Path, out: Path, max_bytes: int) -> tuple[int, int]:
    """Write a Y_table's values as a float64 ``.npy`` (rows x parcels), NaN missing.

    Written chunk by chunk, appended to the file (not through a memory map, whose
    written pages would count in the job's memory); ``out`` must be a temporary
    path.  Returns (rows, parcels).
    """
    header = read_header(path)
    n_rows = len(read_ids(path))
    shape = (n_rows, len(header.parcels))
    with Path(out).open("wb") as fh:
        np.lib.format.write_array_header_2_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": shape}
        )
        written = 0
        for _, values in chunks(path, max_bytes):
            np.ascontiguousarray(values, dtype="<f8").tofile(fh)
            written += len(values)
    if written != n_rows:
        raise ValueError(f"{path} changed while it was read ({written} of {n_rows})")
    return shape


def read_rows(
    values: Path, rows: Sequence[int], parcels: NDArray[np.intp]
) -> NDArray[np.float64]:
    """Return some rows of the values file at some parcels, shape (rows, parcels)."""
    array = np.load(values, mmap_mode="r")
    order = np.argsort(rows, kind="stable")  # read the rows in file order
    out = np.empty((len(rows), parcels.size), dtype=np.float64)
    sorted_rows = np.asarray(rows, dtype=np.intp)[order]
    for lo in range(0, sorted_rows.size, 1024):
        block = sorted_rows[lo : lo + 1024]
        out[order[lo : lo + 1024]] = array[block][:, parcels]
    return out


# --------------------------------------------------------------------------------
# Parcel maps (outputs)
# --------------------------------------------------------------------------------


def volume_columns(map_name: str, n_volumes: int) -> list[str]:
    """Return the columns of a map's volumes: ``beta`` for one, ``beta_1``... else."""
    if n_volumes == 1:
        return [map_name]
    return [f"{map_name}_{k}" for k in range(1, n_volumes + 1)]


def parcel_names(path: Path) -> list[str]:
    """Return the parcels of a parcel map (its first column)."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", usecols=[0], dtype=str, keep_default_na=False)
    if frame.columns[0] != PARCEL:
        raise ValueError(f"{path} is not a parcel map (first column {PARCEL!r})")
    return list(frame.iloc[:, 0])


def write_parcel_names(path: Path, parcels: Sequence[str]) -> None:
    """Write a parcel map of no volumes: the parcel column alone (a grid)."""
    Path(path).write_text(
        "\n".join([PARCEL, *(_cell(p) for p in parcels)]) + "\n", encoding="utf-8"
    )


def _cell(text: str) -> str:
    """Return a name as a TSV cell (tabs and newlines are not allowed in names)."""
    if any(ch in text for ch in "\t\n\r"):
        raise ValueError(f"parcel name {text!r} holds a tab or a line break")
    return text


def save_map(path: Path, volumes: NDArray, reference: Path, columns: Sequence[str]):
    """Write a parcel map: the reference's parcel column, then one column per volume.

    float32 values are written with 9 significant digits (they read back exactly),
    int32 as integers.
    """
    data = np.asarray(volumes)
    data = data[:, None] if data.ndim == 1 else data
    parcels = parcel_names(reference)
    if data.shape[0] != len(parcels):
        raise ValueError(
            f"{data.shape[0]} values for the {len(parcels)} parcels of {reference}"
        )
    fmt = "{:d}" if data.dtype.kind in "iu" else "{:.9g}"
    lines = ["\t".join([PARCEL, *map(_cell, columns)])]
    lines += [
        "\t".join([parcel, *(fmt.format(v) for v in row)])
        for parcel, row in zip(parcels, data.tolist(), strict=True)
    ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_map(path: Path) -> NDArray[np.float64]:
    """Return a parcel map's values: (n,) for one volume, else (n, volumes).

    As float64 of the float32 values written (9 digits are rounded back to
    float32), as a NIfTI map reads, so that a step after maps (FDR) gets the
    same numbers from either.
    """
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype={PARCEL: str}, keep_default_na=False)
    if frame.columns[0] != PARCEL:
        raise ValueError(f"{path} is not a parcel map (first column {PARCEL!r})")
    data = frame.iloc[:, 1:].to_numpy(dtype=np.float64)
    data = data.astype(np.float32).astype(np.float64)
    return data[:, 0] if data.shape[1] == 1 else data


def map_columns(path: Path) -> list[str]:
    """Return the volume columns of a parcel map."""
    import pandas as pd

    return list(pd.read_csv(path, sep="\t", nrows=0).columns[1:])


def combine(maps: dict[str, Path], out: Path) -> None:
    """Write one table of every map: ``parcel``, then each map's volume columns."""
    import pandas as pd

    frames = [pd.read_csv(p, sep="\t", dtype={PARCEL: str}) for p in maps.values()]
    table = pd.concat(
        [frames[0][[PARCEL]], *(f.drop(columns=PARCEL) for f in frames)], axis=1
    )
    table.to_csv(out, sep="\t", index=False, float_format="%.9g")
