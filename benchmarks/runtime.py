"""Time and peak memory of one 512×512 inpainting run on ONNX Runtime (the NumPy runtime, no torch).

Each configuration runs in its own child process, so every peak RSS belongs to that run alone:

* ``default``      sessions created lazily and released after each phase (what `moebius-edge run` does);
* ``low-memory``   the same with ORT's CPU arena and memory patterns off (``--low-memory``);
* ``keep``         all three sessions kept alive (``Inpainter(keep_sessions=True)``): what the lazy
                   release saves.

    .venv/bin/python benchmarks/runtime.py [--models models] [--configs default,low-memory,keep]
                                           [--steps 20] [--threads 0] [--json FILE]

Without a models folder it first exports the full-size random-init model to a temporary folder
(needs the export extra, ~7 minutes on 2 cores). Random weights time and size exactly like the
official ones. The photo is the centre 512×512 of tests/data/demo_photo.jpg with its mask.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moebius_edge import contract
from moebius_edge.models import open_models

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("default", "low-memory", "keep")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(models: str, config: str, steps: int, threads: int) -> dict:
    """One run in this process; returns timings and peak RSS."""
    import numpy as np
    from PIL import Image

    from moebius_edge.pipeline import Inpainter

    base_mb = _rss_mb()
    photo = np.asarray(Image.open(ROOT / "tests/data/demo_photo.jpg").convert("RGB"))
    mask = np.asarray(Image.open(ROOT / "tests/data/demo_mask.png").convert("L"))
    t = time.perf_counter()
    inp = Inpainter.from_models(models, providers="cpu", threads=threads, low_memory=config == "low-memory",
                                keep_sessions=config == "keep")
    open_s = time.perf_counter() - t
    n = inp.image_size
    # A native-size window around the hole: processed whole, exactly the official pipeline.
    h, w = photo.shape[:2]
    ys, xs = np.nonzero(mask)
    cx, cy = int(xs.mean()), int(ys.mean())
    x0, y0 = min(max(cx - n // 2, 0), w - n), min(max(cy - n // 2, 0), h - n)
    image, hole = photo[y0:y0 + n, x0:x0 + n], mask[y0:y0 + n, x0:x0 + n]
    t = time.perf_counter()
    inp.inpaint(image, hole, seed=0, steps=steps)
    wall = time.perf_counter() - t
    info = inp.last_run
    return {"config": config, "image": [n, n], "model_steps": info.steps, "threads": threads,
            "open_models_s": round(open_s, 3), "wall_s": round(wall, 3),
            "seconds": {k: round(v, 3) for k, v in info.seconds.items()},
            "unet_step_s": round(info.seconds["denoise"] / info.steps, 3),
            "peak_rss_mb": round(_rss_mb(), 1), "rss_before_mb": round(base_mb, 1),
            "providers": info.providers}


def _export(out: Path) -> None:
    print(f"no models folder given: exporting the full-size random-init model to {out} (takes minutes) ...",
          flush=True)
    subprocess.run([sys.executable, "-m", "moebius_edge.cli", "export", "--random-init", "--preset", "moebius",
                    "--seed", "0", "--out", str(out)], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=contract.DEFAULT_MODELS_DIR, help="models folder (exported when missing)")
    ap.add_argument("--configs", default=",".join(CONFIGS[:2]), help=f"comma-separated, from {CONFIGS}")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps (strength 0.99 runs one fewer)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's choice)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/runtime.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.models, args.worker, args.steps, args.threads)))
        return 0

    configs = [c for c in args.configs.split(",") if c]
    if unknown := set(configs) - set(CONFIGS):
        ap.error(f"unknown configs {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(args.models)
        if not (models / contract.MANIFEST_FILE).is_file():
            models = Path(tmp) / "models"
            _export(models)
        rows = []
        for c in configs:
            print(f"running {c} ...", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--worker", c, "--models", str(models),
                                   "--steps", str(args.steps), "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{c} failed:\n{proc.stderr}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        manifest = open_models(models)

    import onnxruntime as ort

    hdr = f"{'config':<11} {'open s':>7} {'enc load':>8} {'encode':>7} {'unet load':>9} {'per step':>8} " \
          f"{'decode':>7} {'total s':>8} {'peak RSS':>9}"
    print(f"\n512×512, {rows[0]['model_steps']} model steps, CPU, onnxruntime {ort.__version__}, "
          f"{platform.processor() or platform.machine()}, threads {args.threads or 'auto'}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        s = r["seconds"]
        print(f"{r['config']:<11} {r['open_models_s']:>7.2f} {s['encoder_load']:>8.2f} {s['encode']:>7.2f} "
              f"{s['unet_load']:>9.2f} {r['unet_step_s']:>8.2f} {s['decode']:>7.2f} {s['total']:>8.1f} "
              f"{r['peak_rss_mb']:>7.0f} MB")
    result = {"benchmark": "runtime_512", "onnxruntime": ort.__version__, "python": platform.python_version(),
              "machine": platform.machine(), "provenance": manifest.provenance,
              "graph_bytes": {s.key: manifest.entry(s)[contract.GRAPH_BYTES] for s in contract.GRAPHS}, "runs": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
