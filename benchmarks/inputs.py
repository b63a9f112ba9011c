"""Seeded inputs of the graphs for the benchmarks that time them (the names from the contract)."""
from __future__ import annotations

import numpy as np

from moebius_edge import contract


def unet_feed(latent_size: int, seed: int = 0, timestep: int = 500) -> dict:
    """One CFG step's UNet inputs at batch 1: normal latents, a random 0/1 mask, ``timestep``, the
    default guidance."""
    rng = np.random.default_rng(seed)
    latent, mask, masked, t, guidance = contract.UNET.inputs
    shape = (1, contract.LATENT_CHANNELS, latent_size, latent_size)
    return {latent.name: rng.standard_normal(shape, dtype=np.float32),
            mask.name: (rng.random((1, 1, latent_size, latent_size)) > 0.5).astype(np.float32),
            masked.name: rng.standard_normal(shape, dtype=np.float32),
            t.name: np.array([timestep], dtype=t.dtype),
            guidance.name: np.array([contract.DEFAULT_GUIDANCE], dtype=guidance.dtype)}


def vae_feed(spec: contract.GraphSpec, image_size: int, seed: int = 0) -> dict:
    """One VAE call's inputs at batch 1: an image uniform in [-1, 1] and normal noise (encoder),
    or a normal latent (decoder)."""
    rng = np.random.default_rng(seed)
    sides = {contract.BATCH_AXIS: 1, contract.IMAGE_H: image_size, contract.IMAGE_W: image_size,
             contract.LATENT_H: image_size // contract.VAE_FACTOR, contract.LATENT_W: image_size // contract.VAE_FACTOR}
    feed = {}
    for t in spec.inputs:
        shape = tuple(sides.get(d, d) for d in t.shape)
        is_image = t.shape[1] == 3
        feed[t.name] = (rng.uniform(-1, 1, shape) if is_image else rng.standard_normal(shape)).astype(np.float32)
    return feed
