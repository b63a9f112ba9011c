"""Resolving files through the Hugging Face cache, offline, against a fake cache built in
tmp_path: the official weights (export/hub.py, `moebius-edge download`) and models folders named
by a repo id (runtime/hub.py, `run --models owner/name`).

The fake cache has the layout huggingface_hub writes:
``models--<org>--<name>/{refs/<branch>, blobs/<sha256>, snapshots/<commit>/<path> -> blob}``.
HF_HUB_OFFLINE is on unless a test turns it off; those then either replace the library's download
function or point HF_ENDPOINT at a closed local port, so nothing tries the network.
"""
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
httpx2 = pytest.importorskip("httpx2")  # huggingface_hub's HTTP client
import huggingface_hub  # noqa: E402
from huggingface_hub import constants as hf_constants  # noqa: E402
from huggingface_hub import errors  # noqa: E402

import moebius_edge.hub  # noqa: E402
from moebius_edge import contract  # noqa: E402
from moebius_edge.errors import UserError  # noqa: E402
from moebius_edge.export.hub import resolve_official, resolve_unet, resolve_vae  # noqa: E402
from moebius_edge.hub import resolve_models  # noqa: E402

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


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
# What `make demo` users and owners of a checkpoint are pointed to when the Hub is out of reach.
WAYS_FORWARD = ("`moebius-edge download --variant {variant}` on a machine with network access",
                "`moebius-edge export --unet-weights FILE --vae DIR`", "`make demo`")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import time; the env var is for subprocesses.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def reachable_hub(monkeypatch):
    """Online, as far as the reachability check can tell (tests that replace the downloads)."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(moebius_edge.hub, "hub_unreachable", lambda *a, **k: None)


@pytest.fixture
def closed_port():
    """A local TCP port that refuses connections (bound, never listening) while the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def unreachable_hub(monkeypatch, closed_port):
    """Online mode, and HF_ENDPOINT a port that refuses connections: the Hub cannot be reached."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    endpoint = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # for subprocesses
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    return closed_port


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


def test_not_cached_names_the_ways_forward(cache):
    with pytest.raises(UserError) as e:
        resolve_official("ft_places2", cache_dir=cache)
    for way in WAYS_FORWARD:
        assert way.format(variant="ft_places2") in str(e.value)


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
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "moebius_edge.cli", "download", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def assert_one_line_error(proc, seconds, start):
    """Exit code 2, one line on stderr (no traceback, no retry chatter), the line starting with
    ``start``, within 5 s (huggingface_hub's own retries take ~25 s)."""
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(start), lines[0]
    assert seconds < 5, f"{seconds:.1f} s"
    return lines[0]


def test_cli_offline_is_one_fast_line_with_the_ways_forward(tmp_path):
    t0 = time.perf_counter()
    proc = run_cli("--variant", "ft_ffhq", "--cache-dir", tmp_path / "empty")
    line = assert_one_line_error(proc, time.perf_counter() - t0, "moebius-edge download: error: hustvl/Moebius/")
    assert "offline mode is on (HF_HUB_OFFLINE)" in line
    for way in WAYS_FORWARD:
        assert way.format(variant="ft_ffhq") in line


def test_cli_unreachable_hub_is_one_fast_line(unreachable_hub, tmp_path):
    t0 = time.perf_counter()
    proc = run_cli("--variant", "pretrained", "--cache-dir", tmp_path / "empty", env_extra={"HF_HUB_OFFLINE": "0"})
    line = assert_one_line_error(proc, time.perf_counter() - t0, "moebius-edge download: error: hustvl/Moebius/")
    assert f"the Hub cannot be reached (127.0.0.1:{unreachable_hub}: Connection refused)" in line
    assert "Retry" not in proc.stdout + proc.stderr


def test_unreachable_hub_resolves_from_the_cache_at_once(unreachable_hub, cache):
    t0 = time.perf_counter()
    unet, vae = resolve_official("pretrained", cache_dir=cache)
    assert time.perf_counter() - t0 < 5
    assert unet.read_bytes() == b"unet weights" and (vae / "config.json").is_file()


def test_reachability_check_goes_through_the_proxy(monkeypatch, closed_port):
    for name in (*PROXY_VARIABLES, "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(hf_constants, "ENDPOINT", "https://huggingface.co")
    assert moebius_edge.hub.hub_unreachable() == f"127.0.0.1:{closed_port} (proxy): Connection refused"


def test_reachability_check_is_bounded(monkeypatch, unreachable_hub):
    def hanging_resolver(*args, **kwargs):  # a resolver that never answers: getaddrinfo has no timeout
        time.sleep(3)
        raise OSError("gave up")

    monkeypatch.setattr(moebius_edge.hub.socket, "create_connection", hanging_resolver)
    t0 = time.perf_counter()
    assert moebius_edge.hub.hub_unreachable(timeout=0.2) == f"127.0.0.1:{unreachable_hub}: no answer within 0.2 s"
    assert time.perf_counter() - t0 < 1


HEAVY = ("torch", "diffusers", "onnx", "onnxscript", "onnxsim", "safetensors")


def test_download_imports_no_torch(cache):
    """`moebius-edge download` needs the hub extra only: it works with torch & co. unimportable."""
    code = ("import sys\n"
            f"for name in {HEAVY!r}: sys.modules[name] = None  # what imports see without the extra\n"
            "from moebius_edge.cli import main\n"
            f"code = main(['download', '--variant', 'pretrained', '--cache-dir', {str(cache)!r}])\n"
            f"print(code, sorted(m for m in {HEAVY!r} if sys.modules.get(m) is not None))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stdout + proc.stderr


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
def test_hub_errors_become_one_line(monkeypatch, reachable_hub, error, needles):
    def fake_download(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(UserError) as e:
        resolve_unet("pretrained", revision="v9")
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


def test_vae_falls_back_to_bin_when_the_hub_has_no_safetensors(monkeypatch, reachable_hub, tmp_path):
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
    assert "pip install 'moebius-edge[hub]'" in capsys.readouterr().err


# --- run --models owner/name: a models folder on the Hub (runtime/hub.py) ---

MODELS_REPO = "someuser/moebius-onnx"
MODELS_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def models_cache(tmp_path):
    cache = tmp_path / "hub"
    for name in (contract.MANIFEST_FILE, *(g.file for g in contract.GRAPHS)):
        add_to_cache(cache, MODELS_REPO, MODELS_COMMIT, name, f"{name} bytes".encode())
    add_to_cache(cache, MODELS_REPO, "e" * 40, contract.MANIFEST_FILE, b"tagged", ref="v1")
    return cache


@pytest.mark.parametrize("spec", [MODELS_REPO, f"hf://{MODELS_REPO}", f"{MODELS_REPO}@{MODELS_COMMIT}",
                                  f"hf://{MODELS_REPO}@main"])
def test_models_from_the_cache(models_cache, spec):
    folder = resolve_models(spec, cache_dir=models_cache)
    assert folder == snapshot(models_cache, MODELS_REPO, MODELS_COMMIT)
    assert (folder / contract.UNET.file).read_bytes() == b"unet.onnx bytes"
    assert resolve_models(spec, cache_dir=models_cache, local_files_only=True) == folder


def test_models_revision_tag(models_cache):
    folder = resolve_models(f"{MODELS_REPO}@v1", cache_dir=models_cache)
    assert (folder / contract.MANIFEST_FILE).read_bytes() == b"tagged"


def test_an_existing_local_folder_wins(models_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / MODELS_REPO).mkdir(parents=True)
    assert resolve_models(MODELS_REPO, cache_dir=models_cache) == Path(MODELS_REPO)
    # hf:// always means the Hub
    assert resolve_models(f"hf://{MODELS_REPO}", cache_dir=models_cache).parent.name == "snapshots"


@pytest.mark.parametrize("spec", ["models", "./out/models", "/no/such/models", "a/b/c", "../x/y", "dir\\sub"])
def test_other_strings_are_local_paths(tmp_path, spec):
    assert resolve_models(spec, cache_dir=tmp_path) == Path(spec)


def test_a_local_folder_needs_no_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "models").mkdir(parents=True)
    assert resolve_models("out/models") == Path("out/models")
    with pytest.raises(UserError, match=r"^someuser/x is not a local folder, and fetching the Hugging Face "
                                        r"repository someuser/x needs huggingface_hub \(not installed\): "
                                        r"pip install 'moebius-edge\[hub\]'$"):
        resolve_models("someuser/x")


@pytest.mark.parametrize("local_files_only, why", [(False, "HF_HUB_OFFLINE"), (True, "--local-files-only")])
def test_missing_models_repo_is_one_clear_line(models_cache, local_files_only, why):
    with pytest.raises(UserError) as e:
        resolve_models("someuser/other-models", cache_dir=models_cache, local_files_only=local_files_only)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("someuser/other-models is not a local folder, and someuser/other-models is not in the "
                          f"Hugging Face cache ({models_cache}) and offline mode is on ({why}): ")
    assert "`hf download someuser/other-models`" in msg


def test_missing_models_revision(models_cache):
    with pytest.raises(UserError, match=r"^someuser/moebius-onnx@v2 is not in the Hugging Face cache"):
        resolve_models(f"hf://{MODELS_REPO}@v2", cache_dir=models_cache)


def test_models_repo_without_manifest(tmp_path):
    cache = tmp_path / "hub"
    add_to_cache(cache, "someuser/weights", MODELS_COMMIT, "model.safetensors", b"w")
    with pytest.raises(UserError, match=r"^the Hugging Face repository someuser/weights has no manifest\.json "
                                        r"at its top .*: it is not a models folder"):
        resolve_models("someuser/weights", cache_dir=cache)


def test_bad_hub_uri():
    with pytest.raises(UserError, match=r"^hf://someuser is not a Hugging Face repository: write hf://owner/name"):
        resolve_models("hf://someuser")


MODELS_HUB_ERRORS = [
    (_http_error(errors.RepositoryNotFoundError, 404),
     "someuser/nope is not a local folder, and someuser/nope is not a repository on the Hugging Face Hub"),
    (_http_error(errors.RevisionNotFoundError, 404), "someuser/nope has no revision 'v9' on the Hub"),
    (_http_error(errors.GatedRepoError, 401), "someuser/nope is gated"),
    (_http_error(errors.HfHubHTTPError, 503), "downloading someuser/nope@v9 failed (HTTP 503); run the command again to resume"),
    (httpx2.ReadTimeout("timed out"), "downloading someuser/nope@v9 failed (ReadTimeout: timed out)"),
    (_not_reachable(), "and the Hub cannot be reached (ConnectError): fetch it where the Hub is reachable"),
]


@pytest.mark.parametrize("error, needle", MODELS_HUB_ERRORS, ids=[type(e[0]).__name__ for e in MODELS_HUB_ERRORS])
def test_models_hub_errors_become_one_line(monkeypatch, reachable_hub, tmp_path, error, needle):
    def fake_snapshot_download(*args, **kwargs):
        assert kwargs["local_files_only"] is False
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(UserError) as e:
        resolve_models("someuser/nope@v9" if "v9" in needle else "someuser/nope", cache_dir=tmp_path)
    assert "\n" not in str(e.value)
    assert needle in str(e.value)


def test_models_with_an_unreachable_hub(unreachable_hub, models_cache):
    t0 = time.perf_counter()
    assert resolve_models(MODELS_REPO, cache_dir=models_cache) == snapshot(models_cache, MODELS_REPO, MODELS_COMMIT)
    with pytest.raises(UserError, match=r"and the Hub cannot be reached \(127\.0\.0\.1:\d+: Connection refused\)"):
        resolve_models("someuser/other-models", cache_dir=models_cache)
    assert time.perf_counter() - t0 < 5


def test_resolve_models_imports_no_torch(models_cache):
    code = ("import sys\n"
            f"for name in {HEAVY!r}: sys.modules[name] = None  # what imports see without the extras\n"
            "from moebius_edge.hub import resolve_models\n"
            f"print(resolve_models({MODELS_REPO!r}, cache_dir={str(models_cache)!r}))\n"
            f"print(sorted(m for m in {HEAVY!r} if sys.modules.get(m) is not None))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(snapshot(models_cache, MODELS_REPO, MODELS_COMMIT)), "[]"]


def test_run_with_a_models_repo_from_the_cache(tiny_models_dir, golden, tmp_path):
    """`run --models owner/name` on a real exported folder in a Hugging Face cache (a snapshot
    of links into the blob store), offline, on a base install: the same bytes as the local folder,
    in low-memory mode too (its streamed decoder is a sub-folder of links)."""
    from PIL import Image

    cache = tmp_path / "hub"
    for path in sorted(p for p in tiny_models_dir.rglob("*") if p.is_file()):
        name = path.relative_to(tiny_models_dir).as_posix()
        add_to_cache(cache, MODELS_REPO, MODELS_COMMIT, name, path.read_bytes())
    Image.fromarray(golden["image_u8"]).save(tmp_path / "img.png")
    Image.fromarray(golden["mask_u8"]).save(tmp_path / "mask.png")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    outs = {}
    for name, models, extra in (("hub", MODELS_REPO, []), ("local", str(tiny_models_dir), []),
                                ("hub-low", MODELS_REPO, ["--low-memory"]),
                                ("local-low", str(tiny_models_dir), ["--low-memory"])):
        out = tmp_path / f"{name}.png"
        proc = subprocess.run([sys.executable, "-m", "moebius_edge.cli", "run", str(tmp_path / "img.png"),
                               str(tmp_path / "mask.png"), "--models", models, "--steps", "3", "-o", str(out),
                               *extra], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        outs[name] = out.read_bytes()
    assert outs["hub"] == outs["local"] and outs["hub-low"] == outs["local-low"]
    from moebius_edge.models import open_models
    from moebius_edge.streamed_decoder import find_plan

    snapshot = cache / ("models--" + MODELS_REPO.replace("/", "--")) / "snapshots" / MODELS_COMMIT
    assert find_plan(open_models(snapshot)) is not None  # the low-memory runs streamed their decode
