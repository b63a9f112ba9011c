"""Cost of `moebius-edge run` against photo size and hole size: the model's cost follows the crop.

    .venv/bin/python benchmarks/photo_size.py --models DIR [--precision int8] [--megapixels 1 4 12 24]
        [--holes 128 512 2048] [--steps 20] [--json benchmarks/results/photo_size.json]

Photos: tests/data/photos/chelsea.jpg resized (LANCZOS) to each size at 4:3 and saved as JPEG
(quality 95), so the file is read and decoded as a user's photo would be. Two series, each run in
a child process of its own (`moebius-edge run PHOTO MASK -o OUT.jpg --json`):

* **photo size**: the same square hole (``--hole-px``, centred) in 1, 4, 12 and 24 MP photos;
* **hole size**: holes of other sides (``--holes``) in the ``--hole-photo-mp`` photo (the crop
  grows with the hole and is resized to the model's native size, so the model's cost stays the same).

Per run: the command's own phase seconds (read = file decode and mask, encode, denoise, decode,
paste, write = encode and file write), the crop, and the child's peak RSS. Writes the JSON and
prints the table last.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import describe  # noqa: E402

SOURCE = ROOT / "tests" / "data" / "photos" / "chelsea.jpg"
PHASES = ("read", "encode", "denoise", "decode", "paste", "write")


def make_pair(folder: Path, megapixels: float, hole_px: int) -> tuple:
    """A 4:3 JPEG of ``megapixels`` and a PNG mask with a centred square hole of ``hole_px``."""
    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    photo = folder / f"photo_{megapixels:g}mp.jpg"
    if not photo.is_file():
        Image.open(SOURCE).convert("RGB").resize((w, h), Image.Resampling.LANCZOS).save(photo, quality=95)
    side = min(hole_px, w, h)
    mask = np.zeros((h, w), np.uint8)
    y0, x0 = (h - side) // 2, (w - side) // 2
    mask[y0:y0 + side, x0:x0 + side] = 255
    mask_path = folder / f"mask_{megapixels:g}mp_{side}.png"
    Image.fromarray(mask).save(mask_path)
    return photo, mask_path, (w, h), side


def worker(argv: list) -> dict:
    """`moebius-edge run ... --json` in this process: its record and this process's peak RSS."""
    from moebius_edge import cli

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli.main(argv)
    if rc:
        raise SystemExit(f"moebius-edge run failed (exit {rc})")
    record = json.loads(buf.getvalue())
    return {"record": record, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def one(folder: Path, models: str, precision: str, steps: int, megapixels: float, hole_px: int) -> dict:
    photo, mask, size, side = make_pair(folder, megapixels, hole_px)
    out = folder / f"out_{megapixels:g}mp_{side}.jpg"
    argv = ["run", str(photo), str(mask), "-o", str(out), "--models", models, "--precision", precision,
            "--steps", str(steps), "--provider", "cpu", "--no-progress", "-q", "--json", "-f"]
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(argv)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{megapixels} MP, hole {side} px failed:\n{proc.stderr}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    rec, s = got["record"], got["record"]["seconds"]
    box = rec["crops"][0]["box"]
    return {"megapixels": round(size[0] * size[1] / 1e6, 2), "size": list(size), "hole_px": side,
            "file_mb": round(photo.stat().st_size / 1e6, 2), "crop_px": [box[2] - box[0], box[3] - box[1]],
            "seconds": {k: round(s.get(k, 0.0), 3) for k in (*PHASES, "total")},
            "load_s": round(sum(s.get(k, 0.0) for k in ("open_models", "encoder_load", "unet_load", "decoder_load")),
                            3),
            "peak_rss_mb": got["peak_rss_mb"]}


def table(r: dict) -> str:
    lines = [f"{'series':<11} {'photo':>13} {'MP':>5} {'hole':>5} {'crop':>11} "
             + " ".join(f"{p:>7}" for p in PHASES) + f" {'total s':>8} {'peak RSS':>9}"]
    for series in ("photo_size", "hole_size"):
        for x in r[series]:
            s = x["seconds"]
            lines.append(f"{series:<11} {x['size'][0]:>6}×{x['size'][1]:<6} {x['megapixels']:>5.1f} {x['hole_px']:>5} "
                         f"{x['crop_px'][0]:>5}×{x['crop_px'][1]:<5} " + " ".join(f"{s[p]:>7.2f}" for p in PHASES)
                         + f" {s['total']:>8.1f} {x['peak_rss_mb']:>6.0f} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="models folder (a full-size one for real figures)")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 12, 24])
    ap.add_argument("--hole-px", type=int, default=256, help="side of the square hole of the photo-size series")
    ap.add_argument("--holes", type=int, nargs="*", default=[128, 1024, 2048],
                    help="hole sides of the hole-size series (with --hole-px, in the --hole-photo-mp photo)")
    ap.add_argument("--hole-photo-mp", type=float, default=12)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "photo_size.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if not args.models:
        ap.error("give --models DIR")
    from moebius_edge.models import open_models

    variant = open_models(args.models, args.precision)
    result = {"benchmark": "photo_size", "machine": describe(), "variant": args.precision, "steps": args.steps,
              "models_provenance": variant.provenance, "native_px": variant.image_size, "photo_size": [],
              "hole_size": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for mp in args.megapixels:
            print(f"{mp:g} MP, hole {args.hole_px} px ...", flush=True)
            result["photo_size"].append(one(folder, args.models, args.precision, args.steps, mp, args.hole_px))
        for side in sorted(set(args.holes)):
            if side == args.hole_px and args.hole_photo_mp in args.megapixels:
                continue  # the photo-size series has it
            print(f"{args.hole_photo_mp:g} MP, hole {side} px ...", flush=True)
            result["hole_size"].append(one(folder, args.models, args.precision, args.steps, args.hole_photo_mp, side))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
