"""Would a tiled VAE decode pass the low-memory mode's quality bar? Measured before building one.

    .venv/bin/python benchmarks/vae_tiling.py [--full-size] [--json benchmarks/results/vae_tiling.json]

The issue's low-memory mode (≤ 0.8 GB with int8) has to cut the decoder's activations at 512²,
and tiling the decode is the usual lever. Tiling changes pixels, so the issue sets a bar first:
≥ 40 dB (``GATE_DB``) against the untiled decode. This measures that bar with the reference
implementation, diffusers' ``AutoencoderKL`` tiled decode (tiles of T latent pixels overlapping by
a quarter, blended linearly), against the untiled decode of the same latents, in PyTorch: per tile
size, the PSNR of the [0, 1] images, the decode's time and its peak RSS (VmHWM reset before it).

Every GroupNorm in a tile normalises with that tile's statistics instead of the image's, and the
mid-block attention sees only the tile: that, not the seams, is what moves the pixels.

VAEs: the tiny VAE of the goldens at 128 px (the stand-in's VAE) and, with ``--full-size``, the
random-init SDXL-layout VAE at 512². Both have random weights (no trained VAE is reachable here);
latents are the posterior means of the test photos. A control row uses a tile as large as the
latent, which diffusers decodes untiled: it must match exactly, or the comparison is broken.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import describe  # noqa: E402
from moebius_edge import contract  # noqa: E402
from moebius_edge.quantize.job import phase_peak_rss_mb, reset_peak_rss  # noqa: E402

GATE_DB = 40.0  # the bar for a tiled decode against the untiled one
OVERLAP = 0.25  # diffusers' default tile_overlap_factor
DATA = ROOT / "tests" / "data"
PHOTOS = ("chelsea.jpg", "rocket.jpg", "grace_hopper.jpg", "retina.jpg")
# (name, image side, tile sizes in latent px); the last tile of each is the untiled control
SETUPS = {"tiny": (128, (8, 12, 16)), "full": (512, (32, 48, 64))}


def _vae(name: str):
    if name == "tiny":
        from moebius_edge.export.train_standin import load_vae

        return load_vae(DATA / "tiny_vae_config.json", DATA / "tiny_vae_weights.safetensors")
    from moebius_edge.export.vae import build_random_vae

    return build_random_vae(0)


def _latent(vae, photo: Path, side: int):
    import torch
    from PIL import Image

    im = np.asarray(Image.open(photo).convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
    x = torch.from_numpy((im.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean


def _decode(vae, z, tile: int | None):
    """(image in [0, 1] as float64, seconds, peak RSS MB) of one decode, tiled when ``tile``."""
    import torch

    if tile is None:
        vae.disable_tiling()
    else:
        vae.enable_tiling()
        vae.tile_latent_min_size = tile
        vae.tile_sample_min_size = tile * contract.VAE_FACTOR
        vae.tile_overlap_factor = OVERLAP
    reset_peak_rss()
    t = time.perf_counter()
    with torch.no_grad():
        y = ((vae.decode(z).sample + 1) / 2).clamp(0, 1).double().numpy()
    return y, time.perf_counter() - t, phase_peak_rss_mb()


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    mse = float(np.mean((a - b) ** 2))
    return None if mse == 0 else 10 * math.log10(1.0 / mse)


def _peak(values: list) -> float:
    return max((v for v in values if v is not None), default=0.0)


def _tiles(latent: int, tile: int) -> int:
    if tile >= latent:
        return 1
    stride = int(tile * (1 - OVERLAP))
    return len(range(0, latent, stride)) ** 2


def measure(name: str, photos: list) -> dict:
    import torch

    side, tiles = SETUPS[name]
    vae, _ = _vae(name)
    latent = side // contract.VAE_FACTOR
    zs = [_latent(vae, p, side) for p in photos]
    _decode(vae, zs[0], None)  # first-call allocations out of the figures
    untiled = {"seconds": [], "peak_rss_mb": []}
    rows = {t: {"tile_latent": t, "tiles": _tiles(latent, t), "psnr_db": [], "max_abs_diff": [],
                "seconds": [], "peak_rss_mb": []} for t in tiles}
    for z in zs:
        ref, s, peak = _decode(vae, z, None)
        untiled["seconds"].append(s)
        untiled["peak_rss_mb"].append(peak)
        for t in tiles:
            y, s, peak = _decode(vae, z, t)
            r = rows[t]
            r["psnr_db"].append(_psnr(y, ref))
            r["max_abs_diff"].append(float(np.abs(y - ref).max()))
            r["seconds"].append(s)
            r["peak_rss_mb"].append(peak)
    out = []
    for r in rows.values():
        finite = [p for p in r["psnr_db"] if p is not None]
        r["psnr_min_db"] = min(finite) if finite else None  # None: equal to the untiled decode
        r["passes_gate"] = r["psnr_min_db"] is None or r["psnr_min_db"] >= GATE_DB
        out.append(r)
    return {"vae": name, "image_side": side, "latent_side": latent, "photos": [p.name for p in photos],
            "torch_threads": torch.get_num_threads(), "untiled": untiled, "rows": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-size", action="store_true", help="also the 512² SDXL-layout VAE (about 2 minutes)")
    ap.add_argument("--photos", type=int, default=2, help="photos per VAE (of the four test photos)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "vae_tiling.json"))
    args = ap.parse_args(argv)
    photos = [DATA / "photos" / p for p in PHOTOS[:max(1, min(args.photos, len(PHOTOS)))]]
    vaes = [measure("tiny", photos)] + ([measure("full", photos)] if args.full_size else [])
    result = {"benchmark": "vae_tiling", "machine": describe(), "gate_db": GATE_DB, "overlap": OVERLAP,
              "vaes": vaes}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}\n")
    for v in vaes:
        u = v["untiled"]
        print(f"{v['vae']} VAE, {v['image_side']}², untiled: {np.median(u['seconds']):.2f} s, "
              f"peak {_peak(u['peak_rss_mb']):,.0f} MB")
        for r in v["rows"]:
            psnr = "equal" if r["psnr_min_db"] is None else f"{r['psnr_min_db']:.1f} dB"
            print(f"  tile {r['tile_latent']:>3} ({r['tiles']} tiles): min PSNR vs untiled {psnr}, "
                  f"{np.median(r['seconds']):.2f} s, peak {_peak(r['peak_rss_mb']):,.0f} MB, "
                  f"gate {'passed' if r['passes_gate'] else 'failed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
