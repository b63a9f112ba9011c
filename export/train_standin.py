"""Train the ``tiny`` preset briefly as a denoiser: a stand-in with *trained* statistics.

The quantization gate (``moebius_edge.quantize``) must be tested on a model whose activations look
like a trained network's, not on random weights (random-init activations reach ±400 and the
outputs are noise, so any error figure is meaningless). The official weights are out of reach
here, so this script trains the tiny UNet (``PRESETS["tiny"]``, 1.16 M parameters, 128 px) for a
few CPU-minutes with the training objective of latent diffusion (Rombach et al. 2022, eq. 2; the
ε-prediction loss of Ho et al. 2020):

    x_t = √ᾱ_t·z₀ + √(1 − ᾱ_t)·ε,    ε = n + 0.0357·o        (the pipeline's offset noise)
    L   = ‖ε − ε_θ([x_t | m | z_masked], t, ids)‖²

on latents of photo crops encoded by the tiny VAE (``tests/data/tiny_vae_*``), with the 9-channel
mask conditioning of the official model (``contract.UNET_INPUT_CHANNELS``: noisy latent, latent
mask, latent of the hole-masked image) and masks from the same seeded generator as calibration
(``quantize.calibration.draw_mask``: strokes, brushes, boxes, blobs; hole rules of the runtime's
default fidelity, ``contract.DEFAULT_FIDELITY``). Both classifier-free-guidance halves are trained:
every batch is half ``contract.UNCOND_IDS`` and half ``contract.COND_IDS`` rows.

Seeded and single-process; ``--threads`` caps torch's CPU threads (the machines are shared).
Writes the state dict (official key names, eval-mode BatchNorm statistics) as safetensors and a
JSON provenance file beside it:

    .venv/bin/python -m moebius_edge.export.train_standin \\
        --photos tests/data/photos/chelsea.jpg tests/data/photos/rocket.jpg \\
        --out tests/data/standin_weights.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from moebius_edge import __version__, contract, masks
from moebius_edge.export.config import PRESETS
from moebius_edge.export.model import build_removal_model
from moebius_edge.export.onnx_export import alphas_cumprod

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def load_vae(config_path, weights_path):
    """The tiny diffusers VAE (strict key-for-key load) and its scaling factor."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    config = json.loads(Path(config_path).read_text())
    vae = AutoencoderKL.from_config(config)
    vae.load_state_dict(load_file(str(weights_path)), strict=True)
    return vae.eval(), float(config["scaling_factor"])


