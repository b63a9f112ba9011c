"""Jobs tables: reading one, and planning each of its rows before any actor starts.

A jobs table (docs/scale.md) has one row per photo/mask pair: ``photo``, ``mask``, optionally
``output`` and any per-row `run` option (``schema.ROW_OPTIONS``). It comes as a CSV, JSONL or
Parquet file on any filesystem pyarrow reads, as a Ray Dataset, a pyarrow Table, a pandas
DataFrame or a list of dicts; or it is a folder of photos with its masks, paired exactly as
`run`'s batch mode pairs them (``run.batch_pairs``).

Planning gives every row exactly one fate, decided in the driver: an error (a bad option value,
an output outside the output folder or taken by another row, an existing file no earlier run
wrote), ``skipped`` (an earlier run wrote this output with the same fingerprint), or a task for the
actors. Table-wide problems (no such file, an unknown column, no rows) are one-line errors.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from pathlib import Path, PurePosixPath

from moebius_edge.commands.run import batch_pairs, check_args
from moebius_edge.errors import UserError
from moebius_edge.scale import schema as s

_READERS = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet",
            ".pq": "parquet"}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def is_uri(path) -> bool:
    return "://" in str(path)


def _read_table_file(path: str):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.fs
    import pyarrow.json
    import pyarrow.parquet as pq

    kind = _READERS.get(PurePosixPath(path.split("://", 1)[-1]).suffix.lower())
    if kind is None:
        raise UserError(f"jobs table {path}: unknown file type; use .csv, .jsonl or .parquet (or a folder of "
                        f"photos with --masks)")
    try:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path) if is_uri(path) else (pyarrow.fs.LocalFileSystem(), path)
        if kind == "parquet":
            return pq.read_table(inner, filesystem=fs)
        with fs.open_input_stream(inner) as f:
            if kind == "csv":
                return pyarrow.csv.read_csv(f)
            return pyarrow.json.read_json(f)
    except FileNotFoundError:
        raise UserError(f"jobs table not found: {path}") from None
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"cannot read jobs table {path}: {str(e).splitlines()[0]}") from None


def _rows_of(jobs) -> list:
    """The rows of an in-memory table as dicts."""
    import pyarrow as pa

    if hasattr(jobs, "to_arrow_refs"):  # a Ray Dataset: read in the driver, before the actors take the CPUs
        import ray

        blocks = ray.get(list(jobs.to_arrow_refs()))
        jobs = pa.concat_tables(blocks, promote_options="default") if blocks else pa.table({})
    elif hasattr(jobs, "to_dict") and hasattr(jobs, "columns"):  # pandas: NaN becomes null
        jobs = pa.Table.from_pandas(jobs, preserve_index=False)
    if isinstance(jobs, pa.Table):
        return jobs.to_pylist()
    if isinstance(jobs, (list, tuple)) and all(isinstance(r, dict) for r in jobs):
        return list(jobs)
    raise UserError(f"jobs must be a table file, a folder of photos, a Ray Dataset, a pyarrow Table, a pandas "
                    f"DataFrame or a list of dicts, not {type(jobs).__name__}")


def read_jobs(jobs, masks, out_dir: Path) -> tuple:
    """``(rows, base)``: the rows as dicts with every ``schema.JOB_COLUMNS`` key (None where absent)
    and the folder that relative photo/mask paths are relative to. A folder of photos gives rows
    whose ``output`` is the photo's name, as in `run`'s batch mode, and whose missing mask is the
    row's ``error``."""
    if isinstance(jobs, (str, os.PathLike)) and not is_uri(jobs) and Path(jobs).is_dir():
        if masks is None:
            raise UserError(f"{jobs} is a folder: give the masks with --masks DIR_OR_MASK")
        rows = []
        for photo, mask, error in batch_pairs(Path(jobs), Path(masks), out_dir):
            row = dict.fromkeys(s.JOB_COLUMNS)
            row.update({s.PHOTO: os.path.abspath(photo), s.MASK: None if mask is None else os.path.abspath(mask),
                        s.OUTPUT: photo.name, s.ERROR: None if error is None else str(error)})
            rows.append(row)
        return rows, None
    if masks is not None:
        raise UserError("--masks goes with a folder of photos; a jobs table names each row's mask")
    if isinstance(jobs, (str, os.PathLike)):
        where, base = str(jobs), None if is_uri(jobs) else Path(jobs).resolve().parent
        if base is not None and not Path(jobs).exists():
            raise UserError(f"jobs table not found: {jobs}")
        table = _read_table_file(str(jobs))
        columns, rows = table.column_names, table.to_pylist()
    else:
        where, base = "jobs table", Path.cwd()
        rows = _rows_of(jobs)
        columns = list(dict.fromkeys(k for r in rows for k in r))
    unknown = [c for c in columns if c not in s.JOB_COLUMNS]
    if unknown:
        raise UserError(f"{where}: unknown column {unknown[0]!r}; a jobs table has {', '.join(s.JOB_COLUMNS)} "
                        f"(models, precision and the runtime are set for the whole job)")
    for needed in (s.PHOTO, s.MASK):
        if needed not in columns:
            raise UserError(f"{where}: no {needed!r} column (a jobs table needs {s.PHOTO} and {s.MASK})")
    if not rows:
        raise UserError(f"{where} has no rows")
    return [{**dict.fromkeys(s.JOB_COLUMNS), **r} for r in rows], base


