"""Images per minute of `run-dataset` on a local Ray with 1 and 2 actors, against sequential batch `run`.

    RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/scale.py --models DIR [--rows 16] [--steps 20]

The same folder pair (generated photos of 256×192 with one square hole each) goes through
`moebius-edge run PHOTOS --masks MASKS` in this process, then through ``inpaint_dataset`` with
1 actor × 1 CPU, 2 actors × 1 CPU and 1 actor × all CPUs. ``wall`` counts from the actor pool's
start (actor start-up and model loading included) to the last row; ``busy`` is an actor's own
seconds per image, the figure for sizing a cluster: seconds per image × rows / actors. Writes
benchmarks/results/scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from machine_info import describe  # benchmarks/, this script's folder
from moebius_edge import cli, contract
from moebius_edge.models import open_models

ROOT = Path(__file__).resolve().parents[1]
W, H = 256, 192


def make_pairs(folder: Path, rows: int) -> tuple:
    photos, masks = folder / "photos", folder / "masks"
    photos.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    for i in range(rows):
        img = np.stack([128 + 90 * np.sin(x / (7.0 + i)), 60 + 150 * y / H, 200 - 120 * x / W], -1)
        Image.fromarray(np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)).save(photos / f"{i:04d}.png")
        m = np.zeros((H, W), np.uint8)
        x0, y0 = int(rng.integers(0, W - 64)), int(rng.integers(0, H - 64))
        m[y0:y0 + 48, x0:x0 + 48] = 255
        Image.fromarray(m).save(masks / f"{i:04d}.png")
    return photos, masks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="models folder (the tiny test export or a full-size one)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--steps", type=int, default=contract.DEFAULT_STEPS)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/scale.json"))
    args = ap.parse_args(argv)

    import ray

    from moebius_edge.scale import inpaint_dataset, schema

    cpus = os.cpu_count() or 1
    models = open_models(args.models)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        photos, masks = make_pairs(Path(tmp), args.rows)
        t = time.perf_counter()
        rc = cli.main(["-q", "run", str(photos), "--masks", str(masks), "-o", str(Path(tmp) / "seq"), "--models",
                       args.models, "--steps", str(args.steps), "--no-progress"])
        wall = time.perf_counter() - t
        assert rc == 0, "sequential run failed"
        runs.append({"config": "run (sequential batch)", "actors": 0, "cpus_per_actor": cpus, "wall_s": round(wall, 2),
                     "images_per_min": round(60 * args.rows / wall, 1), "busy_s_per_image": round(wall / args.rows, 3)})
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=128 * 2**20)
        try:
            for actors, per in ((1, 1), (2, 1), (1, cpus)):
                run = inpaint_dataset(photos, args.models, masks=masks, out_dir=Path(tmp) / f"ray{actors}x{per}",
                                      options={"steps": args.steps}, actors=actors, cpus_per_actor=per,
                                      progress=False)
                assert run.counts()[schema.OK] == args.rows, run.summary()
                busy = [sec / n for n, sec in run.per_actor().values()]
                runs.append({"config": f"run-dataset {actors} actor{'s' if actors > 1 else ''} × {per} CPU",
                             "actors": actors, "cpus_per_actor": per, "wall_s": round(run.seconds, 2),
                             "images_per_min": round(run.images_per_minute(), 1),
                             "busy_s_per_image": round(sum(busy) / len(busy), 3)})
        finally:
            ray.shutdown()
    print(f"\n## {args.rows} photos of {W}×{H}, {args.steps} steps, {models.image_size} px model, {cpus} CPUs\n")
    print("| config | wall s | images/min | busy s per image (per actor) |")
    print("|---|---|---|---|")
    for r in runs:
        print(f"| {r['config']} | {r['wall_s']} | {r['images_per_min']} | {r['busy_s_per_image']} |")
    result = {"benchmark": "scale", "rows": args.rows, "photo": [W, H], "steps": args.steps,
              "models_provenance": models.provenance, "native": models.image_size,
              "machine": {**describe(), "cores": cpus},
              "runs": runs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
