"""The reference app loop over a bundle against `moebius-edge run` on the same photo and noise.

    .venv/bin/python benchmarks/bundle_parity.py --models out/full BUNDLE [BUNDLE ...] \\
        [--json benchmarks/results/bundle_parity.json]

For each bundle (made from MODELS by `moebius-edge bundle`): a real photo of tests/data/photos
(centre square, resized to the bundle's native size) with a rectangular hole, the four noise
draws of ``mobile_reference.draw_noise(bundle, 0)``; the app loop (examples/mobile_reference.py,
which reads only the bundle) and the runtime (``Inpainter`` on MODELS at the bundle's precision,
the same noise injected) inpaint it with the default steps. Records per bundle: the largest pixel
difference, the share of equal pixels and within 1 LSB, the PSNR of the app's image against the
runtime's, and both wall times. tests/test_bundle.py checks the same on the tiny model.

An int8 bundle's float parts run other kernels (optimised for ARM) than the runtime's x86 session,
and a last-bit difference that crosses a quantizer's rounding boundary is amplified over the
steps: its figure is the PSNR, not 1 LSB.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import mobile_reference as app  # noqa: E402

from benchmarks.machine_info import save_record  # noqa: E402
from moebius_edge import contract  # noqa: E402
from moebius_edge.pipeline import Inpainter  # noqa: E402

PRECISION, SIZE = contract.manifest_key(contract.META_PRECISION), contract.manifest_key(contract.META_IMAGE_SIZE)
PHOTO = ROOT / "tests" / "data" / "photos" / "chelsea.jpg"


def photo_and_mask(n: int) -> tuple:
    img = Image.open(PHOTO).convert("RGB")
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    image = np.asarray(img.crop((left, top, left + s, top + s)).resize((n, n), Image.Resampling.LANCZOS))
    mask = np.zeros((n, n), np.uint8)
    mask[n * 3 // 8:n * 5 // 8, n // 4:n * 3 // 4] = 255
    return image, mask


def compare(models: Path, bundle_dir: Path) -> dict:
    bundle = app.load_bundle(bundle_dir)
    n, precision = bundle[SIZE], bundle[PRECISION]
    image, mask = photo_and_mask(n)
    noise = app.draw_noise(bundle, 0)
    t = time.perf_counter()
    got = app.inpaint(bundle, image, mask, noise)
    app_s = time.perf_counter() - t
    t = time.perf_counter()
    want = Inpainter.from_models(models, precision, providers="cpu").inpaint(image, mask, noise=noise)
    run_s = time.perf_counter() - t
    diff = np.abs(got.astype(np.int16) - want)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {"target": bundle["target"], PRECISION: precision, SIZE: n, "photo": PHOTO.name,
            "steps": len(bundle["sampling"]["schedule"]["timesteps"]),
            "max_abs_diff": int(diff.max()), "equal_share": float((diff == 0).mean()),
            "within_1_share": float((diff <= 1).mean()),
            "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse),
            "changed_px": int((want != image).any(-1).sum()),
            "app_s": round(app_s, 1), "runtime_s": round(run_s, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, required=True, help="the models folder the bundles were made from")
    p.add_argument("bundles", type=Path, nargs="+")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bundle_parity.json")
    args = p.parse_args(argv)
    for bundle_dir in args.bundles:
        record = compare(args.models, bundle_dir)
        save_record(args.json, f"{record['target']}-{record[PRECISION]}-{record[SIZE]}", record)
        print(f"{bundle_dir.name}: max |Δ| {record['max_abs_diff']}, {100 * record['equal_share']:.2f} % equal, "
              f"{100 * record['within_1_share']:.2f} % within 1 LSB, PSNR {record['psnr_db']:.1f} dB "
              f"(app {record['app_s']} s, runtime {record['runtime_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