# ---------------------------------------------------------------------------------------------
# Planning


def _given(value) -> bool:
    """False for an empty cell: null, NaN (pandas) or a blank string (CSV)."""
    if isinstance(value, str):
        return bool(value.strip())
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def coerce_option(dest: str, value):
    """A table cell as the value of `run`'s option ``dest``, or a one-line error."""
    action = s.PAIR_ACTIONS[dest]
    if action.nargs == 0:  # a flag: store_true
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if isinstance(value, (int, float, str)) and text in _TRUE + _FALSE:
            return text in _TRUE
        raise UserError(f"column {dest}: {value!r} is not true or false")
    try:
        if action.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            v = int(value.strip()) if isinstance(value, str) else int(value)
        elif action.type is float:
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
        else:
            v = str(value)
    except (TypeError, ValueError):
        kind = "an integer" if action.type is int else "a number"
        raise UserError(f"column {dest}: {value!r} is not {kind}") from None
    if action.choices and v not in action.choices:
        raise UserError(f"column {dest}: {v!r} is not one of {', '.join(action.choices)}")
    return v


def check_options(options: dict, max_pixels: float) -> None:
    """`run`'s own checks of its options (steps in range, seed ≥ 0, ...), as one-line errors."""
    check_args(argparse.Namespace(**options, max_pixels=max_pixels, threads=0))


def _resolve(path: str, base: Path | None) -> str:
    if is_uri(path) or base is None or Path(path).is_absolute():
        return str(path)
    return str(base / path)


def _default_output(photo: str, mask: str, seen: dict) -> str:
    """``<photo stem>.<8 hex>.<photo ext>``: the hex digest of the photo and mask paths, so that two
    photos of one name in two folders, or one photo with two masks, never share an output; a pair
    listed again gets ``-2``, ``-3``, ... in row order."""
    name = PurePosixPath(photo.split("://", 1)[-1])
    digest = hashlib.sha256(f"{photo}\n{mask}".encode()).hexdigest()[:8]
    seen[digest] = seen.get(digest, 0) + 1
    tag = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
    return f"{name.stem}.{tag}{name.suffix}"


