"""The ``moebius-edge export`` job: choose the weights, build the models, export the graphs.

Three sources, recorded as provenance in every graph and in the manifest:
``official:<variant>`` (the Hugging Face Hub files, from the local cache or downloaded),
``checkpoint:<file name>`` (a local checkpoint plus a VAE folder) and ``random-init:<seed>``
(toolchain checks; BatchNorm statistics and norm affines perturbed so folding is exercised).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from moebius_edge.errors import UserError
from moebius_edge.export.config import PRESETS, get_config
from moebius_edge.export.model import build_removal_model
from moebius_edge.export.onnx_export import export_models, stage
from moebius_edge.export.transforms import perturb_for_testing_

log = logging.getLogger(__name__)


def run_export(out_dir, *, unet_config="moebius", unet_weights=None, vae_dir=None, variant=None,
               random_init=False, seed=0, image_size=None, static_batch=False, local_files_only=False,
               cache_dir=None) -> dict:
    from moebius_edge.export.checkpoint import load_removal_model
    from moebius_edge.models import sha256_file
    from moebius_edge.export.vae import load_vae

    cfg = get_config(unet_config)
    if image_size is not None:
        if not random_init:
            raise UserError("--image-size only applies to --random-init (official weights are built for "
                            f"{cfg.image_size}×{cfg.image_size})")
        cfg = cfg.replace(image_size=image_size)
    weights_sha256 = None
    if variant is not None:
        if unet_weights or vae_dir or random_init:
            raise UserError("--variant takes the official files; do not combine it with --unet-weights, --vae or --random-init")
        from moebius_edge.export.hub import resolve_official

        with stage(f"resolve official {variant} weights"):
            unet_weights, vae_dir = resolve_official(variant, cache_dir=cache_dir, local_files_only=local_files_only)
        provenance = f"official:{variant}"
    elif random_init:
        if unet_weights:
            raise UserError("--random-init and --unet-weights exclude each other")
        provenance = f"random-init:{seed}"
    else:
        if not unet_weights or not vae_dir:
            raise UserError("give --variant, or --unet-weights FILE with --vae DIR, or --random-init")
        provenance = f"checkpoint:{Path(unet_weights).name}"

    with stage("load weights"):
        if random_init:
            model, vae, scaling_factor = random_init_modules(cfg, seed, vae_dir)
        else:
            weights_sha256 = sha256_file(unet_weights)
            model = load_removal_model(cfg, unet_weights)
            vae, scaling_factor = load_vae(vae_dir)
    log.info("exporting %s (latent %d×%d, %s batch) to %s", provenance, cfg.latent_size, cfg.latent_size,
             "static" if static_batch else "dynamic", out_dir)
    return export_models(model, vae, scaling_factor, out_dir, provenance=provenance,
                         weights_sha256=weights_sha256, static_batch=static_batch)


def random_init_modules(cfg, seed: int, vae_dir=None) -> tuple:
    """(UNet, VAE, scaling factor): the PyTorch modules ``export --random-init --seed SEED`` exports
    for ``cfg``, rebuilt the same from a folder's provenance by the benchmarks that compare them
    with the graphs. The tiny preset's UNet (at any image size) gets the tiny VAE layout: a
    full-size VAE would make toolchain runs 10× slower and 300 MB larger for nothing."""
    from moebius_edge.export.vae import build_random_vae, load_vae, packaged_vae_config

    torch.manual_seed(seed)
    model = perturb_for_testing_(build_removal_model(cfg), seed)
    tiny = cfg.replace(image_size=PRESETS["tiny"].image_size) == PRESETS["tiny"]
    vae, scaling_factor = (load_vae(vae_dir) if vae_dir
                           else build_random_vae(seed, packaged_vae_config("tiny" if tiny else "sdxl")))
    return model, vae, scaling_factor
