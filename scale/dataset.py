"""``inpaint_dataset``: a jobs table through `run`'s own per-pair code on Ray Data actors.

Ray Data streams the planned rows (``jobs.plan``) through ``map_batches`` with a callable class,
``InpaintActor``: each actor opens the models folder once and keeps its three ONNX Runtime sessions
for every row it gets, with intra-op threads = its CPUs (Ray's workers on top of ONNX Runtime's
default of one thread per core would oversubscribe the node). Each row runs
``commands.run.Runner.one``, the very code of `moebius-edge run`, so a row's pixels are what `run`
writes for it with the same seed. A failing row becomes an ``error`` result; it never ends the job.
The results are streamed back to the driver, flushed to disk as they come and written, then read
back (``results.write_results``): consuming them never runs inference again.

Ray starts only when some row is left to do; a rerun in which every row is skipped or invalid
needs no cluster. Ray Data's own progress bars show the rows going through; ``DatasetRun.summary``
ends the run.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from moebius_edge import contract
from moebius_edge.errors import UserError
from moebius_edge.scale import jobs as jobs_
from moebius_edge.scale import results as results_
from moebius_edge.scale import schema as s

log = logging.getLogger(__name__)

# The memory an actor asks Ray for, from benchmarks/results/runtime.json, run "keep" (all three
# sessions alive, as in an actor): peak RSS 4271 MB with 1,222,113,317 bytes of fp32 graphs,
# 512×512 photo. Scaled by the variant's graph bytes, plus headroom for larger photos and a worker.
PEAK_RSS_PER_GRAPH_BYTE = 4271.0 * 2**20 / 1_222_113_317
MEMORY_HEADROOM = 1.25
WORKER_BASE_BYTES = 256 * 2**20  # a Ray worker with numpy, onnxruntime and Pillow imported
MAX_ROWS_PER_BLOCK = 64  # a block is what a crashed actor's retry redoes; small keeps that cheap
# Ray restarts a dead actor and retries its block, by default forever: a row that kills its actor
# every time (a decoder crash, the OOM killer) would hang the job. After this many retries the block
# is dropped, and its rows get LOST_ROW errors; a rerun tries them again.
MAX_BLOCK_RETRIES = 3
LOST_ROW = (f"no result: the actor running this row's block died {MAX_BLOCK_RETRIES + 1} times "
            f"(out of memory, or a crash while reading a photo?)")


def models_sha(models) -> str:
    """SHA-256 over a variant's graph hashes, as its manifest records them (verified by each actor)."""
    graphs = models.manifest[contract.MANIFEST_GRAPHS]
    parts = []
    for key in sorted(graphs):
        entry = graphs[key]
        sidecar = entry.get(contract.GRAPH_EXTERNAL_DATA) or {}
        parts.append([key, entry[contract.GRAPH_SHA256], sidecar.get(contract.GRAPH_SHA256)])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def graph_bytes(models) -> int:
    total = 0
    for entry in models.manifest[contract.MANIFEST_GRAPHS].values():
        total += int(entry[contract.GRAPH_BYTES])
        total += int((entry.get(contract.GRAPH_EXTERNAL_DATA) or {}).get(contract.GRAPH_BYTES, 0))
    return total


def actor_memory(models) -> int:
    """Bytes of memory an actor requests (Ray's ``memory=``), from the measured peak (see above)."""
    return int(WORKER_BASE_BYTES + MEMORY_HEADROOM * PEAK_RSS_PER_GRAPH_BYTE * graph_bytes(models))


# ---------------------------------------------------------------------------------------------
# The actor


