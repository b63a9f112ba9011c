"""Strict, safe loading of weight files into the PyTorch models (docs/model.md §1, §7).

The official Moebius checkpoints (``<variant>/diffusion_pytorch_model.bin``) are plain pickled
state dicts; the tiny test weights and diffusers VAEs are safetensors. Both are read here:

* pickles only through ``torch.load(weights_only=True)``, PyTorch's restricted unpickler, so a
  file that smuggles in any other object is refused before that object is built;
* tensors only: a file holding anything but a flat ``{str: Tensor}`` mapping is refused;
* floating tensors are cast to float32 (docs/model.md §7: a bf16- or fp16-saved file loads the same way);
* keys and shapes are compared by us before ``load_state_dict(strict=True)``, so that every
  mismatch becomes one line naming the file and the first offending key (a ``UserError``).
"""
from __future__ import annotations

import logging
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from moebius_edge.errors import UserError
from moebius_edge.export.config import MoebiusConfig
from moebius_edge.export.model import RemovalModel, build_removal_model

log = logging.getLogger(__name__)

# What torch.load raises on a damaged file, depending on where the damage is: the zip
# container (RuntimeError from the stream reader, BadZipFile), the pickle stream (EOFError,
# UnpicklingError, KeyError/IndexError on a garbled opcode) or a legacy-format record (struct).
_CORRUPT_ERRORS = (RuntimeError, EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError,
                   UnicodeDecodeError, struct.error, zipfile.BadZipFile, pickle.UnpicklingError)


def _first_line(text, limit: int = 160) -> str:
    """The first line of a (library) message, cut to its first sentence when long."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    if len(line) > limit and ". " in line[:limit]:
        line = line[: line.index(". ") + 1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _looks_like_safetensors(path: Path) -> bool:
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _load_safetensors(path: Path, name: str) -> dict:
    import safetensors
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except safetensors.SafetensorError as e:
        raise UserError(f"{name}: truncated or corrupt checkpoint ({_first_line(e)})") from None


def _load_pickle(path: Path, name: str):
    # torch warns about unusual pickle protocols; the verdict is ours to give, so its warnings go
    # to the debug log instead of breaking the one-line error on stderr.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            text = str(e)
            if "Weights only load failed" not in text:
                raise UserError(f"{name}: truncated or corrupt checkpoint ({_first_line(text)})") from None
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if found:
                what = f"a pickle with a non-tensor object: {found.group(1)}; refused without running it"
            else:
                detail = re.search(r"WeightsUnpickler error:\s*(.+)", text, re.S)
                what = "not a torch.save file: " + _first_line(detail.group(1) if detail else text, 80)
            raise UserError(f"{name}: not a state dict ({what})") from None
        except _CORRUPT_ERRORS as e:
            reason = _first_line(e)
            if not isinstance(e, RuntimeError):  # e.g. KeyError('101') alone says nothing
                reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
            raise UserError(f"{name}: truncated or corrupt checkpoint ({reason})") from None
        finally:
            for w in caught:
                log.debug("torch.load(%s): %s", name, w.message)


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from a ``.bin``/``.pt`` pickle or a ``.safetensors``
    file, on CPU, floating tensors in float32. Raises ``UserError`` with one line naming the file."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise UserError(f"{name}: no such file" if not path.exists() else f"{name}: not a file")
    try:
        if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
            obj = _load_safetensors(path, name)
        else:
            obj = _load_pickle(path, name)
    except PermissionError as e:
        raise UserError(f"{name}: cannot read ({e.strerror})") from None

    if not isinstance(obj, dict):
        raise UserError(f"{name}: not a state dict (the file holds a {type(obj).__name__}, "
                        "expected a mapping of names to tensors)")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise UserError(f"{name}: not a state dict (a key of type {type(key).__name__}: {key!r})")
        if not isinstance(value, torch.Tensor):
            hint = ""
            if isinstance(value, dict) and key in ("state_dict", "model", "module", "ema"):
                hint = f"; it looks like a training checkpoint: save its {key!r} entry on its own"
            raise UserError(f"{name}: not a state dict (entry {key!r} is a {type(value).__name__}, "
                            f"not a tensor{hint})")
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in obj.items()}
    log.debug("%s: %d tensors", name, len(sd))
    return sd


def _shape(t) -> str:
    return str(list(t.shape))


def check_state_dict(model: nn.Module, sd: dict, source: str) -> None:
    """Compare keys and shapes of ``sd`` with ``model.state_dict()``; raise one ``UserError`` line
    naming ``source`` and the first offending key (in the model's order) on any mismatch."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing and len(missing) == len(want):
        raise UserError(f"{source}: none of the model's {len(want)} keys is in the file "
                        f"(its first key: {next(iter(sd), '<none>')}); is it a checkpoint of this model?")
    bad = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key{'s' * (len(missing) != 1)}, first: {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) != 1)}, first: {unexpected[0]}")
    if bad:
        k = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        problems.append(f"shape mismatch at {k}: file {_shape(sd[k])} vs model {_shape(want[k])}{more}")
        if k.endswith("rel_pos_emb"):
            problems.append("rel_pos_emb rows fix the latent size, so the config's image_size must match the weights'")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


def load_removal_model(cfg: MoebiusConfig, path) -> RemovalModel:
    """The official ``RemovalModel`` for ``cfg`` with the weights of ``path``, in eval mode.

    Loading is strict (docs/model.md §7): every key of the file is a key of the model with the same shape, and
    the other way round; any difference is a one-line ``UserError``."""
    sd = load_state_dict_file(path)
    model = build_removal_model(cfg)
    check_state_dict(model, sd, str(path))
    model.load_state_dict(sd, strict=True)
    log.info("loaded %s (%s parameters)", path, f"{count_parameters(model):,}")
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics not counted)."""
    return sum(p.numel() for p in model.parameters())


