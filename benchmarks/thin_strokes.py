"""Thin strokes end to end: a 3 px wire on a generated 24 MP photo, both fidelity modes.

    .venv/bin/python benchmarks/thin_strokes.py --models DIR [--steps 20]

Runs `moebius-edge run --json` once per mode (``complete``, the default, and ``official``) on the
same photo, mask and seed, and measures on the written files:

* how many wire pixels changed at all, and how many came out exactly as a full-weight paste of
  the model's output would make them (the run's own ``underweight_px`` / ``unseen_px`` report);
* how far from the wire the photo changed (the feather), and the wall time.

It also draws docs/figures/thin_strokes.png: the paste-back weight map of a 1 px and a 3 px line
(native scale, r = 3) in each mode. With random weights the model's pixels are noise: the figure
shows where the model's pixels go and with what weight, not inpainting quality.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from machine_info import describe  # benchmarks/, this script's folder
from moebius_edge import contract, masks
from moebius_edge.models import open_models

ROOT = Path(__file__).resolve().parents[1]
W, H, WIRE = 6000, 4000, 3


def make_pair(folder: Path) -> tuple:
    """A smooth 24 MP photo (JPEG) and a 3 px wire across it (PNG, 255 = fill)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    rng = np.random.default_rng(0)
    photo = np.stack([90 + 80 * np.sin(x / 310) * np.cos(y / 170), 60 + 120 * y / H, 200 - 100 * x / W], -1)
    photo += rng.normal(0, 4, photo.shape).astype(np.float32)
    photo = np.clip(photo, 0, 255).astype(np.uint8)
    mask = Image.new("L", (W, H), 0)
    # A sagging power line: a gentle curve from left to right, drawn 3 px wide.
    xs = np.linspace(300, W - 300, 400)
    ys = 900 + 0.00012 * (xs - W / 2) ** 2
    ImageDraw.Draw(mask).line(list(zip(xs.tolist(), ys.tolist())), fill=255, width=WIRE)
    Image.fromarray(photo).save(folder / "wire_photo.jpg", quality=95)
    mask.save(folder / "wire_mask.png")
    return folder / "wire_photo.jpg", folder / "wire_mask.png"


def run_mode(models: str, photo: Path, mask: Path, out: Path, fidelity: str, steps: int) -> dict:
    cmd = [sys.executable, "-m", "moebius_edge.cli", "-q", "run", str(photo), str(mask), "--models", models,
           "-o", str(out), "--json", "--steps", str(steps), "--fidelity", fidelity, "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"{fidelity} run failed:\n{proc.stderr}")
    record = json.loads(proc.stdout)
    src = np.asarray(Image.open(photo).convert("RGB")).astype(np.int16)
    res = np.asarray(Image.open(out).convert("RGB")).astype(np.int16)
    hole = masks.binarize(np.asarray(Image.open(mask).convert("L")))
    changed = np.abs(res - src).max(axis=2) > 2  # JPEG re-encoding moves untouched pixels by ≤ 2
    dist = _distance_to(hole)
    reports = [c["coverage"] for c in record["crops"]]
    return {"fidelity": fidelity, "wall_s": round(wall, 1), "wire_px": int(hole.sum()),
            "wire_px_changed": int((changed & hole).sum()),
            "underweight_px": sum(r["underweight_px"] for r in reports),
            "unseen_px": sum(r["unseen_px"] for r in reports),
            "model_native_px": sum(r["model_native_px"] for r in reports),
            "hole_native_px": round(sum(r["hole_native_px"] for r in reports), 1),
            "changed_beyond_px": float(np.percentile(dist[changed & ~hole], 99)) if (changed & ~hole).any() else 0.0,
            "crops": record["crops"], "warnings": [ln for ln in proc.stderr.splitlines() if ln.strip()]}


def _distance_to(hole: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.distanceTransform((~hole).view(np.uint8), cv2.DIST_L2, 5)


def figure(path: Path) -> None:
    """Weight maps (white = the model's pixel) of a 1 px and a 3 px line, official vs complete."""
    tiles = []
    for width in (1, 3):
        hole = np.zeros((48, 96), bool)
        hole[24:24 + width, 8:88] = True
        row = [masks.to_u8(hole)] + [masks.feather(hole, contract.PASTE_BLUR_RADIUS, f)
                                     for f in ("official", "complete")]
        tiles.append(np.concatenate([np.pad(t, 2, constant_values=128) for t in row], axis=1))
    grid = np.concatenate(tiles, axis=0)
    im = Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.Resampling.NEAREST)
    canvas = Image.new("L", (im.width, im.height + 28), 255)
    canvas.paste(im, (0, 28))
    d = ImageDraw.Draw(canvas)
    for i, label in enumerate(("user's hole (1 px, 3 px)", "official weights", "complete weights")):
        d.text((i * im.width // 3 + 8, 8), label, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="a full-size models folder (random init is fine)")
    ap.add_argument("--steps", type=int, default=contract.DEFAULT_STEPS)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/thin_strokes.json"))
    ap.add_argument("--figure", default=str(ROOT / "docs/figures/thin_strokes.png"))
    args = ap.parse_args(argv)
    figure(Path(args.figure))
    m = open_models(args.models)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photo, mask = make_pair(Path(tmp))
        for fidelity in ("complete", "official"):
            print(f"running --fidelity {fidelity} on {W}×{H} ...", flush=True)
            rows.append(run_mode(args.models, photo, mask, Path(tmp) / f"{fidelity}.png", fidelity, args.steps))
    print(f"\n## A {WIRE} px wire on a {W}×{H} photo ({m.provenance}, {m.image_size} px native)\n")
    print("| fidelity | wire px | changed | pasted below full weight | outside the latent mask | "
          "model hole (native px) | 99th pct. change distance (px) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fidelity']} | {r['wire_px']:,} | {r['wire_px_changed']:,} | {r['underweight_px']:,} | "
              f"{r['unseen_px']:,} | {r['model_native_px']:,} (hole {r['hole_native_px']:,.0f}) | "
              f"{r['changed_beyond_px']:.0f} | {r['wall_s']} |")
    result = {"benchmark": "thin_strokes", "photo": [W, H], "wire_px_width": WIRE, "steps": args.steps,
              "models_provenance": m.provenance, "native": m.image_size,
              "machine": describe(),
              "runs": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