@dataclass(frozen=True)
class ActorSettings:
    """What every actor needs to open the models the driver checked."""

    models: str  # models folder, as the cluster's nodes see it
    precision: str  # graph variant
    provider: str  # contract.PROVIDER_CHOICES entry: "cpu", or "cuda" (CPU where absent) when the actor has GPUs
    threads: int  # ONNX Runtime intra-op threads (and OpenCV's): the actor's CPUs
    low_memory: bool  # the runtime's low-memory mode (session.NO_ARENA, map_large_blocks)
    max_pixels: float  # larger photos and masks are refused
    models_sha: str  # what the driver fingerprinted; an actor seeing other graphs refuses to start


@contextlib.contextmanager
def _local_files(*paths: str):
    """``(local paths, {local: uri})``: photo and mask URIs (s3://, gs://, hdfs://, file://) are copied
    to a temporary folder first, since the image reader takes local files."""
    if not any(jobs_.is_uri(p) for p in paths):
        yield tuple(Path(p) for p in paths), {}
        return
    import pyarrow as pa
    import pyarrow.fs

    with tempfile.TemporaryDirectory(prefix="moebius-edge-") as tmp:
        local, names = [], {}
        for i, p in enumerate(paths):
            if not jobs_.is_uri(p):
                local.append(Path(p))
                continue
            target = Path(tmp) / f"{i}{PurePosixPath(p.split('://', 1)[1]).suffix}"
            try:
                fs, inner = pyarrow.fs.FileSystem.from_uri(p)
                with fs.open_input_stream(inner) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, pa.ArrowException) as e:
                raise UserError(f"cannot read {p}: {str(e).splitlines()[0]}") from None
            local.append(target)
            names[str(target)] = p
        yield tuple(local), names


def _one_line(e: Exception, names: dict) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    if not isinstance(e, UserError):
        text = f"{type(e).__name__}: {text}"
    for local, uri in names.items():
        text = text.replace(local, uri)
    return text


