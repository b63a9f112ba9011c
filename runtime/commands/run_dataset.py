"""`moebius-edge run-dataset`: inpaint a table of photo/mask jobs (or a folder pair) on Ray.

    RAY_USAGE_STATS_ENABLED=0 moebius-edge run-dataset jobs.parquet --models models -o out/
    RAY_USAGE_STATS_ENABLED=0 moebius-edge run-dataset photos/ --masks masks/ --models models -o out/

Writes each row's result into the output folder and ``results.parquet`` beside them, one row per
input row (ok, error or skipped); a rerun skips the rows already done. Needs the ``ray`` extra; the
stage itself is ``moebius_edge.scale`` (docs/scale.md).
"""
from __future__ import annotations

import logging
import sys

from moebius_edge import contract
from moebius_edge.commands import require
from moebius_edge.commands.run import add_pair_options

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser(
        "run-dataset", help="inpaint a table of photo/mask jobs (or a folder of photos) on a Ray cluster",
        description="Run `moebius-edge run` on every row of a jobs table (CSV, JSONL or Parquet: columns photo, "
        "mask, optionally output and per-row run options named like the options below, e.g. seed, steps, "
        "dilate), or on a folder of photos paired with --masks as `run` pairs them, on Ray Data actors that each "
        "hold one model. Every row gets one result row in OUT/results.parquet (ok, error or skipped); a failing "
        "row never stops the others; a rerun skips the rows already done. See docs/scale.md.")
    p.add_argument("jobs", metavar="JOBS", help="jobs table (local path or any URI pyarrow reads: s3://, gs://, ...), "
                                                "or a folder of photos with --masks")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="output folder, seen by every node (local or shared): results and results.parquet")
    p.add_argument("--masks", metavar="DIR_OR_MASK",
                   help="with a folder of photos: folder of masks paired by file stem, or one mask for all")
    p.add_argument("--models", default=contract.DEFAULT_MODELS_DIR, metavar="DIR",
                   help="models folder from `moebius-edge export`, at a path every node sees")
    g = p.add_argument_group("sampling (defaults for rows that do not set them)")
    m = p.add_argument_group("mask (defaults for rows that do not set them)")
    o = p.add_argument_group("output (defaults for rows that do not set them)")
    add_pair_options(g, m, o)
    c = p.add_argument_group("cluster")
    c.add_argument("--address", metavar="ADDR",
                   help="Ray cluster: auto (the one `ray start` runs on this machine), HOST:6379 or ray://HOST:10001 "
                        "[default: $RAY_ADDRESS, else a local Ray on this machine]")
    c.add_argument("--actors", type=int, metavar="N",
                   help="actors, each with its own copy of the model [default: as many as the cluster's CPUs, and its "
                        "GPUs and memory, hold at the per-actor figures below]")
    c.add_argument("--cpus-per-actor", type=int, default=1, metavar="K",
                   help="CPUs reserved per actor, and its ONNX Runtime intra-op threads")
    c.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="G",
                   help="GPUs per actor (e.g. 1, or 0.5 to share one); > 0 runs on the CUDA provider")
    c.add_argument("--memory-per-actor", type=float, metavar="GB",
                   help="memory reserved per actor (0: none) [default: from the measured peak for the models folder]")
    r = p.add_argument_group("runtime")
    r.add_argument("--precision", choices=contract.PRECISIONS, default=contract.PRECISIONS[0], help="graph variant")
    r.add_argument("--low-memory", action="store_true",
                   help="the smallest peak: no ORT memory arena for the VAE, large blocks mapped on their own (slower)")
    r.add_argument("--max-pixels", type=float, default=contract.DEFAULT_MAX_PIXELS,
                   help="refuse larger images (protects against decompression bombs)")
    w = p.add_argument_group("rerun")
    w.add_argument("--overwrite", action="store_true",
                   help="redo rows an earlier run finished, and replace output files no earlier run wrote")
    w.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_dataset)


def _run_dataset(args) -> int:
    require("ray", "ray")
    require("pyarrow", "ray")
    scale = require("moebius_edge.scale.dataset", "ray")
    from moebius_edge.scale import schema

    run = scale.inpaint_dataset(
        args.jobs, args.models, out_dir=args.output, precision=args.precision, masks=args.masks,
        options={k: getattr(args, k) for k in schema.ROW_OPTIONS}, actors=args.actors,
        cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
        memory_per_actor=args.memory_per_actor, overwrite=args.overwrite, max_pixels=args.max_pixels,
        low_memory=args.low_memory, address=args.address, progress=not args.no_progress)
    print("\n".join(run.summary()))
    sys.stdout.flush()
    failed = run.counts()[schema.FAILED]
    if failed:
        print(f"moebius-edge run-dataset: {failed} of {run.results.num_rows} rows failed; their errors are in "
              f"{run.path}", file=sys.stderr)
        return 2
    return 0
