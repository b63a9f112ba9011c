"""Resolving the official files through the Hugging Face cache (export/hub.py) and
`moebius-edge download`, offline, against a fake cache built in tmp_path.

The fake cache has the layout huggingface_hub writes:
``models--<org>--<name>/{refs/<branch>, blobs/<sha256>, snapshots/<commit>/<path> -> blob}``.
HF_HUB_OFFLINE is on throughout, so nothing tries the network.
"""
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
httpx2 = pytest.importorskip("httpx2")  # huggingface_hub's HTTP client
import huggingface_hub  # noqa: E402
from huggingface_hub import constants as hf_constants  # noqa: E402
from huggingface_hub import errors  # noqa: E402

from moebius_edge import contract  # noqa: E402
from moebius_edge.errors import UserError  # noqa: E402
from moebius_edge.export.hub import resolve_official, resolve_unet, resolve_vae  # noqa: E402

DATA = Path(__file__).parent / "data"
MOEBIUS_COMMIT = "0123456789abcdef0123456789abcdef01234567"
PIXELHACKER_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
UNET_FILE = f"pretrained/{contract.HUB_WEIGHTS_FILE}"
VAE_CONFIG = f"{contract.HUB_VAE_SUBFOLDER}/config.json"
VAE_WEIGHTS = f"{contract.HUB_VAE_SUBFOLDER}/diffusion_pytorch_model.safetensors"


