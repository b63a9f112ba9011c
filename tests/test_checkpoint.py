"""Strict, safe checkpoint loading (export/checkpoint.py) and `moebius-edge check-weights`.

Every refusal is checked as a ``UserError`` and through the CLI: exit code 2, one line on stderr,
no traceback. The cases of the brief run the CLI in a subprocess (started together: each pays the
torch import); the others call ``cli.main`` in-process.
"""
import hashlib
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from moebius_edge.errors import UserError  # noqa: E402
from moebius_edge.export.checkpoint import (  # noqa: E402
    count_parameters, load_removal_model, load_state_dict_file)
from moebius_edge.export.config import PRESETS  # noqa: E402
from moebius_edge.models import sha256_file  # noqa: E402

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny_weights.safetensors"
TINY_PARAMETERS = 1_160_995  # tests/data/README.md
TINY_SHA256 = "1c3d6604de61fb8ebecedb350fe055057c867d85046377ef9dea44c439183fa0"
FIRST_CONV_KEY = "diff_model.down_blocks.0.resnets.0.conv1.conv_dw.weight"
TIME_KEY = "diff_model.time_embedding.linear_1.weight"


class NotATensor:
    """A custom class: weights_only unpickling must refuse it without importing this module."""


class RunsCodeWhenUnpickled:
    """Unpickling this would create ``path``: proves the file's code never runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def tiny_sd():
    return safetensors_torch.load_file(str(TINY))


def _truncate(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_sd):
    """name -> (checkpoint, --config) for every refusal case."""
    d = tmp_path_factory.mktemp("bad")
    full_bin, full_st = d / "full.bin", d / "full.safetensors"
    torch.save(tiny_sd, full_bin)
    safetensors_torch.save_file(tiny_sd, str(full_st))
    missing = {k: v for k, v in tiny_sd.items() if k not in (FIRST_CONV_KEY, "diff_model.conv_out.bn2.running_var")}
    tiny64 = json.loads((DATA / "tiny_config.json").read_text())
    tiny64["data"]["image_size"] = 64  # latent 8: the cross-λ tables of the tiny weights have 16² rows
    (d / "tiny64.json").write_text(json.dumps(tiny64))
    saved = {
        "extra": {**tiny_sd, "extra.weight": torch.zeros(3)},
        "missing": missing,
        "shape": {**tiny_sd, TIME_KEY: torch.zeros(128, 33)},
        "custom_object": {**tiny_sd, "evil": NotATensor()},
        "runs_code": {"w": torch.zeros(2), "x": RunsCodeWhenUnpickled(d / "pwned")},
        "nested": {"state_dict": {"w": torch.zeros(2)}},
        "list": [torch.zeros(2)],
    }
    files = {}
    for name, obj in saved.items():
        torch.save(obj, d / f"{name}.bin")
        files[name] = (d / f"{name}.bin", "tiny")
    files["truncated_bin"] = (_truncate(full_bin, d / "truncated.bin"), "tiny")
    files["truncated_safetensors"] = (_truncate(full_st, d / "truncated.safetensors"), "tiny")
    files["image_size"] = (TINY, d / "tiny64.json")
    files["preset"] = (TINY, "moebius")
    files["no_file"] = (d / "nope.bin", "tiny")
    files["bad_config"] = (TINY, "nope")
    return files


def check_weights(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "moebius_edge.cli", "check-weights", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


# Through a subprocess (each pays the torch import); the rest through cli.main in-process.
SUBPROCESS_CASES = ("truncated_bin", "truncated_safetensors", "extra", "missing", "shape", "custom_object",
                    "image_size", "no_file")


@pytest.fixture(scope="module")
def cli(bad_files):
    """name -> CompletedProcess of `check-weights FILE --config CFG`, run concurrently."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(check_weights, *bad_files[name][:1], "--config", bad_files[name][1])
                   for name in SUBPROCESS_CASES}
        return {name: f.result() for name, f in futures.items()}


def cli_in_process(capsys, path, cfg):
    from moebius_edge.cli import main

    logger = logging.getLogger("moebius_edge")  # main() configures it; leave it as found
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        code = main(["check-weights", str(path), "--config", str(cfg)])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([], code, out, err)


