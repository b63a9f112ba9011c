"""Issue 9 §2: every bad input is one line on stderr and exit code 2 (never rc 0, never a
traceback), found before any model is opened where the input alone tells; ``--json`` adds an
error object on stdout. Also the Python API's argument checks and ``commands.require``.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moebius_edge import cli, contract
from moebius_edge.errors import MissingExtraError, UserError


def run(capsys, *argv):
    rc = cli.main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str, command: str = "run") -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"moebius-edge {command}: error: "), err
    return lines[0]


def _no_outputs(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".inpainted" in p.name or p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# `run`: refused from the arguments (and the image's size) alone, before the models are opened:
# the models folder here does not exist, so any other order would report that instead.

BAD_ARGS = {
    "guidance-nan": (["--guidance", "nan"], "--guidance"),
    "guidance-inf": (["--guidance", "inf"], "--guidance"),
    "guidance-minus-inf": (["--guidance=-inf"], "--guidance"),
    "margin-nan": (["--margin", "nan"], "--margin"),
    "margin-inf": (["--margin", "inf"], "--margin"),
    "strength-nan": (["--strength", "nan"], "--strength"),
    "max-pixels-inf": (["--max-pixels", "inf"], "--max-pixels"),
    "max-pixels-below-one": (["--max-pixels", "0.5"], "--max-pixels"),
    "seed-negative": (["--seed", "-1"], "--seed"),
    "threads-negative": (["--threads", "-1"], "--threads"),
    "steps-too-many": (["--steps", "100000"], "--steps"),
    "strength-leaves-no-step": (["--steps", "2", "--strength", "0.01"], "no denoising step"),
    "dilate-huge": (["--dilate", "100000"], "--dilate"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_are_one_line_before_the_models_open(pair, tmp_path, capsys, case):
    photo, mask = pair
    extra, expect = BAD_ARGS[case]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rc, out, err = run(capsys, photo, mask, "--models", tmp_path / "no-models", *extra)
    assert rc == 2
    line = _one_error_line(err)
    assert expect in line and "models folder not found" not in line
    assert out == ""
    assert _no_outputs(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_dilate_up_to_the_longer_side_is_accepted(pair, tmp_path, capsys):
    photo, mask = pair
    rc, _, err = run(capsys, photo, mask, "--models", tmp_path / "no-models", "--dilate", 200)
    assert rc == 2 and "models folder not found" in _one_error_line(err)


def test_threads_are_capped_at_the_cpu_count(tiny_models_dir, pair, capsys, monkeypatch):
    from moebius_edge import pipeline

    photo, mask = pair
    seen = []
    original = pipeline.Inpainter.from_models.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs["threads"])
        kwargs["threads"] = min(kwargs["threads"], 2)  # thousands of threads would stall the test
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(pipeline.Inpainter, "from_models", classmethod(spy))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "--steps", 2, "--threads", 10000)
    assert rc == 0, err
    assert seen == [2]
    assert "--threads 10000" in err and "2" in err


def test_noise_file_without_the_four_tensors_is_refused_before_the_models_open(pair, tmp_path, capsys):
    photo, mask = pair
    np.savez(tmp_path / "noise.npz", noise_base=np.zeros((1, 4, 16, 16), np.float32))
    rc, _, err = run(capsys, photo, mask, "--models", tmp_path / "no-models", "--noise-file", tmp_path / "noise.npz")
    assert rc == 2 and "eps_posterior_image" in _one_error_line(err)


def test_noise_file_with_nan_is_refused(pair, tmp_path, capsys):
    photo, mask = pair
    shapes = {"eps_posterior_image": (1, 4, 16, 16), "eps_posterior_masked": (1, 4, 16, 16),
              "noise_base": (1, 4, 16, 16), "noise_offset_draw": (1, 4, 1, 1)}
    arrays = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    arrays["noise_base"][0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "noise.npz", **arrays)
    rc, _, err = run(capsys, photo, mask, "--models", tmp_path / "no-models", "--noise-file", tmp_path / "noise.npz")
    assert rc == 2 and "finite" in _one_error_line(err)


def test_edited_alpha_table_is_one_line(tiny_models_dir, pair, tmp_path, capsys):
    import shutil

    photo, mask = pair
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    m = json.loads((models / contract.MANIFEST_FILE).read_text())
    m[contract.MANIFEST_ALPHAS_CUMPROD][500] = 0.9999  # no longer decreasing
    (models / contract.MANIFEST_FILE).write_text(json.dumps(m))
    rc, out, err = run(capsys, photo, mask, "--models", models)
    assert rc == 2 and contract.MANIFEST_ALPHAS_CUMPROD in _one_error_line(err)
    assert out == "" and _no_outputs(tmp_path)


def test_verbosity_flags_work_after_the_subcommand(tiny_models_dir, pair, capsys):
    photo, mask = pair
    rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "--steps", 2, "-o", photo.parent / "q.png", "-q")
    assert rc == 0 and "wrote" not in err
    rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "--steps", 2, "-o", photo.parent / "v.png", "-v")
    assert rc == 0 and "wrote" in err and "SHA-256 ok" in err  # a debug line


# ---------------------------------------------------------------------------------------------
# --json on failure: the stderr line, and an error object on stdout


def test_json_failure_prints_an_error_object(pair, tmp_path, capsys):
    photo, mask = pair
    rc, out, err = run(capsys, photo, mask, "--models", tmp_path / "no-models", "--json")
    assert rc == 2
    line = _one_error_line(err)
    assert json.loads(out) == {"error": line.split("error: ", 1)[1], "exit_code": 2}


def test_json_failure_of_export(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = subprocess.run([sys.executable, "-m", "moebius_edge.cli", "export", "--random-init", "--preset", "tiny",
                        "--out", str(tmp_path / "file"), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    line = _one_error_line(r.stderr, "export")
    assert json.loads(r.stdout) == {"error": line.split("error: ", 1)[1], "exit_code": 2}
    assert (tmp_path / "file").read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------
# The Python API refuses what the CLI refuses


@pytest.mark.parametrize("kwargs", [{"guidance": math.nan}, {"guidance": math.inf}, {"margin": math.nan},
                                    {"margin": -1.0}, {"seed": -1}, {"dilate": 100000}, {"dilate": -1}])
def test_inpaint_api_refuses_bad_arguments(tiny_models_dir, kwargs):
    from moebius_edge.pipeline import Inpainter

    inp = Inpainter.from_models(tiny_models_dir, providers="cpu")
    image = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    with pytest.raises((ValueError, UserError), match=next(iter(kwargs))):
        inp.inpaint(image, mask, steps=2, **kwargs)


# ---------------------------------------------------------------------------------------------
# commands.require: a missing extra is one line; any other ImportError is a bug and keeps its
# traceback


def test_require_reports_only_the_extra_itself_as_missing(tmp_path, monkeypatch):
    from moebius_edge.commands import require

    (tmp_path / "broken_helper_mod.py").write_text("import definitely_not_installed_xyz\n")
    pkg = tmp_path / "broken_helper_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text("from broken_helper_pkg.nothere import thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError, match="pip install 'moebius-edge\\[export\\]'"):
        require("definitely_not_installed_xyz", "export")
    with pytest.raises(MissingExtraError):
        require("definitely_not_installed_xyz.sub", "export")
    with pytest.raises(ModuleNotFoundError, match="definitely_not_installed_xyz"):
        require("broken_helper_mod", "export")  # installed, but broken inside: a bug, not an extra
    with pytest.raises(ModuleNotFoundError, match="nothere"):
        require("broken_helper_pkg.job", "export")
    assert require("json", "export") is json


@pytest.mark.parametrize("missing", ["diffusers", "safetensors"])
def test_export_without_an_export_package_is_one_line(tmp_path, missing):
    code = ("import sys\n"
            f"sys.modules[{missing!r}] = None\n"
            "from moebius_edge.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "export", "--random-init", "--preset", "tiny",
                        "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    line = _one_error_line(r.stderr, "export")
    assert missing in line and "moebius-edge[export]" in line
    assert not (tmp_path / "m").exists()
