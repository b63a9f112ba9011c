"""The set-up is true on a fresh machine: `make setup` takes torch's CPU wheel from PyTorch's index
(TORCH_INDEX), CI clears that index (it reaches only its local ones), and pyproject.toml builds
without a setuptools warning.

The Makefile is checked with `make -n` (prints the commands, runs none); the build with the
installed setuptools, on a copy of the sources in tmp_path (the working tree is left alone).
"""
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _torch_pin() -> str:
    pins = [r for r in _pyproject()["project"]["optional-dependencies"]["export"] if re.match(r"torch\b", r)]
    assert len(pins) == 1 and re.fullmatch(r"torch==[\w.]+", pins[0]), pins
    return pins[0]


def _make_n(*args) -> list:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-n", "setup", "PY=python-of-the-venv", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _pip_installs(commands) -> list:
    """The pip install commands, without their leading VAR=value environment assignments."""
    commands = [c[next((i for i, w in enumerate(c) if not re.match(r"\w+=", w)), len(c)):] for c in commands]
    return [c for c in commands if c[:4] == ["python-of-the-venv", "-m", "pip", "install"]]


def test_torch_index_defaults_to_the_cpu_index_and_empty_skips_it():
    assert re.search(rf"^TORCH_INDEX \?= {re.escape(TORCH_CPU_INDEX)}$", (ROOT / "Makefile").read_text(), re.M)
    installs = _pip_installs(_make_n())
    torch_step = [c for c in installs if "--extra-index-url" in c]
    assert len(torch_step) == 1, installs
    step = torch_step[0]
    assert step[step.index("--extra-index-url") + 1] == TORCH_CPU_INDEX
    assert step[-1] == _torch_pin()  # the pin itself, so that the CPU build is the one that satisfies it
    assert float(step[step.index("--timeout") + 1]) <= 20  # an unreachable index must not stall setup
    editable = [c for c in installs if c[-2:] == ["-e", ".[export,quantize,mobile,dev,ray,bench]"]]
    assert len(editable) == 1, installs
    # torch first: the editable install then finds the pin satisfied (2.13.0+cpu matches ==2.13.0)
    assert installs.index(step) < installs.index(editable[0])

    # `make setup TORCH_INDEX=` (CI): no torch step, the same editable install
    installs = _pip_installs(_make_n("TORCH_INDEX="))
    assert not [c for c in installs if "--extra-index-url" in c or c[-1] == _torch_pin()], installs
    assert editable[0] in installs


def test_ci_clears_the_torch_index():
    commands = [shlex.split(line, comments=True) for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    setups = [c for c in commands if c[:2] == ["make", "setup"]]
    assert setups == [["make", "setup", "TORCH_INDEX="]]


def test_hub_extra_is_huggingface_hub_only():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert [re.split(r"[<>=!~ ]", r)[0] for r in extras["hub"]] == ["huggingface_hub"]
    assert set(extras["hub"]) <= set(extras["export"])  # export includes download


def test_build_has_no_setuptools_warnings(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX license strings (needs >= 77)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in sorted(set(_pyproject()["tool"]["setuptools"]["package-dir"].values())):  # every package folder
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import json, sys, warnings\n"
            "from setuptools import build_meta\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    wheel = build_meta.build_wheel(sys.argv[1])\n"
            "caught = [f'{w.category.__name__}: {str(w.message).splitlines()[0]}' for w in caught]\n"
            "print(json.dumps([wheel, caught]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel, caught = json.loads(proc.stdout.splitlines()[-1])
    assert caught == []
    names = zipfile.ZipFile(tmp_path / "dist" / wheel).namelist()
    assert {"moebius_edge/export/data/sdxl_vae_config.json", "moebius_edge/export/data/tiny_vae_config.json",
            "moebius_edge/hub.py", "moebius_edge/scale/dataset.py", "moebius_edge/commands/run_dataset.py"} <= set(names)
    metadata = zipfile.ZipFile(tmp_path / "dist" / wheel).read(next(n for n in names if n.endswith("/METADATA")))
    assert b"License-Expression: Apache-2.0" in metadata
    assert b"Provides-Extra: hub" in metadata and b"Provides-Extra: ray" in metadata
    # the mobile stage (`moebius-edge bundle`) and its extra
    assert {"moebius_edge/mobile/bundle.py", "moebius_edge/mobile/ep_probe.py", "moebius_edge/commands/bundle.py"} <= set(names)
    assert b"Provides-Extra: mobile" in metadata
