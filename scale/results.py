"""The results file: one row per input row, written atomically beside the outputs.

``results.parquet`` (``schema.RESULTS_FILE``) in the output folder holds ``schema.RESULT_COLUMNS``
in input-row order. While a run goes, the actors' result rows are flushed every few seconds to
``schema.PARTIAL_DIR``; at the end the whole table is written to a temporary file and renamed over
the previous one, then the partial rows are removed. A rerun reads both, so a crashed run's finished
rows are skipped too rather than redone or refused.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from moebius_edge.scale import schema as s

log = logging.getLogger(__name__)

FLUSH_SECONDS = 10.0  # how often finished rows are flushed to PARTIAL_DIR


def result_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in s.RESULT_COLUMNS])


def _atomic_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_previous(out_dir: Path) -> dict:
    """``{output path: result row}`` from earlier runs into ``out_dir`` (the results file, then any
    partial rows of a run that did not finish; later rows win)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [out_dir / s.RESULTS_FILE] + sorted((out_dir / s.PARTIAL_DIR).glob("*.parquet"))
    previous = {}
    for f in files:
        if not f.is_file():
            continue
        try:
            rows = pq.read_table(f, columns=[s.OUTPUT, s.STATUS, s.FINGERPRINT, s.PROVIDER]).to_pylist()
        except (OSError, pa.ArrowException, KeyError) as e:
            log.warning("cannot read the earlier results %s (%s): its rows are not skipped", f, str(e).splitlines()[0])
            continue
        previous.update((r[s.OUTPUT], r) for r in rows if r[s.OUTPUT])
    return previous


class PartialSink:
    """Collects the actors' result batches and flushes them to PARTIAL_DIR every FLUSH_SECONDS."""

    def __init__(self, out_dir: Path):
        self.folder = out_dir / s.PARTIAL_DIR
        self.tables, self.pending, self.flushed = [], [], time.monotonic()

    def add(self, table) -> None:
        self.tables.append(table)
        self.pending.append(table)
        if time.monotonic() - self.flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.folder.mkdir(exist_ok=True)
            _atomic_parquet(pa.concat_tables(self.pending), self.folder / f"part-{time.time_ns()}.parquet")
            self.pending = []
        self.flushed = time.monotonic()


def write_results(out_dir: Path, rows: list, tables: list):
    """Write every result row (dicts and pyarrow tables) sorted by input row, atomically; remove the
    partial rows; return the table read back from the file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = result_schema()
    table = pa.concat_tables([pa.Table.from_pylist(rows, schema=schema), *[t.cast(schema) for t in tables]])
    table = table.sort_by(s.ROW)
    # One result per input row even if Ray ever delivered a retried block twice: keep one of them
    # (both wrote the same output file, atomically).
    index = table.column(s.ROW).to_numpy()
    if len(index) > 1 and (index[1:] == index[:-1]).any():
        table = table.filter(np.concatenate([[True], index[1:] != index[:-1]]))
    path = out_dir / s.RESULTS_FILE
    _atomic_parquet(table, path)
    shutil.rmtree(out_dir / s.PARTIAL_DIR, ignore_errors=True)
    return pq.read_table(path)