def random_crops(photos: list, n: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """(n, side, side, 3) uint8 crops: random scale (short side 1–2.5 × ``side``), place and flip,
    so a couple of photos give thousands of distinct training images."""
    from PIL import Image

    out = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        im = photos[int(rng.integers(len(photos)))]
        h, w = im.shape[:2]
        scale = rng.uniform(1.0, 2.5) * side / min(h, w)
        nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
        big = np.asarray(Image.fromarray(im).resize((nw, nh), Image.Resampling.BICUBIC))
        y, x = int(rng.integers(0, nh - side + 1)), int(rng.integers(0, nw - side + 1))
        crop = big[y:y + side, x:x + side]
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def training_set(photos: list, vae, sf: float, n: int, side: int, seed: int) -> dict:
    """Encode ``n`` crops and their masked versions once: z₀, the latent mask, z_masked."""
    from moebius_edge.quantize.calibration import MASK_KINDS, draw_mask

    rng = np.random.default_rng(seed)
    crops = random_crops(photos, n, side, rng)
    holes = np.stack([masks.to_model(masks.binarize(draw_mask(rng, side, side, MASK_KINDS[i % len(MASK_KINDS)])),
                                     (side, side), contract.DEFAULT_FIDELITY) for i in range(n)])
    gen = torch.Generator().manual_seed(seed)
    z, zm = [], []
    with torch.no_grad():
        for i in range(0, n, 64):
            x = torch.from_numpy(crops[i:i + 64]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
            hole = torch.from_numpy(holes[i:i + 64])[:, None].float()
            # Posterior samples, as the pipeline encodes (docs/pipeline.md §4.2).
            z.append(vae.encode(x).latent_dist.sample(gen) * sf)
            zm.append(vae.encode(x * (1 - hole)).latent_dist.sample(gen) * sf)
    f = contract.VAE_FACTOR
    m = torch.from_numpy(holes[:, ::f, ::f].copy())[:, None].float()  # the runtime's latent_mask rule
    return {"z": torch.cat(z), "latent_mask": m, "z_masked": torch.cat(zm), "hole_fraction": float(holes.mean())}


def train(model, data: dict, *, steps: int, batch: int, lr: float, seed: int, log_every: int = 50) -> list:
    """AdamW with a cosine schedule; returns [(step, mean loss of the last ``log_every`` steps)]."""
    g = torch.Generator().manual_seed(seed)
    ac = torch.from_numpy(alphas_cumprod().astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    ids = torch.tensor([contract.UNCOND_IDS] * (batch // 2) + [contract.COND_IDS] * (batch - batch // 2))
    n = data["z"].shape[0]
    model.train()
    curve, running = [], []
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch,), generator=g)
        z0, m, zm = data["z"][idx], data["latent_mask"][idx], data["z_masked"][idx]
        t = torch.randint(0, contract.NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
        eps = (torch.randn(z0.shape, generator=g)
               + contract.NOISE_OFFSET * torch.randn((batch, z0.shape[1], 1, 1), generator=g))
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        parts = dict(zip(contract.UNET.input_names, (xt, m, zm)))
        x = torch.cat([parts[name] for name, _, _ in contract.UNET_INPUT_CHANNELS], dim=1)
        loss = nn.functional.mse_loss(model(x, t, ids), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            curve.append((step, float(np.mean(running))))
            log.info("step %d/%d  loss %.4f", step, steps, curve[-1][1])
            running = []
    return curve


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--photos", nargs="+", required=True, help="training photos (the calibration photos only)")
    ap.add_argument("--out", default=str(DATA / "standin_weights.safetensors"))
    ap.add_argument("--vae-config", default=str(DATA / "tiny_vae_config.json"))
    ap.add_argument("--vae-weights", default=str(DATA / "tiny_vae_weights.safetensors"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--crops", type=int, default=512, help="distinct crop+mask pairs encoded once")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a script, not a library

    from PIL import Image
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = PRESETS["tiny"]
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in args.photos]
    vae, sf = load_vae(args.vae_config, args.vae_weights)
    data = training_set(photos, vae, sf, args.crops, cfg.image_size, args.seed)
    log.info("encoded %d crops in %.1f s (hole fraction %.2f)", args.crops, time.perf_counter() - t0,
             data["hole_fraction"])
    model = build_removal_model(cfg)
    curve = train(model, data, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    model.eval()
    out = Path(args.out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={"origin": "moebius-edge stand-in (export/train_standin.py)",
                                         "seed": str(args.seed), "steps": str(args.steps)})
    provenance = {
        "what": "tiny-preset Moebius UNet trained briefly as an epsilon-prediction denoiser (a stand-in "
                "with trained statistics for the quantization gate; not an inpainting model)",
        "script": "export/train_standin.py",
        "command": "python -m moebius_edge.export.train_standin " + " ".join(argv or __import__("sys").argv[1:]),
        "seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr, "crops": args.crops,
        "threads": args.threads, "image_side": cfg.image_size,
        "photos": {Path(p).name: _sha256(p) for p in args.photos},
        "vae": {Path(args.vae_config).name: _sha256(args.vae_config),
                Path(args.vae_weights).name: _sha256(args.vae_weights)},
        "objective": "MSE(eps, eps_theta([x_t | latent mask | masked latent], t, ids)); eps with the "
                     f"{contract.NOISE_OFFSET} offset noise; half the rows uncond ids, half cond ids",
        "mask_rules": contract.DEFAULT_FIDELITY,
        "loss_curve": curve, "final_loss": curve[-1][1],
        "wall_seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1),
        "torch": torch.__version__, "python": platform.python_version(), "moebius_edge": __version__,
        "file_sha256": _sha256(out),
    }
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=1) + "\n")
    log.info("wrote %s (%.1f MB) and %s; final loss %.4f; %.0f s wall, %.0f CPU-s", out, out.stat().st_size / 1e6,
             out.with_suffix(".json").name, curve[-1][1], provenance["wall_seconds"], provenance["cpu_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
