"""Side-by-side timing for the benchmarks: every contender runs once per round, the order rotated
each round, so that all of them see the same machine load (these machines are shared and noisy:
±25 % between runs minutes apart). A ratio is the median over rounds of the per-round ratio."""
from __future__ import annotations

import logging
import statistics
import time

log = logging.getLogger(__name__)

# Multiply-accumulates of the full-size model at 512² (ARCHITECTURE.md §13, torch's FLOP
# counter), ×2 for FLOP: one CFG step is two UNet evaluations.
FULL_SIZE_GFLOP = {"unet": 2 * 316.0, "vae_encoder": 2 * 541.0, "vae_decoder": 2 * 1240.0}


def ort_session(path, threads: int = 0):
    """A CPU session of a graph file as the benchmarks time it: intra-op threads do not spin
    between kernels (``session.intra_op.allow_spinning`` 0), so that ONNX Runtime's idle threads
    do not steal the cores from a PyTorch contender in the same process."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved(contenders: dict, rounds: int, baseline: str | None = None, warmup: int = 1) -> dict:
    """Time ``contenders`` ({name: zero-argument callable}) side by side: ``warmup`` untimed calls
    each, then ``rounds`` rounds of one call each. Returns {name: {median_s, min_s, max_s, times_s,
    ratio}} where ``ratio`` is the median over rounds of (``baseline``'s time / this one's): how
    many times faster than the baseline (1.0 for the baseline itself)."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times = {n: [] for n in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t)
        log.info("round %d/%d: %s", i + 1, rounds, ", ".join(f"{n} {v[-1]:.3f} s" for n, v in times.items()))
    out = {}
    for name, v in times.items():
        row = {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "times_s": v}
        if baseline is not None:
            row["ratio"] = statistics.median(b / t for b, t in zip(times[baseline], v))
        out[name] = row
    return out
