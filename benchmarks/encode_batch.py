"""The two VAE encodes of an inpainting (photo, hole-masked photo): two batch-1 calls or one batch-2 call?

    .venv/bin/python benchmarks/encode_batch.py --models DIR [--rounds 4] [--json benchmarks/results/encode_batch.json]

One fp32 encoder session (the runtime's options), its first call untimed; then per round, in one
process and interleaved: the two images as two calls, and as one call at batch 2 (the graph's batch
axis is dynamic unless the folder was exported with --static-batch). Per variant: the times, the
peak RSS of that round (VmHWM reset before it; the arena keeps what the larger call took), and the
largest difference between the two results (the same kernels: 0 expected).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inputs import vae_feed  # noqa: E402
from benchmarks.machine_info import describe  # noqa: E402
from moebius_edge import contract  # noqa: E402
from moebius_edge.models import open_models  # noqa: E402
from moebius_edge.quantize.job import phase_peak_rss_mb, reset_peak_rss  # noqa: E402
from moebius_edge.session import GraphSession, SessionConfig  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "encode_batch.json"))
    args = ap.parse_args(argv)
    models = open_models(args.models, "fp32")
    if models.manifest.get(contract.MANIFEST_STATIC_BATCH):
        raise SystemExit(f"{args.models} was exported with a static batch of 1: no batch-2 call to time")
    enc = GraphSession(models, contract.VAE_ENCODER, SessionConfig(provider="cpu", threads=args.threads))
    side = models.image_size
    one, two = vae_feed(contract.VAE_ENCODER, side, 0), vae_feed(contract.VAE_ENCODER, side, 1)
    both = {k: np.concatenate([one[k], two[k]]) for k in one}
    enc.run(**one)  # session creation and first-call allocations out of the timings
    rows = {"two calls": {"times_s": [], "peak_rss_mb": []}, "one batch-2 call": {"times_s": [], "peak_rss_mb": []}}
    worst = 0.0
    for _ in range(args.rounds):
        reset_peak_rss()
        t = time.perf_counter()
        a, b = enc.run(**one), enc.run(**two)
        rows["two calls"]["times_s"].append(time.perf_counter() - t)
        rows["two calls"]["peak_rss_mb"].append(phase_peak_rss_mb())
        reset_peak_rss()
        t = time.perf_counter()
        ab = enc.run(**both)
        rows["one batch-2 call"]["times_s"].append(time.perf_counter() - t)
        rows["one batch-2 call"]["peak_rss_mb"].append(phase_peak_rss_mb())
        worst = max(worst, float(np.abs(np.concatenate([a, b]) - ab).max()))
    for r in rows.values():
        r["median_s"] = statistics.median(r["times_s"])
        r["first_round_peak_rss_mb"] = r["peak_rss_mb"][0]
    ratio = statistics.median(np.array(rows["two calls"]["times_s"]) / np.array(rows["one batch-2 call"]["times_s"]))
    result = {"benchmark": "encode_batch", "machine": describe(), "image_side": side, "rounds": args.rounds,
              "models_provenance": models.provenance, "rows": rows, "speedup_of_batch": float(ratio),
              "max_abs_diff": worst}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}\n")
    for name, r in rows.items():
        print(f"{name:<18} median {r['median_s']:.2f} s, first-round peak RSS {r['first_round_peak_rss_mb']:.0f} MB")
    print(f"batch-2 call vs two calls: {ratio:.2f}x faster (per-round median), max |difference| {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