def fingerprint(models_sha: str, precision: str, photo: str, mask: str, options: str) -> str:
    """What decides a row's pixels: the weights, the precision, the two inputs and the options (the
    seed among them). A rerun redoes a row whose fingerprint changed."""
    text = json.dumps([models_sha, precision, photo, mask, options])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def plan(rows: list, base: Path | None, *, out_dir: Path, defaults: dict, models_sha: str, precision: str,
         previous: dict, overwrite: bool, max_pixels: float) -> tuple:
    """``(tasks, settled)``: dicts of ``schema.RESULT_COLUMNS`` fields. ``tasks`` go to the actors;
    ``settled`` are the rows already decided here (errors and skips), with their final status."""
    tasks, settled, outputs, seen = [], [], {}, {}
    # Every local input of the job: no row may write over another row's photo or mask, not even
    # with --overwrite (`run` never replaces an input either).
    inputs = {os.path.normpath(_resolve(str(row[k]), base)) for row in rows for k in (s.PHOTO, s.MASK)
              if _given(row[k]) and not is_uri(row[k])}
    for i, row in enumerate(rows):
        r = {s.ROW: i, s.PHOTO: None, s.MASK: None, s.OUTPUT: None, s.STATUS: s.FAILED, s.ERROR: "",
             s.SECONDS: 0.0, s.PROVIDER: "", s.SEED: None, s.PRECISION: precision, s.MODELS_SHA: models_sha,
             s.OPTIONS: None, s.FINGERPRINT: None, s.ACTOR: ""}
        try:
            photo, mask = row[s.PHOTO], row[s.MASK]
            r[s.PHOTO] = _resolve(str(photo), base) if _given(photo) else None
            r[s.MASK] = _resolve(str(mask), base) if _given(mask) else None
            if row.get(s.ERROR):  # a folder pair's missing mask
                raise UserError(row[s.ERROR])
            if r[s.PHOTO] is None:
                raise UserError("no photo in this row")
            if r[s.MASK] is None:
                raise UserError("no mask in this row")
            options = dict(defaults)
            options.update({d: coerce_option(d, row[d]) for d in s.ROW_OPTIONS if _given(row[d])})
            check_options(options, max_pixels)
            r[s.SEED] = options[s.SEED]
            r[s.OPTIONS] = json.dumps(options, sort_keys=True)
            out_name = str(row[s.OUTPUT]) if _given(row[s.OUTPUT]) else _default_output(r[s.PHOTO], r[s.MASK], seen)
            rel = Path(out_name)
            if rel.is_absolute() or ".." in rel.parts or is_uri(out_name):
                raise UserError(f"output {out_name!r} must be a path inside the output folder, relative to it")
            if rel.parts and rel.parts[0] == s.PARTIAL_DIR:  # removed at the end of every run
                raise UserError(f"output {out_name!r} is inside {s.PARTIAL_DIR}, which run-dataset keeps for itself")
            out = os.path.normpath(out_dir / rel)
            if out in inputs:
                raise UserError(f"output {out} is a photo or mask of this job; choose another output")
            r[s.OUTPUT] = out
            if out in outputs:
                r[s.OUTPUT] = None  # the output belongs to the earlier row
                raise UserError(f"output {out_name} is also the output of row {outputs[out]}")
            outputs[out] = i
            r[s.FINGERPRINT] = fingerprint(models_sha, precision, r[s.PHOTO], r[s.MASK], r[s.OPTIONS])
            before = previous.get(out)
            exists = os.path.lexists(out)
            if (not overwrite and exists and before is not None and before[s.STATUS] in (s.OK, s.SKIPPED)
                    and before[s.FINGERPRINT] == r[s.FINGERPRINT]):
                r.update({s.STATUS: s.SKIPPED, s.PROVIDER: before[s.PROVIDER] or ""})
                settled.append(r)
                continue
            if exists and before is None and not overwrite:
                # This row does not claim the file: a rerun must refuse it again, not take it for its own.
                r[s.OUTPUT] = None
                raise UserError(f"{out} exists and no earlier run-dataset into {out_dir} wrote it; pass --overwrite "
                                f"to replace it")
            tasks.append(r)
        except UserError as e:
            r[s.ERROR] = str(e)
            settled.append(r)
    return tasks, settled