class InpaintActor:
    """The callable class of ``map_batches``: one Inpainter, with its sessions, for all the rows an
    actor gets. A subclass may wrap ``row`` (the tests crash an actor that way)."""

    def __init__(self, settings: ActorSettings):
        import cv2

        from moebius_edge.commands.run import Runner
        from moebius_edge.pipeline import Inpainter

        cv2.setNumThreads(settings.threads)
        self.settings = settings
        inpainter = Inpainter.from_models(settings.models, settings.precision, settings.provider,
                                          threads=settings.threads, low_memory=settings.low_memory,
                                          keep_sessions=True)
        for graph in inpainter.graphs.values():  # created here, once: a broken graph fails the actor, not a row
            graph.session()
        found = models_sha(inpainter.models)
        if found != settings.models_sha:
            raise UserError(f"{settings.models} on {socket.gethostname()} holds other graphs than the driver's "
                            f"(models SHA {found[:12]}, not {settings.models_sha[:12]}): every node needs the same "
                            f"models folder")
        # `run`'s arguments: the job-wide ones here, each row's options on top (always --force: the
        # driver has decided that each planned output may be written).
        self.base = argparse.Namespace(**s.pair_defaults(), models=settings.models, precision=settings.precision,
                                       provider=settings.provider, threads=settings.threads,
                                       low_memory=settings.low_memory, max_pixels=settings.max_pixels,
                                       noise_file=None, force=True, json=False, no_progress=True)
        self.runner = Runner(self.base, None, inpainter=inpainter)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch):
        import pyarrow as pa

        return pa.Table.from_pylist([self.row(r) for r in batch.to_pylist()], schema=results_.result_schema())

    def row(self, task: dict) -> dict:
        from moebius_edge.commands.run import Inputs

        t0 = time.perf_counter()
        result = {**task, s.ACTOR: self.name}
        names = {}
        try:
            args = argparse.Namespace(**{**vars(self.base), **json.loads(task[s.OPTIONS])})
            with _local_files(task[s.PHOTO], task[s.MASK]) as ((photo, mask), names):
                out = Path(task[s.OUTPUT])
                out.parent.mkdir(parents=True, exist_ok=True)
                record = self.runner.one(photo, mask, out, step_bar=False, args=args, inputs=Inputs([photo, mask]))
            providers = sorted(set((record.get("providers") or {}).values()))
            result.update({s.STATUS: s.OK, s.ERROR: "", s.PROVIDER: "+".join(providers),
                           s.SECONDS: time.perf_counter() - t0})
        except Exception as e:  # noqa: BLE001 - whatever fails one row must not end the job
            if not isinstance(e, UserError):
                log.warning("%s: %s", task[s.PHOTO], e, exc_info=True)
            result.update({s.STATUS: s.FAILED, s.ERROR: _one_line(e, names), s.SECONDS: 0.0})
        return result


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class DatasetRun:
    """What ``inpaint_dataset`` did; ``results`` is the results file read back."""

    results: object  # pyarrow.Table, schema.RESULT_COLUMNS, one row per input row in input order
    path: Path  # the results file
    seconds: float  # wall seconds of the Ray part (0 when no row needed an actor)
    actors: int  # actors started

    def counts(self) -> dict:
        statuses = self.results.column(s.STATUS).to_pylist()
        return {status: statuses.count(status) for status in s.STATUSES}

    def per_actor(self) -> dict:
        """``{actor: (rows done, busy seconds)}`` over the rows an actor finished ok."""
        out = {}
        for r in self.results.select([s.ACTOR, s.STATUS, s.SECONDS]).to_pylist():
            if r[s.ACTOR] and r[s.STATUS] == s.OK:
                n, sec = out.get(r[s.ACTOR], (0, 0.0))
                out[r[s.ACTOR]] = (n + 1, sec + r[s.SECONDS])
        return out

    def images_per_minute(self) -> float:
        return 60.0 * self.counts()[s.OK] / self.seconds if self.seconds else 0.0

    def summary(self) -> list:
        c = self.counts()
        lines = [f"{self.results.num_rows} rows: {c[s.OK]} {s.OK}, {c[s.FAILED]} {s.FAILED}, "
                 f"{c[s.SKIPPED]} {s.SKIPPED}"]
        if self.seconds:
            lines.append(f"{c[s.OK]} image{'' if c[s.OK] == 1 else 's'} in {self.seconds:.1f} s on {self.actors} actor"
                         f"{'' if self.actors == 1 else 's'}: {self.images_per_minute():.1f} images/min")
        for actor, (n, sec) in sorted(self.per_actor().items()):
            lines.append(f"  {actor}: {n} image{'' if n == 1 else 's'}, "
                         f"{60.0 * n / sec if sec else 0.0:.1f} images/min while busy")
        lines.append(f"results: {self.path}")
        return lines


