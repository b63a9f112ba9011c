"""The kl-f8 VAE (docs/model.md §9): strict loading from a diffusers folder, or a random one.

The official pipeline loads a diffusers ``AutoencoderKL`` from the PixelHacker release folder
``vae/`` (``config.json`` + ``diffusion_pytorch_model.{safetensors,bin}``). Here the model is
built from that config and the weights are copied strictly (``load_state_dict(strict=True)``
after our own key and shape check, pickles only through ``torch.load(weights_only=True)``).

The latent scaling factor is always read from the config (docs/model.md §9: it must not be hard-coded). A
config that would change the encode formula ``latent = sample · scaling_factor`` is refused:
``shift_factor`` (``(sample − shift) · scale``, SD3/Flux VAEs) or per-channel
``latents_mean``/``latents_std`` (normalised latents); so is one whose latent channels or
downsampling factor differ from the contract.

``build_random_vae`` makes a random-init VAE for toolchain runs without the release. Its default
layout is the packaged ``data/sdxl_vae_config.json``: the SDXL kl-f8 VAE config, an UNVERIFIED
best guess (the released PixelHacker ``vae/config.json`` could not be read here; docs/model.md §9 gives the
evidence for SDXL and its scaling factor 0.13025). Exports of the official model read the real
config through ``load_vae`` instead.
"""
from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import torch

from moebius_edge import contract
from moebius_edge.errors import UserError
from moebius_edge.export.checkpoint import check_state_dict, load_state_dict_file

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# diffusers' own preference order when both are present.
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
PACKAGED_CONFIG = "sdxl_vae_config.json"
# Packaged layouts for random-init runs: "sdxl" (the full-size best guess) and "tiny" (the reference
# tiny VAE's layout, paired with the `tiny` UNet preset so toolchain runs stay small and fast).
PACKAGED_CONFIGS = {"sdxl": PACKAGED_CONFIG, "tiny": "tiny_vae_config.json"}

# Checkpoints saved before diffusers 0.14 name the mid-block attention projections differently;
# diffusers' from_pretrained renames them, so a strict copy of such a release must too.
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def packaged_vae_config(name: str = "sdxl") -> dict:
    """A packaged config: "sdxl" (default; see the module docstring: an unverified best guess)
    or "tiny"."""
    text = resources.files("moebius_edge.export").joinpath("data", PACKAGED_CONFIGS[name]).read_text()
    return json.loads(text)


def check_vae_config(config: dict, source: str) -> float:
    """Refuse a config the contract cannot serve; return its scaling factor."""
    if not isinstance(config, dict):
        raise UserError(f"{source}: not a VAE config (expected a JSON object)")
    cls = config.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise UserError(f"{source}: _class_name {cls}, expected AutoencoderKL")
    scale = config.get("scaling_factor")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        # diffusers would silently use its SD-1 default 0.18215; the factor must come from the release.
        raise UserError(f"{source}: scaling_factor must be a positive number, found {scale!r}")
    if config.get("shift_factor") is not None:
        raise UserError(f"{source}: shift_factor {config['shift_factor']} is not supported: it would change the "
                        "encode formula to (z - shift) * scale, which the exported graphs do not implement")
    for key in ("latents_mean", "latents_std"):
        if config.get(key) is not None:
            raise UserError(f"{source}: {key} is not supported: per-channel latent normalisation would change the "
                            "encode formula z * scaling_factor, which the exported graphs implement")
    return float(scale)


def _check_built(vae, source: str) -> None:
    # The built model's config holds diffusers' defaults for any key the file left out.
    latent = vae.config.latent_channels
    if latent != contract.LATENT_CHANNELS:
        raise UserError(f"{source}: latent_channels {latent}, the contract needs {contract.LATENT_CHANNELS}")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if factor != contract.VAE_FACTOR:
        raise UserError(f"{source}: downsampling factor {factor} ({len(vae.config.block_out_channels)} levels), "
                        f"the contract needs {contract.VAE_FACTOR}")


def _build(config: dict, source: str):
    from diffusers import AutoencoderKL

    scale = check_vae_config(config, source)
    # Keys starting with "_" are metadata (class name, version, our "_comment"), not arguments.
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        vae = AutoencoderKL.from_config(kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{source}: AutoencoderKL cannot be built from it ({e})") from None
    _check_built(vae, source)
    return vae, scale


def _rename_legacy_attention(vae, sd: dict) -> dict:
    paths = [name for name, mod in vae.named_modules() if getattr(mod, "_from_deprecated_attn_block", False)]
    renamed = dict(sd)
    for path in paths:
        for old, new in _LEGACY_ATTENTION_NAMES.items():
            for kind in ("weight", "bias"):
                key = f"{path}.{old}.{kind}"
                if key in renamed and f"{path}.{new}.{kind}" not in renamed:
                    renamed[f"{path}.{new}.{kind}"] = renamed.pop(key)
    return renamed


def read_vae_config(path) -> dict:
    """A diffusers ``config.json`` as a dict (``UserError`` if unreadable)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the VAE config ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a VAE config (expected a JSON object)")
    return config


def load_vae(folder):
    """``(AutoencoderKL in eval mode, scaling_factor)`` from a diffusers-format folder.

    The weights are copied strictly; ``scaling_factor`` comes from the folder's config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such VAE folder (expected config.json and "
                        f"{' or '.join(WEIGHTS_FILES)})")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{folder}: no {CONFIG_FILE} in the VAE folder")
    weights = next((folder / f for f in WEIGHTS_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise UserError(f"{folder}: no VAE weights ({' or '.join(WEIGHTS_FILES)})")
    vae, scale = _build(read_vae_config(config_path), str(config_path))
    sd = _rename_legacy_attention(vae, load_state_dict_file(weights))
    check_state_dict(vae, sd, str(weights))
    vae.load_state_dict(sd, strict=True)
    log.info("loaded VAE %s (scaling factor %s)", weights, scale)
    return vae.eval(), scale


def build_random_vae(seed: int, config: dict | None = None):
    """``(random-init AutoencoderKL in eval mode, scaling_factor)`` for runs without the release.

    ``config`` defaults to the packaged SDXL-layout config. The global torch RNG is left as it was."""
    source = "VAE config" if config is not None else PACKAGED_CONFIG
    config = packaged_vae_config() if config is None else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae, scale = _build(config, source)
    return vae.eval(), scale
