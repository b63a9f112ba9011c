"""`moebius-edge run-dataset` and ``moebius_edge.scale.inpaint_dataset`` on a local Ray (2 CPUs, no
dashboard, a small object store, usage stats off) with the tiny exported model.

Ray starts in about ten seconds here and each dataset run costs a few more, so the file runs five
datasets on Ray in all: the first run (every kind of row at once), its rerun (no Ray: every row is
skipped), --overwrite, a folder pair whose actor is killed mid-job (once on one row, every time on
another), and a pool whose actor cannot start.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moebius_edge import cli

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3  # the tiny model needs no more to be compared


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 90 * np.sin(x / (9.0 + seed)), 60 + 150 * y / h, 200 - 120 * x / w], -1)
    return np.clip(img + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8)


def _mask(h, w, box):
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return m


def _save(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    saved = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20)
    yield ray
    ray.shutdown()
    if saved is None:
        del os.environ["RAY_USAGE_STATS_ENABLED"]
    else:
        os.environ["RAY_USAGE_STATS_ENABLED"] = saved


@pytest.fixture(scope="module")
def table_job(tmp_path_factory):
    """A jobs CSV with every kind of row; ``expect`` gives each row's status and the substring of
    its error."""
    d = tmp_path_factory.mktemp("job")
    _save(d / "a" / "cat.png", _photo(100, 140, 1))
    _save(d / "b" / "cat.png", _photo(100, 140, 2))  # same file name as a/cat.png
    _save(d / "a" / "dog.jpg", _photo(90, 120, 3))
    _save(d / "m" / "cat.png", _mask(100, 140, (30, 30, 60, 60)))
    _save(d / "m" / "cat2.png", _mask(100, 140, (80, 40, 120, 80)))  # a second mask for a/cat.png
    _save(d / "m" / "dog.png", _mask(90, 120, (20, 20, 50, 40)))
    _save(d / "m" / "wide.png", _mask(100, 200, (20, 20, 50, 40)))  # another aspect ratio than the photo
    (d / "a" / "broken.png").write_bytes(b"not a png")
    lines = ["photo,mask,seed,dilate,fidelity",
             "a/cat.png,m/cat.png,3,,",
             "b/cat.png,m/cat.png,,2,",
             "a/cat.png,m/cat2.png,7,,official",
             f"{d / 'a' / 'dog.jpg'},m/dog.png,1,,",
             "a/broken.png,m/cat.png,,,",
             "a/cat.png,m/nowhere.png,,,",
             "a/cat.png,m/wide.png,,,",
             "a/dog.jpg,m/dog.png,,,bogus"]
    (d / "jobs.csv").write_text("\n".join(lines) + "\n")
    expect = [("ok", ""), ("ok", ""), ("ok", ""), ("ok", ""), ("error", "cannot read image"),
              ("error", "mask not found"), ("error", "aspect ratios differ"), ("error", "column fidelity")]
    return d, expect


@pytest.fixture(scope="module")
def first_run(tiny_models_dir, ray_local, table_job):
    from moebius_edge.scale import inpaint_dataset

    d, _ = table_job
    run = inpaint_dataset(d / "jobs.csv", tiny_models_dir, out_dir=d / "out", options={"steps": STEPS}, actors=2,
                          progress=False)
    return run


def _rows(run):
    return run.results.to_pylist()


def test_every_row_has_one_result_and_ok_rows_equal_run(first_run, table_job, tiny_models_dir, tmp_path, capsys):
    from moebius_edge.scale import schema as s

    d, expect = table_job
    rows = _rows(first_run)
    assert [r[s.ROW] for r in rows] == list(range(len(expect)))
    assert [r[s.STATUS] for r in rows] == [e[0] for e in expect], rows
    for r, (_, message) in zip(rows, expect):
        assert message in r[s.ERROR] and "\n" not in r[s.ERROR]
    ok = [r for r in rows if r[s.STATUS] == s.OK]
    assert len({r[s.OUTPUT] for r in ok}) == len(ok)  # same photo name, one photo with two masks: no collision
    assert all(Path(r[s.OUTPUT]).parent == d / "out" and Path(r[s.OUTPUT]).is_file() for r in ok)
    assert {r[s.PROVIDER] for r in ok} == {"CPUExecutionProvider"} and len({r[s.ACTOR] for r in ok}) >= 1
    assert [r[s.SEED] for r in ok] == [3, 0, 7, 1]
    assert first_run.counts() == {s.OK: 4, s.FAILED: 4, s.SKIPPED: 0}
    # Each ok row is `moebius-edge run` on it with the same options, pixel for pixel.
    row_flags = [[], ["--dilate", "2"], ["--fidelity", "official"], []]
    for i, (r, flags) in enumerate(zip(ok, row_flags)):
        ref = tmp_path / f"ref{i}{Path(r[s.OUTPUT]).suffix}"
        assert cli.main(["run", r[s.PHOTO], r[s.MASK], "-o", str(ref), "--models", str(tiny_models_dir),
                         "--steps", str(STEPS), "--seed", str(r[s.SEED]), *flags]) == 0
        assert np.array_equal(np.asarray(Image.open(r[s.OUTPUT])), np.asarray(Image.open(ref))), r[s.PHOTO]
    capsys.readouterr()


def test_rerun_skips_and_overwrite_redoes(first_run, table_job, tiny_models_dir, capsys):
    """The rerun (as a command) plans every row as skipped and starts no actor; --overwrite redoes them."""
    import pyarrow.csv
    import pyarrow.parquet as pq

    from moebius_edge.scale import schema as s

    d, _ = table_job
    out = d / "out"
    # Only the rows that succeeded: the failed ones would be tried again (they are not skipped).
    ok_rows = [i for i, r in enumerate(_rows(first_run)) if r[s.STATUS] == s.OK]
    jobs = pyarrow.csv.read_csv(d / "jobs.csv").take(ok_rows)
    pyarrow.csv.write_csv(jobs, d / "ok.csv")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".parquet"}
    argv = ["run-dataset", str(d / "ok.csv"), "--models", str(tiny_models_dir), "-o", str(out), "--steps", str(STEPS),
            "--actors", "2", "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 rows: 0 ok, 0 error, 4 skipped" in printed and "images/min" not in printed
    assert pq.read_table(out / s.RESULTS_FILE).column(s.STATUS).to_pylist() == [s.SKIPPED] * 4
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".parquet"} == before
    # A changed option changes the fingerprint: that row alone would be redone. --overwrite redoes all.
    assert cli.main([*argv, "--overwrite"]) == 0
    assert "4 rows: 4 ok, 0 error, 0 skipped" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix != ".parquet"}
    assert after.keys() == before.keys() and all(after[k] > before[k] for k in before)
    assert not (out / s.PARTIAL_DIR).exists()


def test_folder_pair_with_an_actor_killed_mid_job(tiny_models_dir, ray_local, tmp_path):
    """Photos paired with masks as `run` pairs them; the actor dies (os._exit) on its second row
    once: Ray restarts it and retries. p5 kills it every time: after the retries its block is
    dropped, not the job. Every input still has exactly one result row."""
    from moebius_edge.scale import InpaintActor, inpaint_dataset
    from moebius_edge.scale import dataset
    from moebius_edge.scale import schema as s

    photos, masks = tmp_path / "photos", tmp_path / "masks"
    for i, name in enumerate(["p1", "p2", "p3", "p4", "p5"]):
        _save(photos / f"{name}.png", _photo(80, 100, i))
        if name != "p3":
            _save(masks / f"{name}.png", _mask(80, 100, (20, 20, 50, 50)))
    marker = tmp_path / "kill-marker"
    marker.write_text("die once")
    killed = str(marker)

    class KilledOnce(InpaintActor):  # defined here, so Ray pickles it by value
        seen = 0

        def row(self, task):
            if Path(task[s.PHOTO]).name == "p5.png":
                os._exit(1)
            self.seen += 1
            if self.seen == 2:
                try:
                    os.unlink(killed)
                except FileNotFoundError:
                    pass
                else:
                    os._exit(1)
            return super().row(task)

    run = inpaint_dataset(photos, tiny_models_dir, masks=masks, out_dir=tmp_path / "out",
                          options={"steps": STEPS}, actors=1, actor=KilledOnce, progress=False)
    assert not marker.exists()  # the actor did die
    rows = _rows(run)
    assert [Path(r[s.PHOTO]).name for r in rows] == ["p1.png", "p2.png", "p3.png", "p4.png", "p5.png"]
    assert [r[s.STATUS] for r in rows] == [s.OK, s.OK, s.FAILED, s.OK, s.FAILED]
    assert "no mask named p3" in rows[2][s.ERROR]
    assert rows[4][s.ERROR] == dataset.LOST_ROW
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p1.png", "p2.png", "p4.png", s.RESULTS_FILE]
    assert len({r[s.ACTOR] for r in rows if r[s.STATUS] == s.OK}) >= 2  # a restarted actor is another process


def test_an_actor_that_cannot_start_is_one_line(tiny_models_dir, ray_local, tmp_path):
    from moebius_edge.errors import UserError
    from moebius_edge.scale import InpaintActor, inpaint_dataset

    photo = _save(tmp_path / "p.png", _photo(80, 100, 0))
    mask = _save(tmp_path / "m.png", _mask(80, 100, (20, 20, 50, 50)))

    class NoModels(InpaintActor):
        def __init__(self, settings):
            raise UserError("models folder /shared/models not found on node-7")

    with pytest.raises(UserError) as e:
        inpaint_dataset([{"photo": str(photo), "mask": str(mask)}], tiny_models_dir, out_dir=tmp_path / "out",
                        options={"steps": STEPS}, actors=1, actor=NoModels, progress=False)
    assert str(e.value) == "an actor could not start: models folder /shared/models not found on node-7"


def _error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("moebius-edge run-dataset: error: "), err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(tiny_models_dir, tmp_path, capsys):
    """Whatever fails the whole job fails before Ray starts (none of these cases needs it)."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    (tmp_path / "unknown.csv").write_text("photo,mask,precision\na.png,m.png,fp16\n")
    (tmp_path / "nomask.csv").write_text("photo\na.png\n")
    (tmp_path / "jobs.txt").write_text("photo,mask\na.png,m.png\n")
    (tmp_path / "empty.csv").write_text("photo,mask\n")
    (tmp_path / "photos").mkdir()
    good = tmp_path / "empty.csv"
    models = ["--models", str(tiny_models_dir)]
    cases = [
        ([str(tmp_path / "missing.csv"), *models], "jobs table not found"),
        ([str(tmp_path / "unknown.csv"), *models], "unknown column 'precision'"),
        ([str(tmp_path / "nomask.csv"), *models], "no 'mask' column"),
        ([str(tmp_path / "jobs.txt"), *models], "unknown file type"),
        ([str(good), *models], "has no rows"),
        ([str(tmp_path / "photos"), *models], "--masks"),
        ([str(good), *models, "--actors", "0"], "--actors"),
        ([str(good), *models, "--cpus-per-actor", "0"], "--cpus-per-actor"),
        ([str(good), *models, "--steps", "0"], "--steps"),
        ([str(good), "--models", str(tmp_path / "no-models")], "models folder"),
    ]
    for argv, message in cases:
        rc = cli.main(["run-dataset", *argv, "-o", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and message in _error_line(err), (argv, err)
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_the_jobs_own_are_never_written(tiny_models_dir, tmp_path, capsys):
    """An existing file no run wrote, another row's photo and the partial-results folder are refused,
    run after run (a refused row does not claim its output); no row is left to do, so Ray never starts."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import pyarrow.parquet as pq

    from moebius_edge.scale import schema as s

    out = tmp_path / "out"
    out.mkdir()
    (out / "taken.png").write_bytes(b"the user's own file")
    (out / "in.png").write_bytes(b"a photo that sits in the output folder")
    (tmp_path / "jobs.csv").write_text("photo,mask,output\n"
                                       "a.png,m.png,taken.png\n"
                                       "a.png,m.png,in.png\n"
                                       f"{out / 'in.png'},m.png,{s.PARTIAL_DIR}/x.png\n")
    argv = ["run-dataset", str(tmp_path / "jobs.csv"), "--models", str(tiny_models_dir), "-o", str(out),
            "--no-progress"]
    for _ in range(2):
        assert cli.main(argv) == 2
        assert "3 rows: 0 ok, 3 error, 0 skipped" in capsys.readouterr().out
        rows = pq.read_table(out / s.RESULTS_FILE).to_pylist()
        assert [r[s.STATUS] for r in rows] == [s.FAILED] * 3
        assert "exists and no earlier run-dataset" in rows[0][s.ERROR] and rows[0][s.OUTPUT] is None
        assert "is a photo or mask of this job" in rows[1][s.ERROR]
        assert s.PARTIAL_DIR in rows[2][s.ERROR]
    assert (out / "taken.png").read_bytes() == b"the user's own file"
    assert (out / "in.png").read_bytes() == b"a photo that sits in the output folder"


def test_without_the_ray_extra_the_command_says_what_to_install(tmp_path):
    code = ("import sys\n"
            "sys.modules['ray'] = None\n"
            "from moebius_edge.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "run-dataset", str(tmp_path / "jobs.csv"), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'ray' extra" in lines[0] and "pip install 'moebius-edge[ray]'" in lines[0]


def test_row_option_columns_are_runs_pair_options():
    """The whitelist is `run`'s per-pair options, nothing job-wide; cells are typed as `run` types them."""
    from moebius_edge.errors import UserError
    from moebius_edge.scale import jobs, schema

    assert {"seed", "steps", "guidance", "strength", "dilate", "fidelity"} <= set(schema.ROW_OPTIONS)
    assert not {"precision", "models", "provider", "threads", "force", "noise_file"} & set(schema.ROW_OPTIONS)
    assert jobs.coerce_option("steps", "7") == 7 and jobs.coerce_option("steps", 7.0) == 7
    assert jobs.coerce_option("invert_mask", "true") is True and jobs.coerce_option("invert_mask", 0) is False
    for dest, value in (("steps", 2.5), ("steps", True), ("guidance", "x"), ("fidelity", "nope"),
                        ("invert_mask", "maybe")):
        with pytest.raises(UserError, match=f"column {dest}"):
            jobs.coerce_option(dest, value)
