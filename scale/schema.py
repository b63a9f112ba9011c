"""The names `run-dataset` shares with its users: jobs-table columns, result columns, statuses.

Pure Python (argparse and the runtime's `run` command only; no Ray, no pyarrow), so that anything
reading a jobs table or a results file can import it. Every other module of ``moebius_edge.scale``
and the tests use these constants; none of the names is typed twice (docs/style.md §2).
docs/scale.md describes the tables.
"""
from __future__ import annotations

import argparse

from moebius_edge.commands.run import add_pair_options

# ---------------------------------------------------------------------------------------------
# Jobs table: one row per photo/mask pair.
PHOTO = "photo"  # path or URI of the photo (required)
MASK = "mask"  # path or URI of the mask painted over the photo as displayed (required)
OUTPUT = "output"  # result file, relative to the output folder (optional; default below)
# Per-row `run` options: the ``dest`` of every option ``run.add_pair_options`` declares (steps,
# guidance, strength, seed, dilate, margin, fidelity, mask_channel, ...). Model, precision and the
# runtime are job-wide: one Inpainter per actor serves every row.
_PAIR_PARSER = argparse.ArgumentParser(add_help=False)
add_pair_options(_PAIR_PARSER, _PAIR_PARSER, _PAIR_PARSER)
# argparse keeps its actions in a private list; reading it is the only way to get each option's
# type, choices and default from the one place that declares them.
PAIR_ACTIONS = {a.dest: a for a in _PAIR_PARSER._actions}
ROW_OPTIONS = tuple(PAIR_ACTIONS)
SEED = "seed"  # run's --seed, a per-row option that the results also record in a column of its own
JOB_COLUMNS = (PHOTO, MASK, OUTPUT, *ROW_OPTIONS)


def pair_defaults() -> dict:
    """`run`'s default for every per-row option."""
    return {dest: a.default for dest, a in PAIR_ACTIONS.items()}


# ---------------------------------------------------------------------------------------------
# Results: RESULTS_FILE in the output folder, one row per input row, in input order.
RESULTS_FILE = "results.parquet"
# Result rows of an unfinished run, flushed while it goes: a rerun after a crash reads them too.
PARTIAL_DIR = ".results.partial"

ROW = "row"  # 0-based position of the row in the jobs table
STATUS = "status"  # one of STATUSES
ERROR = "error"  # one line; "" unless status is ERROR
SECONDS = "seconds"  # wall seconds of the row on its actor (read, inpaint, write); 0 unless ok
PROVIDER = "provider"  # execution provider(s) that ran the graphs, e.g. CPUExecutionProvider
PRECISION = "precision"  # graph variant
MODELS_SHA = "models_sha"  # SHA-256 over the variant's graph hashes (models_sha())
OPTIONS = "options"  # the row's resolved per-row options, JSON with sorted keys
FINGERPRINT = "fingerprint"  # hash of models_sha, precision, photo, mask and options: what a rerun compares
ACTOR = "actor"  # host:pid of the actor that ran the row; "" when no actor did

# (name, pyarrow type name) in file order; ``dataset.result_schema()`` builds the pyarrow schema.
RESULT_COLUMNS = (
    (ROW, "int64"), (PHOTO, "string"), (MASK, "string"), (OUTPUT, "string"), (STATUS, "string"),
    (ERROR, "string"), (SECONDS, "float64"), (PROVIDER, "string"), (SEED, "int64"), (PRECISION, "string"),
    (MODELS_SHA, "string"), (OPTIONS, "string"), (FINGERPRINT, "string"), (ACTOR, "string"),
)

OK = "ok"  # inpainted (or copied: an empty mask with allow_empty_mask) and written
FAILED = "error"  # this row failed; the others went on. ERROR says why
SKIPPED = "skipped"  # an earlier run wrote this output with the same fingerprint; not redone
STATUSES = (OK, FAILED, SKIPPED)