# name -> substrings of the one error line; "{path}" is the checkpoint argument.
EXPECTED = {
    "truncated_bin": ["{path}: truncated or corrupt checkpoint ("],
    "truncated_safetensors": ["{path}: truncated or corrupt checkpoint ("],
    "extra": ["{path}: 1 unexpected key, first: extra.weight"],
    # "first" is in the model's state-dict order
    "missing": [f"{{path}}: 2 missing keys, first: {FIRST_CONV_KEY}"],
    "shape": [f"{{path}}: shape mismatch at {TIME_KEY}: file [128, 33] vs model [128, 32]"],
    "image_size": ["{path}: shape mismatch at ", "rel_pos_emb: file [256, 10, 4, 1] vs model [64, 10, 4, 1]",
                   "(and 14 more)", "image_size must match"],
    # the tiny file has no conv_shortcut at level 2 and smaller shapes everywhere
    "preset": ["{path}: 2 missing keys, first: diff_model.down_blocks.2.resnets.0.conv_shortcut.weight",
               "shape mismatch at embedding_layer.weight: file [20, 64] vs model [20, 3072]"],
    "custom_object": ["{path}: not a state dict (a pickle with a non-tensor object: ", "NotATensor",
                      "refused without running it"],
    "runs_code": ["{path}: not a state dict (a pickle with a non-tensor object: "],
    "nested": ["{path}: not a state dict (entry 'state_dict' is a dict", "save its 'state_dict' entry on its own"],
    "list": ["{path}: not a state dict (the file holds a list"],
    "no_file": ["{path}: no such file"],
    "bad_config": ["--config nope: neither a preset (moebius, tiny) nor a config file"],
}


def test_every_case_has_an_expectation(bad_files):
    assert set(EXPECTED) == set(bad_files)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_refusal_is_one_line(cli, bad_files, capsys, name):
    path, cfg = bad_files[name]
    r = cli[name] if name in cli else cli_in_process(capsys, path, cfg)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("moebius-edge check-weights: error: ")
    for needle in EXPECTED[name]:
        assert needle.format(path=path) in lines[0], lines[0]
    assert not r.stdout


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"bad_config"}))
def test_refusal_in_process(bad_files, name):
    path, cfg = bad_files[name]
    cfg = PRESETS[cfg] if cfg in PRESETS else PRESETS["tiny"].from_file(cfg)
    with pytest.raises(UserError) as e:
        load_removal_model(cfg, path)
    assert "\n" not in str(e.value)
    assert EXPECTED[name][0].format(path=path) in str(e.value)


def test_pickled_code_never_runs(bad_files):
    path, _ = bad_files["runs_code"]
    with pytest.raises(UserError):
        load_state_dict_file(path)
    assert not (path.parent / "pwned").exists()


def test_non_tensor_value_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    torch.save({"w": torch.zeros(2), "step": 3}, path)
    with pytest.raises(UserError, match=r"not a state dict \(entry 'step' is a int, not a tensor\)"):
        load_state_dict_file(path)


# --- loading that succeeds ------------------------------------------------------------------

def test_tiny_safetensors_loads_strictly(tiny_sd):
    model = load_removal_model(PRESETS["tiny"], TINY)
    assert not model.training
    assert count_parameters(model) == TINY_PARAMETERS
    got = model.state_dict()
    assert sorted(got) == sorted(tiny_sd)
    for k, v in tiny_sd.items():
        assert torch.equal(got[k], v), k


def test_tiny_bin_loads_strictly_and_casts_to_float32(tmp_path, tiny_sd):
    path = tmp_path / "diffusion_pytorch_model.bin"
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tiny_sd.items()}
    torch.save(half, path)
    sd = load_state_dict_file(path)
    assert {v.dtype for v in sd.values()} == {torch.float32, torch.int64}  # int64: num_batches_tracked
    model = load_removal_model(PRESETS["tiny"], path)
    key = "embedding_layer.weight"
    assert torch.equal(model.state_dict()[key], tiny_sd[key].half().float())


def test_cli_success_prints_parameters_and_sha256(tmp_path, tiny_sd):
    path = tmp_path / "model.bin"
    torch.save(tiny_sd, path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        st = pool.submit(check_weights, TINY, "--config", "tiny")
        pt = pool.submit(check_weights, path, "--config", DATA / "tiny_config.json")
        st, pt = st.result(), pt.result()
    for r in (st, pt):
        assert r.returncode == 0, r.stderr
        assert "parameters: 1,160,995" in r.stdout
        assert "Traceback" not in r.stderr
    assert f"sha256:     {TINY_SHA256}" in st.stdout
    assert f"sha256:     {hashlib.sha256(path.read_bytes()).hexdigest()}" in pt.stdout


def test_sha256_file_streams():
    assert sha256_file(TINY) == TINY_SHA256


def test_missing_torch_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees without the extra
    r = cli_in_process(capsys, TINY, "tiny")
    assert r.returncode == 2
    assert "pip install 'moebius-edge[export]'" in r.stderr
