"""The official files on the Hugging Face Hub: the Moebius UNet weights and the kl-f8 VAE.

* UNet: ``hustvl/Moebius/<variant>/diffusion_pytorch_model.bin`` (docs/model.md §1, §7);
* VAE: the ``vae/`` folder of ``hustvl/PixelHacker`` (``config.json`` + weights, docs/model.md §9).

Files go through ``huggingface_hub``'s cache (``HF_HOME`` / ``HF_HUB_CACHE`` or ``cache_dir``),
which makes downloads resumable and lets a later offline run (``HF_HUB_OFFLINE=1`` or
``local_files_only``) resolve them without the network. An unreachable Hub is noticed with one
short connection attempt (``moebius_edge.hub.offline_reason``) instead of huggingface_hub's ~25 s
of retries, and the cache is then used alone. Every failure the user can act on (no network and
not cached, unknown revision, gated repository) becomes one ``UserError`` line that says what to
download and where to put it, or how to go on without it. This module needs ``huggingface_hub``
only (the ``hub`` extra; no torch).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from moebius_edge import contract
from moebius_edge.errors import UserError
from moebius_edge.hub import cache_dir_text, download_error, offline_reason

log = logging.getLogger(__name__)

VAE_CONFIG_FILE = "config.json"
# diffusers' preference order; a release holds at least one of them.
VAE_WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class _NotCachedError(UserError):
    """Not in the cache, and the Hub was not asked (offline) or could not be reached."""


def _describe(repo_id: str, filename: str, revision) -> str:
    return f"{repo_id}/{filename}" + (f" (revision {revision})" if revision else "")


def _fetch(repo_id: str, filename: str, *, variant: str, cache_dir, offline: str | None, revision,
           what: str | None = None):
    """``hf_hub_download`` of one file, every library error mapped to one ``UserError`` line.

    ``offline``: ``offline_reason()``'s answer; when set, only the cache is read. Returns the local
    path, or None when the repository has no such file (so that the caller can try another name).
    ``what`` names the file in messages (default: repo/filename@revision)."""
    from huggingface_hub import errors, hf_hub_download

    what = what or _describe(repo_id, filename, revision)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=offline is not None))
    except errors.LocalEntryNotFoundError as e:
        why = offline
        if why is None:
            cause = e.__cause__ or e.__context__
            why = "the Hub cannot be reached" + (f" ({type(cause).__name__})" if cause is not None else "")
        raise _NotCachedError(
            f"{what} is not in the Hugging Face cache ({cache_dir_text(cache_dir)}) and {why}: run "
            f"`moebius-edge download --variant {variant}` on a machine with network access, then copy its "
            "Hugging Face cache here (or point HF_HOME / --cache-dir at it); or export weights you have with "
            "`moebius-edge export --unet-weights FILE --vae DIR`; or try the toolchain on random tiny weights "
            "with `make demo`") from None
    except errors.RemoteEntryNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - mapped to one line, or re-raised as it is
        mapped = download_error(e, repo_id, revision, what, cache_dir, not_found=f"{repo_id} was not found on the Hub")
        if mapped is None:
            raise
        raise mapped from None


def _check_variant(variant: str) -> None:
    if variant not in contract.HUB_VARIANTS:
        raise UserError(f"unknown variant {variant!r}; choose one of {', '.join(contract.HUB_VARIANTS)}")


def resolve_unet(variant: str, cache_dir=None, local_files_only: bool = False, revision: str | None = None) -> Path:
    """Local path of ``hustvl/Moebius/<variant>/diffusion_pytorch_model.bin`` (downloaded if needed)."""
    _check_variant(variant)
    return _resolve_unet(variant, cache_dir, offline_reason(local_files_only), revision)


def _resolve_unet(variant: str, cache_dir, offline: str | None, revision: str | None) -> Path:
    filename = f"{variant}/{contract.HUB_WEIGHTS_FILE}"
    path = _fetch(contract.HUB_REPO, filename, variant=variant, cache_dir=cache_dir, offline=offline,
                  revision=revision)
    if path is None:
        raise UserError(f"{contract.HUB_REPO} has no file {filename}"
                        + (f" at revision {revision!r}" if revision else ""))
    return path


def resolve_vae(variant: str = contract.HUB_VARIANTS[0], cache_dir=None, local_files_only: bool = False,
                revision: str | None = None) -> Path:
    """Local path of the release VAE folder (``hustvl/PixelHacker/vae``), downloaded if needed.

    ``variant`` only words the hint of the offline error. The weights are fetched at the commit
    the config resolved to, so both files come from the same snapshot folder."""
    return _resolve_vae(variant, cache_dir, offline_reason(local_files_only), revision)


def _resolve_vae(variant: str, cache_dir, offline: str | None, revision: str | None) -> Path:
    repo, sub = contract.HUB_VAE_REPO, contract.HUB_VAE_SUBFOLDER
    fetch = dict(variant=variant, cache_dir=cache_dir, offline=offline)
    config = _fetch(repo, f"{sub}/{VAE_CONFIG_FILE}", revision=revision, **fetch)
    if config is None:
        raise UserError(f"{repo} has no file {sub}/{VAE_CONFIG_FILE}"
                        + (f" at revision {revision!r}" if revision else ""))
    folder = config.parent
    # <cache>/models--org--name/snapshots/<commit>/vae/config.json: pin the weights to that commit.
    commit = folder.parent.name if re.fullmatch(r"[0-9a-f]{40}", folder.parent.name) else revision
    if any((folder / name).is_file() for name in VAE_WEIGHTS_FILES):
        return folder
    not_cached = None
    for name in VAE_WEIGHTS_FILES:
        try:
            weights = _fetch(repo, f"{sub}/{name}", revision=commit, **fetch,
                             what=_describe(repo, f"{sub}/diffusion_pytorch_model.{{safetensors,bin}}", revision))
        except _NotCachedError as e:
            not_cached = e  # the other name may be cached
            continue
        if weights is not None:
            return weights.parent
    if not_cached is not None:
        raise not_cached
    raise UserError(f"{repo}/{sub} has neither {' nor '.join(VAE_WEIGHTS_FILES)}"
                    + (f" at revision {revision!r}" if revision else ""))


def resolve_official(variant: str, cache_dir=None, local_files_only: bool = False,
                     revision: str | None = None, vae_revision: str | None = None) -> tuple[Path, Path]:
    """``(unet_weights_path, vae_folder_path)`` of an official variant, from the Hugging Face cache,
    downloading what is missing unless offline. ``revision`` pins ``hustvl/Moebius``,
    ``vae_revision`` pins ``hustvl/PixelHacker``. Raises a one-line ``UserError`` on failure."""
    _check_variant(variant)
    offline = offline_reason(local_files_only)  # one reachability check for all the files
    unet = _resolve_unet(variant, cache_dir, offline, revision)
    vae = _resolve_vae(variant, cache_dir, offline, vae_revision)
    log.debug("resolved %s: %s, %s", variant, unet, vae)
    return unet, vae