def add_to_cache(cache: Path, repo_id: str, commit: str, filename: str, data: bytes, ref: str = "main") -> Path:
    """Put one file into a Hugging Face cache the way hf_hub_download leaves it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    pointer = repo / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks (some Windows setups): the library then keeps copies
        shutil.copy(blob, pointer)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return pointer


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import time; the env var is for subprocesses.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def cache(tmp_path):
    cache = tmp_path / "hub"
    add_to_cache(cache, contract.HUB_REPO, MOEBIUS_COMMIT, UNET_FILE, b"unet weights")
    add_to_cache(cache, contract.HUB_VAE_REPO, PIXELHACKER_COMMIT, VAE_CONFIG,
                 (DATA / "tiny_vae_config.json").read_bytes())
    add_to_cache(cache, contract.HUB_VAE_REPO, PIXELHACKER_COMMIT, VAE_WEIGHTS,
                 (DATA / "tiny_vae_weights.safetensors").read_bytes())
    return cache


def snapshot(cache, repo_id, commit):
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


def test_resolves_from_the_cache(cache):
    unet, vae = resolve_official("pretrained", cache_dir=cache)
    assert unet == snapshot(cache, contract.HUB_REPO, MOEBIUS_COMMIT) / UNET_FILE
    assert unet.read_bytes() == b"unet weights"
    assert vae == snapshot(cache, contract.HUB_VAE_REPO, PIXELHACKER_COMMIT) / contract.HUB_VAE_SUBFOLDER
    assert (vae / "config.json").is_file() and (vae / "diffusion_pytorch_model.safetensors").is_file()
    assert resolve_official("pretrained", cache_dir=cache, local_files_only=True) == (unet, vae)


def test_resolved_vae_folder_loads(cache):
    pytest.importorskip("diffusers")
    from moebius_edge.export.vae import load_vae

    _, folder = resolve_official("pretrained", cache_dir=cache)
    _, scale = load_vae(folder)
    assert scale == 0.13025


def test_vae_with_bin_weights_only(tmp_path):
    cache = tmp_path / "hub"
    add_to_cache(cache, contract.HUB_VAE_REPO, PIXELHACKER_COMMIT, VAE_CONFIG, b"{}")
    add_to_cache(cache, contract.HUB_VAE_REPO, PIXELHACKER_COMMIT,
                 f"{contract.HUB_VAE_SUBFOLDER}/diffusion_pytorch_model.bin", b"vae")
    folder = resolve_vae(cache_dir=cache)
    assert (folder / "diffusion_pytorch_model.bin").read_bytes() == b"vae"


def test_revision(cache):
    unet = resolve_unet("pretrained", cache_dir=cache, revision=MOEBIUS_COMMIT)
    assert unet.parent.parent.name == MOEBIUS_COMMIT
    add_to_cache(cache, contract.HUB_REPO, "f" * 40, UNET_FILE, b"tagged", ref="v1.0")
    assert resolve_unet("pretrained", cache_dir=cache, revision="v1.0").read_bytes() == b"tagged"
    with pytest.raises(UserError, match=r"pretrained/diffusion_pytorch_model\.bin \(revision v2\) is not in"):
        resolve_unet("pretrained", cache_dir=cache, revision="v2")


@pytest.mark.parametrize("local_files_only, why", [(False, "HF_HUB_OFFLINE"), (True, "--local-files-only")])
def test_absent_unet_is_one_clear_line(cache, local_files_only, why):
    with pytest.raises(UserError) as e:
        resolve_official("ft_ffhq", cache_dir=cache, local_files_only=local_files_only)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"hustvl/Moebius/ft_ffhq/diffusion_pytorch_model.bin is not in the Hugging Face cache "
                          f"({cache}) and offline mode is on ({why}): ")
    assert "run `moebius-edge download --variant ft_ffhq` on a machine with network access" in msg
    assert "HF_HOME" in msg


def test_absent_vae_weights(cache):
    (snapshot(cache, contract.HUB_VAE_REPO, PIXELHACKER_COMMIT) / VAE_WEIGHTS).unlink()
    with pytest.raises(UserError) as e:
        resolve_official("pretrained", cache_dir=cache)
    assert str(e.value).startswith("hustvl/PixelHacker/vae/diffusion_pytorch_model.{safetensors,bin} is not in "
                                   "the Hugging Face cache")
    assert "moebius-edge download --variant pretrained" in str(e.value)


def test_empty_cache_names_the_vae_config(tmp_path):
    cache = tmp_path / "hub"
    add_to_cache(cache, contract.HUB_REPO, MOEBIUS_COMMIT, UNET_FILE, b"unet weights")
    with pytest.raises(UserError, match=r"^hustvl/PixelHacker/vae/config\.json is not in the Hugging Face cache"):
        resolve_official("pretrained", cache_dir=cache)


def test_unknown_variant():
    with pytest.raises(UserError, match="unknown variant 'ft_coco'; choose one of pretrained, ft_places2"):
        resolve_official("ft_coco")


def run_cli(*args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "moebius_edge.cli", "download", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli(cache, tmp_path):
    # Found through HF_HUB_CACHE (no --cache-dir) ...
    ok = run_cli("--variant", "pretrained", env_extra={"HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(cache)})
    assert ok.returncode == 0, ok.stderr
    unet = snapshot(cache, contract.HUB_REPO, MOEBIUS_COMMIT) / UNET_FILE
    vae = snapshot(cache, contract.HUB_VAE_REPO, PIXELHACKER_COMMIT) / contract.HUB_VAE_SUBFOLDER
    assert f"unet weights: {unet}" in ok.stdout
    assert f"vae folder:   {vae}" in ok.stdout

    # ... and an absent variant is one line, exit code 2, no traceback.
    bad = run_cli("--variant", "ft_celebahq", "--cache-dir", cache)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("moebius-edge download: error: hustvl/Moebius/ft_celebahq/diffusion_pytorch_model.bin "
                               f"is not in the Hugging Face cache ({cache})")
    assert "`moebius-edge download --variant ft_celebahq`" in lines[0]


# --- the library's errors when the Hub is asked (a stand-in hf_hub_download; still no network) ---

def _http_error(cls, status):
    response = httpx2.Response(status, request=httpx2.Request("HEAD", "https://huggingface.co/x"))
    return cls(f"{status} error", response=response)


def _not_reachable():
    try:
        try:
            raise httpx2.ConnectError("[Errno 111] Connection refused")
        except httpx2.ConnectError as cause:
            raise errors.LocalEntryNotFoundError("cannot find the requested files") from cause
    except errors.LocalEntryNotFoundError as e:
        return e


HUB_ERRORS = [
    (_not_reachable(), "is not in the Hugging Face cache (", "and the Hub cannot be reached (ConnectError): run "),
    (_http_error(errors.RevisionNotFoundError, 404), "hustvl/Moebius has no revision 'v9' on the Hub"),
    (_http_error(errors.GatedRepoError, 401), "hustvl/Moebius is gated"),
    (_http_error(errors.RepositoryNotFoundError, 404), "hustvl/Moebius was not found on the Hub"),
    (_http_error(errors.HfHubHTTPError, 503), "downloading hustvl/Moebius/pretrained/diffusion_pytorch_model.bin "
                                              "(revision v9) failed (HTTP 503); run the command again to resume"),
    (httpx2.ReadTimeout("timed out"), "failed (ReadTimeout: timed out); run the command again to resume"),
    (OSError(28, "No space left on device"), "failed: No space left on device"),
]


@pytest.mark.parametrize("error, needles", [(e[0], e[1:]) for e in HUB_ERRORS],
                         ids=[type(e[0]).__name__ for e in HUB_ERRORS])
def test_hub_errors_become_one_line(monkeypatch, error, needles):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)

    def fake_download(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(UserError) as e:
        resolve_unet("pretrained", revision="v9")
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


def test_vae_falls_back_to_bin_when_the_hub_has_no_safetensors(monkeypatch, tmp_path):
    folder = tmp_path / "snapshots" / PIXELHACKER_COMMIT / contract.HUB_VAE_SUBFOLDER
    calls = []

    def fake_download(repo_id, filename, *, revision=None, **kwargs):
        calls.append((filename, revision))
        if filename.endswith(".safetensors"):
            raise _http_error(errors.RemoteEntryNotFoundError, 404)
        path = folder.parent / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return str(path)

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve_vae() == folder
    assert (folder / "diffusion_pytorch_model.bin").is_file()
    # the weights are pinned to the commit the config resolved to
    assert calls == [(VAE_CONFIG, None), (VAE_WEIGHTS, PIXELHACKER_COMMIT),
                     (f"{contract.HUB_VAE_SUBFOLDER}/diffusion_pytorch_model.bin", PIXELHACKER_COMMIT)]


def test_missing_huggingface_hub_names_the_extra(monkeypatch, capsys):
    from moebius_edge.cli import main

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # what the import sees without the extra
    logger = logging.getLogger("moebius_edge")  # main() configures it; leave it as found
    monkeypatch.setattr(logger, "handlers", logger.handlers[:])
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    assert main(["download", "--variant", "pretrained"]) == 2
    assert "pip install 'moebius-edge[export]'" in capsys.readouterr().err
