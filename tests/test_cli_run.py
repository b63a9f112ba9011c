"""`moebius-edge run` and `moebius-edge info` on the tiny exported graphs.

Most cases call ``cli.main`` in-process (fast); one runs the CLI in a subprocess in which torch,
diffusers, onnx and onnxsim cannot be imported, as on a base install.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moebius_edge import cli, contract

DATA = Path(__file__).parent / "data"
ORIENTATION, MAKE = 0x0112, 0x010F


def _photo(h, w, seed=0):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 90 * np.sin(x / 17.0), 60 + 150 * y / h, 200 - 120 * x / w], -1)
    img += np.random.default_rng(seed).normal(0, 5, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _mask(h, w, box):
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return m


@pytest.fixture
def pair(tmp_path):
    """A 200×150 photo and its mask, as PNG files."""
    Image.fromarray(_photo(150, 200)).save(tmp_path / "photo.png")
    Image.fromarray(_mask(150, 200, (80, 50, 120, 90))).save(tmp_path / "mask.png")
    return tmp_path / "photo.png", tmp_path / "mask.png"


def run(capsys, *argv):
    rc = cli.main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("moebius-edge run: error: "), err
    return lines[-1]


# ---------------------------------------------------------------------------------------------


def test_cli_without_torch_reproduces_the_golden(tiny_models_dir, golden, tmp_path):
    Image.fromarray(golden["image_u8"]).save(tmp_path / "img.png")
    Image.fromarray(golden["mask_u8"]).save(tmp_path / "mask.png")
    code = ("import sys\n"
            "for m in ('torch', 'diffusers', 'onnx', 'onnxsim'): sys.modules[m] = None\n"
            "from moebius_edge.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "assert not [m for m in ('torch', 'diffusers', 'onnx', 'onnxsim') if sys.modules.get(m)]\n"
            "sys.exit(rc)\n")
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", str(tmp_path / "img.png"), str(tmp_path / "mask.png"),
         "--models", str(tiny_models_dir), "--noise-file", str(DATA / "pipeline_case.npz"), "--json",
         "--fidelity", "official"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["output"] == str(tmp_path / "img.inpainted.png")
    assert record["steps"] == 19 and record["seconds"]["total"] > 0 and "denoise" in record["seconds"]
    assert record["fidelity"] == "official" and record["crops"][0]["coverage"]["unseen_px"] > 0
    assert "running on CPUExecutionProvider" in proc.stderr
    out = np.asarray(Image.open(tmp_path / "img.inpainted.png"))
    diff = np.abs(out.astype(int) - golden["output_u8"])
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999


def test_default_output_and_overwrite_rules(tiny_models_dir, pair, capsys):
    photo, mask = pair
    rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "--steps", 5)
    out = photo.with_name("photo.inpainted.png")
    assert rc == 0 and out.is_file(), err
    before = out.read_bytes()
    rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "--steps", 5)
    assert rc == 2 and "--force" in _error_line(err) and out.read_bytes() == before
    rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "--steps", 5, "--force", "--seed", 1)
    assert rc == 0 and out.read_bytes() != before
    original = photo.read_bytes()
    rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "-o", photo, "--force")
    assert rc == 2 and "input" in _error_line(err) and photo.read_bytes() == original
    assert not [p for p in photo.parent.iterdir() if p.name.startswith(".")]  # no temporary files


def test_same_seed_same_bytes(tiny_models_dir, pair, capsys):
    photo, mask = pair
    outs = []
    for name in ("a.png", "b.png"):
        rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "-o", photo.parent / name, "--seed", 4)
        assert rc == 0, err
        outs.append((photo.parent / name).read_bytes())
    assert outs[0] == outs[1]


def test_crop_keeps_size_and_untouched_pixels(tiny_models_dir, tmp_path, capsys):
    h, w = 260, 420
    img = _photo(h, w, seed=3)
    Image.fromarray(img).save(tmp_path / "big.png")
    Image.fromarray(_mask(h, w, (300, 40, 340, 70))).save(tmp_path / "m.png")
    rc, out, err = run(capsys, tmp_path / "big.png", tmp_path / "m.png", "--models", tiny_models_dir, "--json")
    assert rc == 0, err
    (c,) = json.loads(out)["crops"]
    x0, y0, x1, y1 = c["box"]
    res = np.asarray(Image.open(tmp_path / "big.inpainted.png"))
    assert res.shape == img.shape
    outside = np.ones((h, w), bool)
    outside[max(y0, 0):y1, max(x0, 0):x1] = False
    assert np.array_equal(res[outside], img[outside])
    assert np.abs(res[40:70, 300:340].astype(int) - img[40:70, 300:340]).mean() > 5


def test_exif_rotated_jpeg(tiny_models_dir, tmp_path, capsys):
    h, w = 140, 200  # displayed size (landscape); stored rotated as portrait
    up = _photo(h, w, seed=5)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[MAKE] = "TestCam"
    Image.fromarray(np.rot90(up, 1)).save(tmp_path / "p.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(_mask(h, w, (20, 20, 50, 50))).save(tmp_path / "m.png")  # painted on the displayed photo
    rc, _, err = run(capsys, tmp_path / "p.jpg", tmp_path / "m.png", "--models", tiny_models_dir, "--quality", 97)
    assert rc == 0, err
    res = Image.open(tmp_path / "p.inpainted.jpg")
    assert res.size == (w, h) and res.format == "JPEG"
    e = res.getexif()
    assert ORIENTATION not in e and e[MAKE] == "TestCam"
    a = np.asarray(res).astype(int)
    assert np.abs(a[100:, 120:] - up[100:, 120:]).mean() < 4  # far from the hole: only JPEG noise
    assert np.abs(a[20:50, 20:50] - up[20:50, 20:50]).mean() > 5


def test_rgba_and_16_bit_png(tiny_models_dir, tmp_path, capsys):
    import cv2

    h, w = 130, 150
    rgb = _photo(h, w, seed=6)
    alpha = np.tile(np.linspace(50, 255, w).astype(np.uint8), (h, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    Image.fromarray(_mask(h, w, (60, 60, 90, 90))).save(tmp_path / "m.png")
    rc, _, err = run(capsys, tmp_path / "a.png", tmp_path / "m.png", "--models", tiny_models_dir)
    assert rc == 0, err
    res = np.asarray(Image.open(tmp_path / "a.inpainted.png"))
    assert res.shape == (h, w, 4) and np.array_equal(res[..., 3], alpha)
    assert np.array_equal(res[:30, :, :3], rgb[:30])

    g16 = (rgb.astype(np.uint16) * 257)[..., ::-1]
    cv2.imwrite(str(tmp_path / "c16.png"), g16)
    rc, _, err = run(capsys, tmp_path / "c16.png", tmp_path / "m.png", "--models", tiny_models_dir,
                     "-o", tmp_path / "c16.webp")
    assert rc == 0, err
    assert Image.open(tmp_path / "c16.webp").size == (w, h)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, no output file


def _no_outputs(folder: Path):
    return not [p for p in folder.iterdir() if ".inpainted" in p.name or p.name.startswith(".")]


@pytest.mark.parametrize("case", ["missing-image", "missing-mask", "junk-image", "junk-mask", "aspect",
                                  "too-many-pixels", "empty-mask", "bad-extension", "bad-steps"])
def test_bad_input(tiny_models_dir, pair, capsys, case):
    photo, mask = pair
    folder = photo.parent
    args = [photo, mask, "--models", tiny_models_dir]
    expect = {"missing-image": "image not found", "missing-mask": "mask not found",
              "junk-image": "cannot read image", "junk-mask": "cannot read mask", "aspect": "aspect",
              "too-many-pixels": "max-pixels", "empty-mask": "no hole", "bad-extension": "extension",
              "bad-steps": "steps"}[case]
    if case == "missing-image":
        args[0] = folder / "nope.png"
    elif case == "missing-mask":
        args[1] = folder / "nope.png"
    elif case == "junk-image":
        (folder / "junk.png").write_bytes(b"\x89PNG but not really")
        args[0] = folder / "junk.png"
    elif case == "junk-mask":
        (folder / "junk.png").write_bytes(b"GIF89a....")
        args[1] = folder / "junk.png"
    elif case == "aspect":
        Image.fromarray(np.zeros((150, 150), np.uint8)).save(folder / "sq.png")
        args[1] = folder / "sq.png"
    elif case == "too-many-pixels":
        args += ["--max-pixels", 10_000]
    elif case == "empty-mask":
        Image.fromarray(np.full((150, 200), 127, np.uint8)).save(folder / "empty.png")
        args[1] = folder / "empty.png"
    elif case == "bad-extension":
        args += ["-o", folder / "out.gif"]
    elif case == "bad-steps":
        args += ["--steps", 0]
    rc, out, err = run(capsys, *args)
    assert rc == 2
    assert expect in _error_line(err)
    assert out == ""
    assert _no_outputs(folder)


def test_empty_mask_can_copy_the_input(tiny_models_dir, pair, capsys):
    photo, _ = pair
    Image.fromarray(np.zeros((150, 200), np.uint8)).save(photo.parent / "empty.png")
    rc, _, err = run(capsys, photo, photo.parent / "empty.png", "--models", tiny_models_dir, "--allow-empty-mask")
    assert rc == 0 and "no hole" in err
    assert photo.with_name("photo.inpainted.png").read_bytes() == photo.read_bytes()
    rc, _, err = run(capsys, photo, photo.parent / "empty.png", "--models", tiny_models_dir, "--allow-empty-mask",
                     "-o", photo.parent / "copy.jpg")
    assert rc == 0 and Image.open(photo.parent / "copy.jpg").size == (200, 150)


def test_full_mask_warns_and_runs(tiny_models_dir, pair, capsys):
    photo, _ = pair
    Image.fromarray(np.full((75, 100), 255, np.uint8)).save(photo.parent / "full.png")  # half size, same aspect
    rc, _, err = run(capsys, photo, photo.parent / "full.png", "--models", tiny_models_dir, "--steps", 4)
    assert rc == 0 and "whole image" in err
    assert photo.with_name("photo.inpainted.png").is_file()


def test_inverted_dilated_and_alpha_masks(tiny_models_dir, pair, capsys):
    photo, mask = pair
    d = photo.parent
    common = ["--models", tiny_models_dir, "--steps", 3]

    def changed(name):
        return np.any(np.asarray(Image.open(d / name)) != np.asarray(Image.open(photo)), axis=2)

    rc, _, err = run(capsys, photo, mask, *common, "-o", d / "plain.png")
    assert rc == 0, err
    rc, _, err = run(capsys, photo, mask, *common, "--dilate", 6, "-o", d / "dilated.png")
    assert rc == 0, err
    # --dilate grows the hole: more pixels change, and every pixel the plain run changed.
    assert changed("dilated.png").sum() > changed("plain.png").sum()
    assert not (changed("plain.png") & ~changed("dilated.png")).any()
    # An inverted mask with --invert-mask is the same hole: the same bytes as the plain mask.
    Image.fromarray(255 - np.asarray(Image.open(mask))).save(d / "inv.png")
    rc, _, err = run(capsys, photo, d / "inv.png", *common, "--invert-mask", "-o", d / "inverted.png")
    assert rc == 0, err
    assert (d / "inverted.png").read_bytes() == (d / "plain.png").read_bytes()
    # Without --invert-mask the inverted file means "fill everything but the box": another result.
    rc, _, err = run(capsys, photo, d / "inv.png", *common, "-o", d / "not_inverted.png")
    assert rc == 0, err
    assert changed("not_inverted.png").sum() > changed("plain.png").sum()
    # The same strokes on a transparent layer: the alpha channel is the mask.
    rgba = np.zeros((150, 200, 4), np.uint8)
    rgba[..., 3] = np.asarray(Image.open(mask))
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    for channel in ("alpha", "auto"):
        rc, _, err = run(capsys, photo, d / "alpha.png", *common, "--mask-channel", channel, "-o", d / f"out_{channel}.png")
        assert rc == 0, err
        assert (d / f"out_{channel}.png").read_bytes() == (d / "plain.png").read_bytes()


@pytest.mark.parametrize("case", ["no-models", "contract-version", "precision"])
def test_bad_models(tiny_models_dir, pair, tmp_path, capsys, case):
    import shutil

    photo, mask = pair
    models = tmp_path / "models"
    args = [photo, mask, "--models", models]
    if case == "contract-version":
        shutil.copytree(tiny_models_dir, models)
        m = json.loads((models / contract.MANIFEST_FILE).read_text())
        m["contract_version"] = 999
        (models / contract.MANIFEST_FILE).write_text(json.dumps(m))
    elif case == "precision":
        args = [photo, mask, "--models", tiny_models_dir, "--precision", "int8"]
    rc, _, err = run(capsys, *args)
    assert rc == 2
    line = _error_line(err)
    assert {"no-models": "models folder not found", "contract-version": "contract version",
            "precision": "int8 is not exported"}[case] in line
    assert _no_outputs(photo.parent)


# ---------------------------------------------------------------------------------------------
# Batch


def test_batch(tiny_models_dir, tmp_path, capsys):
    images, masks, outdir = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    for i, name in enumerate(["a", "b", "c", "d"]):
        Image.fromarray(_photo(100 + 10 * i, 140, seed=i)).save(images / f"{name}.png")
    Image.fromarray(_mask(100, 140, (30, 30, 60, 60))).save(masks / "a.png")
    Image.fromarray(_mask(110, 140, (30, 30, 60, 60))).save(masks / "b.jpg")
    (masks / "d.png").write_bytes(b"broken")  # d: unreadable mask; c: no mask at all
    (images / "notes.txt").write_text("not an image")
    rc, out, err = run(capsys, images, "--masks", masks, "-o", outdir, "--models", tiny_models_dir, "--steps", 3,
                       "--json")
    assert rc == 2
    assert sorted(p.name for p in outdir.iterdir()) == ["a.png", "b.png"]
    report = json.loads(out)
    assert [Path(r["output"]).name for r in report["results"]] == ["a.png", "b.png"]
    assert sorted(Path(s["input"]).name for s in report["skipped"]) == ["c.png", "d.png"]
    assert "skipped c.png" in err and "skipped d.png" in err and "2 of 4 images skipped" in err

    # One mask for every photo (same aspect ratio within 1 %).
    Image.fromarray(_mask(100, 140, (10, 10, 30, 30))).save(tmp_path / "one.png")
    for name in ("c", "d"):
        (images / f"{name}.png").unlink()
    rc, _, err = run(capsys, images, "--masks", tmp_path / "one.png", "-o", outdir, "--models", tiny_models_dir,
                     "--steps", 3)
    assert rc == 2 and "exists" in err  # a.png exists already; b.png has another aspect ratio
    rc, _, err = run(capsys, images, "--masks", tmp_path / "one.png", "-o", outdir, "--models", tiny_models_dir,
                     "--steps", 3, "--force")
    assert rc == 2 and "aspect" in err


def test_batch_argument_errors(tiny_models_dir, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    rc, _, err = run(capsys, tmp_path / "imgs", "--models", tiny_models_dir, "-o", tmp_path / "o")
    assert rc == 2 and "--masks" in _error_line(err)
    rc, _, err = run(capsys, tmp_path / "imgs", "--masks", tmp_path / "imgs", "--models", tiny_models_dir)
    assert rc == 2 and "-o" in _error_line(err)
    Image.fromarray(_mask(20, 20, (5, 5, 10, 10))).save(tmp_path / "x.png")
    rc, _, err = run(capsys, tmp_path / "imgs", "--masks", tmp_path / "x.png", "-o", tmp_path / "imgs",
                     "--models", tiny_models_dir)
    assert rc == 2 and "output folder is the input folder" in _error_line(err)
    rc, _, err = run(capsys, tmp_path / "imgs", "--masks", tmp_path / "x.png", "-o", tmp_path / "imgs" / ".." / "imgs",
                     "--models", tiny_models_dir)
    assert rc == 2 and "output folder is the input folder" in _error_line(err)
    rc, _, err = run(capsys, tmp_path / "imgs", "--masks", tmp_path / "imgs", "-o", tmp_path / "o",
                     "--models", tiny_models_dir)
    assert rc == 2 and "masks folder is the images folder" in _error_line(err)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# info


def test_info(tiny_models_dir, capsys, tmp_path, monkeypatch):
    assert cli.main(["info", "--models", str(tiny_models_dir)]) == 0
    out = capsys.readouterr().out
    assert "CPUExecutionProvider" in out and "fp32" in out and "unet.onnx" in out and "provenance" in out
    assert cli.main(["info", "--models", str(tiny_models_dir), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    v = d["models"]["variants"]["fp32"]
    assert v["compatible"] and v["image_size"] == 128 and set(v["graphs"]) == {g.key for g in contract.GRAPHS}
    monkeypatch.chdir(tmp_path)
    assert cli.main(["info"]) == 0
    assert "models: none" in capsys.readouterr().out
    assert cli.main(["info", "--models", str(tmp_path / "nope")]) == 2


def test_info_warns_when_two_onnxruntime_builds_are_installed(tiny_models_dir, capsys, monkeypatch):
    from moebius_edge.commands import info

    monkeypatch.setattr(info, "installed_ort_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    assert cli.main(["info", "--models", str(tiny_models_dir)]) == 0
    err = capsys.readouterr().err
    assert "onnxruntime and onnxruntime-gpu" in err and "keep one" in err
    monkeypatch.setattr(info, "installed_ort_distributions", lambda: ["onnxruntime"])
    assert cli.main(["info", "--models", str(tiny_models_dir)]) == 0
    assert "keep one" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Issue 9 §1: inputs are never harmed, and work is not wasted


@pytest.mark.parametrize("spelling", ["mask", "dotdot", "symlink", "hardlink", "photo-hardlink", "noise-file"])
def test_force_never_replaces_an_input(tiny_models_dir, pair, capsys, spelling):
    import os
    import shutil

    photo, mask = pair
    d = photo.parent
    target, extra = mask, []
    if spelling == "mask":
        out = mask
    elif spelling == "dotdot":
        (d / "sub").mkdir()
        out = d / "sub" / ".." / "mask.png"
    elif spelling == "symlink":
        out = d / "link.png"
        out.symlink_to(mask)
    elif spelling == "hardlink":
        out = d / "hard.png"
        os.link(mask, out)
    elif spelling == "photo-hardlink":
        target, out = photo, d / "hard.png"
        os.link(photo, out)
    else:  # an .npz named like an image: np.load reads it by its content
        target = out = d / "noise.png"
        shutil.copyfile(DATA / "pipeline_case.npz", out)
        extra = ["--noise-file", out]
    before = target.read_bytes()
    rc, _, err = run(capsys, photo, mask, "--models", tiny_models_dir, "--steps", 2, "-o", out, "--force", *extra)
    assert rc == 2 and "input" in _error_line(err)
    assert target.read_bytes() == before and out.samefile(target)
    assert not [p for p in d.iterdir() if p.name.startswith(".")]


def test_output_folder_is_checked_before_the_models_open(pair, tmp_path, capsys, monkeypatch):
    import os

    photo, mask = pair
    nope = tmp_path / "no-models"
    rc, _, err = run(capsys, photo, mask, "--models", nope, "-o", tmp_path / "missing" / "out.png")
    assert rc == 2 and "missing" in (line := _error_line(err)) and "does not exist" in line
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **kw: False if Path(p) == readonly else real(p, mode, *a, **kw))
    rc, _, err = run(capsys, photo, mask, "--models", nope, "-o", readonly / "out.png")
    assert rc == 2 and "not writable" in _error_line(err)
    (tmp_path / "afile").write_text("x")
    rc, _, err = run(capsys, photo, mask, "--models", nope, "-o", tmp_path / "afile" / "out.png")
    assert rc == 2 and "models folder not found" not in _error_line(err)
    assert not (tmp_path / "missing").exists() and not list(readonly.iterdir())


def _batch_folders(tmp_path, names=("a", "b", "c")):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(_photo(100, 140, seed=i)).save(images / f"{name}.png")
        Image.fromarray(_mask(100, 140, (30, 30, 60, 60))).save(masks / f"{name}.png")
    return images, masks


@pytest.mark.parametrize("spelling", ["same", "symlink"])
def test_batch_output_folder_is_never_the_masks_folder(tiny_models_dir, tmp_path, capsys, spelling):
    images, masks = _batch_folders(tmp_path)
    before = {p.name: p.read_bytes() for p in masks.iterdir()}
    outdir = masks
    if spelling == "symlink":
        outdir = tmp_path / "link"
        outdir.symlink_to(masks, target_is_directory=True)
    rc, _, err = run(capsys, images, "--masks", masks, "-o", outdir, "--models", tiny_models_dir, "--steps", 2,
                     "--force")
    assert rc == 2 and "masks folder" in _error_line(err)
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == before


def test_batch_checks_every_pair_before_the_first_inference(tiny_models_dir, tmp_path, capsys, monkeypatch):
    from moebius_edge import pipeline

    images, masks = _batch_folders(tmp_path)
    (masks / "c.png").unlink()  # c: no mask
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "b.png").write_bytes(b"a previous result")  # b: exists, no --force
    original = pipeline.Inpainter.inpaint

    def announce(self, *args, **kwargs):
        sys.stderr.write("INFERENCE\n")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline.Inpainter, "inpaint", announce)
    rc, _, err = run(capsys, images, "--masks", masks, "-o", outdir, "--models", tiny_models_dir, "--steps", 2)
    assert rc == 2 and err.count("INFERENCE") == 1
    first = err.index("INFERENCE")
    assert err.index("skipped b.png") < first and err.index("skipped c.png") < first
    assert (outdir / "b.png").read_bytes() == b"a previous result" and (outdir / "a.png").is_file()
    # An output folder that cannot be made is one line before the models are opened.
    (tmp_path / "afile").write_text("x")
    rc, _, err = run(capsys, images, "--masks", masks, "-o", tmp_path / "afile" / "out", "--models",
                     tmp_path / "no-models")
    assert rc == 2 and "afile" in (line := _error_line(err)) and "models folder not found" not in line


def test_random_weights_are_announced_and_recorded(tiny_models_dir, pair, tmp_path, capsys):
    import shutil

    photo, mask = pair
    rc, out, err = run(capsys, photo, mask, "--models", tiny_models_dir, "--steps", 2, "--seed", 3, "--json")
    assert rc == 0 and "random weights" not in err
    record = json.loads(out)
    assert record["provenance"] == "checkpoint:tiny_weights.safetensors" and record["seed"] == 3
    models = tmp_path / "random"
    shutil.copytree(tiny_models_dir, models)
    m = json.loads((models / contract.MANIFEST_FILE).read_text())
    m[contract.manifest_key(contract.META_PROVENANCE)] = contract.PROVENANCE_RANDOM_INIT + "7"
    (models / contract.MANIFEST_FILE).write_text(json.dumps(m))
    rc, out, err = run(capsys, photo, mask, "--models", models, "--steps", 2, "--json", "--force", "-q")
    assert rc == 0 and "random weights: the output is noise, not inpainting" in err
    assert json.loads(out)["provenance"] == contract.PROVENANCE_RANDOM_INIT + "7"


def test_strip_metadata(tiny_models_dir, tmp_path, capsys):
    h, w = 120, 160
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    Image.fromarray(_photo(h, w, seed=7)).save(tmp_path / "p.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(_mask(h, w, (40, 40, 70, 70))).save(tmp_path / "m.png")
    Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / "empty.png")
    common = ["--models", tiny_models_dir, "--steps", 2, "--strip-metadata"]
    rc, _, err = run(capsys, tmp_path / "p.jpg", tmp_path / "m.png", *common, "-o", tmp_path / "out.jpg")
    assert rc == 0, err
    assert MAKE not in Image.open(tmp_path / "out.jpg").getexif()
    # An empty mask copies the input, but not its metadata.
    rc, _, err = run(capsys, tmp_path / "p.jpg", tmp_path / "empty.png", *common, "--allow-empty-mask",
                     "-o", tmp_path / "copy.jpg")
    assert rc == 0, err
    copy = Image.open(tmp_path / "copy.jpg")
    assert copy.size == (w, h) and MAKE not in copy.getexif()
    assert Image.open(tmp_path / "p.jpg").getexif()[MAKE] == "TestCam"  # the input keeps it


@pytest.mark.parametrize("extra, created", [((), 1), (("--low-memory",), 3)])
def test_batch_keeps_sessions_from_photo_to_photo(tiny_models_dir, tmp_path, capsys, monkeypatch, extra, created):
    """Batch mode creates each graph's session once for all photos (seconds each at full size),
    unless --low-memory asks for the smaller peak: then once per photo, as a single run does (the
    decoder's: its streamed decoder's head and passes)."""
    from moebius_edge import session

    images, masks = _batch_folders(tmp_path)
    counts = {}
    original = session.create_session

    def counting(path, config, label="", **kw):
        counts[label] = counts.get(label, 0) + 1
        return original(path, config, label, **kw)

    monkeypatch.setattr(session, "create_session", counting)
    rc, _, _ = run(capsys, images, "--masks", masks, "-o", tmp_path / "out", "--models", tiny_models_dir,
                   "--steps", 2, *extra)
    assert rc == 0 and len(list((tmp_path / "out").iterdir())) == 3
    if extra:
        from moebius_edge.models import open_models
        from moebius_edge.streamed_decoder import find_plan

        passes = len(find_plan(open_models(tiny_models_dir)).passes)
        decoder = {f"{contract.VAE_DECODER.key} head": created}
        decoder.update({f"{contract.VAE_DECODER.key} pass {i}/{passes}": created for i in range(1, passes + 1)})
    else:
        decoder = {contract.VAE_DECODER.key: created}
    assert counts == {contract.VAE_ENCODER.key: created, contract.UNET.key: created, **decoder}