def _init_ray(address) -> bool:
    """Connect to ``address`` (or $RAY_ADDRESS), else start a local Ray without its dashboard.
    True when this call started or connected Ray (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    # Ray reports usage statistics unless told not to; a tool for private photo archives does not
    # opt its users in. Exporting RAY_USAGE_STATS_ENABLED=1 still turns them on.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, include_dashboard=False)
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster {address or os.environ.get('RAY_ADDRESS') or ''}: "
                        f"{_last_line(str(e))}") from None
    return True


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _actor_start_error(e) -> UserError:
    """One line for an actor whose constructor raised: the exception's own line from the worker's
    traceback that Ray puts in its message (``UserError: ...`` loses its class name)."""
    line = _last_line(str(e))
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    return UserError(f"an actor could not start: {line.removeprefix(prefix) or type(e).__name__}")


def _check_job(actors, cpus_per_actor, gpus_per_actor, memory_per_actor) -> None:
    if actors is not None and (not isinstance(actors, int) or actors < 1):
        raise UserError(f"--actors must be a whole number ≥ 1, got {actors}")
    if not isinstance(cpus_per_actor, int) or cpus_per_actor < 1:
        raise UserError(f"--cpus-per-actor must be a whole number ≥ 1 (the actor's ONNX Runtime threads), "
                        f"got {cpus_per_actor}")
    if not (math.isfinite(gpus_per_actor) and gpus_per_actor >= 0):
        raise UserError(f"--gpus-per-actor must be ≥ 0, got {gpus_per_actor}")
    if memory_per_actor is not None and not (math.isfinite(memory_per_actor) and memory_per_actor >= 0):
        raise UserError(f"--memory-per-actor must be ≥ 0 GB, got {memory_per_actor}")


def inpaint_dataset(jobs, models, *, out_dir, precision: str = contract.PRECISIONS[0], masks=None,
                    options: dict | None = None, actors: int | None = None, cpus_per_actor: int = 1,
                    gpus_per_actor: float = 0.0, memory_per_actor: float | None = None, overwrite: bool = False,
                    max_pixels: float = contract.DEFAULT_MAX_PIXELS, low_memory: bool = False, address=None,
                    progress: bool = True, actor=InpaintActor) -> DatasetRun:
    """Inpaint every row of ``jobs`` into ``out_dir`` on Ray; one result row per input row.

    ``jobs``: a CSV/JSONL/Parquet path or URI, a Ray Dataset, a pyarrow Table, a pandas DataFrame, a
    list of dicts, or a folder of photos with ``masks`` (docs/scale.md). ``options``: defaults for
    the per-row options (``schema.ROW_OPTIONS``, `run`'s defaults otherwise). ``actors``: default
    as many as the cluster's CPUs (GPUs, memory) hold at ``cpus_per_actor`` (``gpus_per_actor``,
    ``memory_per_actor``) each. ``gpus_per_actor`` > 0 runs on the CUDA provider where
    the node has it. ``memory_per_actor`` in GB (default ``actor_memory``; 0 asks for none).
    ``overwrite``: redo rows an earlier run finished, and replace files no earlier run wrote.
    ``address``: the Ray cluster, when Ray is not initialised yet (None: $RAY_ADDRESS or a local one).
    ``actor``: the callable class the actors run. Raises ``UserError`` (one line) for what fails the
    whole job: a bad option, models folder or jobs table.
    """
    from moebius_edge.commands import check_writable_folder
    from moebius_edge.hub import resolve_models
    from moebius_edge.models import open_models

    _check_job(actors, cpus_per_actor, gpus_per_actor, memory_per_actor)
    unknown = sorted(set(options or {}) - set(s.ROW_OPTIONS))
    if unknown:
        raise UserError(f"unknown per-row option {unknown[0]!r}; the options are {', '.join(s.ROW_OPTIONS)}")
    defaults = {**s.pair_defaults(), **(options or {})}
    jobs_.check_options(defaults, max_pixels)
    out_dir = Path(os.path.abspath(out_dir))
    check_writable_folder(out_dir, "the results")
    folder = open_models(resolve_models(models), precision)
    sha = models_sha(folder)
    rows, base = jobs_.read_jobs(jobs, masks, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks, settled = jobs_.plan(rows, base, out_dir=out_dir, defaults=defaults, models_sha=sha, precision=precision,
                                previous=results_.read_previous(out_dir), overwrite=overwrite, max_pixels=max_pixels)
    log.info("%d rows: %d to do, %d skipped or refused before starting", len(rows), len(tasks), len(settled))
    sink = results_.PartialSink(out_dir)
    seconds, n_actors = 0.0, 0
    if tasks:
        settings = ActorSettings(models=os.path.abspath(folder.root), precision=precision,
                                 provider="cuda" if gpus_per_actor else "cpu", threads=cpus_per_actor,
                                 low_memory=low_memory, max_pixels=max_pixels, models_sha=sha)
        memory = actor_memory(folder) if memory_per_actor is None else int(memory_per_actor * 1e9)
        n_actors, seconds = _run_on_ray(tasks, settings, sink, actor=actor, actors=actors, gpus=gpus_per_actor,
                                        memory=memory, address=address, progress=progress)
        done = {i for t in sink.tables for i in t.column(s.ROW).to_pylist()}
        settled += [{**r, s.ERROR: LOST_ROW} for r in tasks if r[s.ROW] not in done]  # tasks are FAILED rows
    table = results_.write_results(out_dir, settled, sink.tables)
    if table.num_rows != len(rows):  # every input row has exactly one result: anything else is a bug
        raise RuntimeError(f"{table.num_rows} result rows for {len(rows)} jobs")
    return DatasetRun(results=table, path=out_dir / s.RESULTS_FILE, seconds=seconds, actors=n_actors)


def _run_on_ray(tasks: list, settings: ActorSettings, sink, *, actor, actors, gpus, memory, address,
                progress) -> tuple:
    """Run the tasks on an actor pool; ``(actors, wall seconds from the pool's start to the last row)``."""
    import ray
    import ray.data

    started = _init_ray(address)
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.max_errored_blocks
    try:
        context.enable_progress_bars = progress
        # The actor catches every row's error, so a failed block means its actor died MAX_BLOCK_RETRIES
        # + 1 times: drop the block (its rows become LOST_ROW errors) rather than the job.
        context.max_errored_blocks = -1
        have = ray.cluster_resources()
        cpus, local = have.get("CPU", 0), started and address is None and not os.environ.get("RAY_ADDRESS")
        # By default as many actors as the cluster holds: CPUs, and GPUs and memory where asked for.
        fits = [cpus // settings.threads]
        if gpus:
            fits.append(have.get("GPU", 0) // gpus)
        if memory:
            fits.append(have.get("memory", 0) // memory)
        n = actors or max(1, int(min(fits)))
        short = []
        if n * settings.threads > cpus:
            short.append(f"{n} actor{'' if n == 1 else 's'} × {settings.threads} CPUs need more than {cpus:g} CPUs")
        if gpus and n * gpus > have.get("GPU", 0):
            short.append(f"{n} × {gpus:g} GPUs need more than {have.get('GPU', 0):g} GPUs")
        if memory and n * memory > have.get("memory", 0):
            short.append(f"{n} × {memory / 2**30:.1f} GiB need more than Ray's {have.get('memory', 0) / 2**30:.1f} GiB "
                         f"of memory (--memory-per-actor)")
        if short and local:  # a Ray started here: no node will ever join, the actors would wait forever
            raise UserError(f"{'; '.join(short)}: this machine has no more; lower --actors or the per-actor resources")
        if short:
            log.warning("%s: Ray waits for more nodes to join the cluster", "; ".join(short))
        n = min(n, len(tasks))  # an actor without rows would only load the models
        per_block = max(1, min(MAX_ROWS_PER_BLOCK, math.ceil(len(tasks) / (4 * n))))
        # from_items builds the blocks here, in the driver (from_arrow starts a task per block).
        ds = ray.data.from_items(tasks, override_num_blocks=math.ceil(len(tasks) / per_block))
        resources = {"num_cpus": settings.threads}
        if gpus:
            resources["num_gpus"] = gpus
        if memory:
            resources["memory"] = memory
        # max_task_retries has no named parameter yet; Ray 2.60 warns that **ray_remote_args goes in 2.64
        # (hence the ray extra's upper bound in pyproject.toml).
        done = ds.map_batches(actor, fn_constructor_kwargs={"settings": settings}, batch_size=1,
                              batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=n),
                              max_task_retries=MAX_BLOCK_RETRIES, **resources)
        t0 = time.perf_counter()
        try:
            for batch in done.iter_batches(batch_size=None, batch_format="pyarrow"):
                sink.add(batch)
        except ray.exceptions.RayActorError as e:
            if not e.actor_init_failed:
                raise
            raise _actor_start_error(e) from None
        return n, time.perf_counter() - t0
    finally:
        sink.flush()
        context.enable_progress_bars, context.max_errored_blocks = saved
        if started:
            ray.shutdown()
