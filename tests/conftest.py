"""Shared fixtures: exported tiny models (the golden weights, so pipeline_case.npz applies)."""
import logging

import numpy as np
import pytest

from .goldens import DATA, export_standin, load_golden_model, load_tiny_vae

__all__ = ["DATA"]


@pytest.fixture(autouse=True)
def _restore_logging():
    """``cli.main`` installs its own handler on the package logger: put things back after each test,
    so that one test's CLI run does not hide another's log records from caplog."""
    log = logging.getLogger("moebius_edge")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved


@pytest.fixture(autouse=True)
def _no_process_wide_malloc_settings(monkeypatch):
    """Low-memory mode sets glibc's mapping threshold for the rest of the process
    (``session.map_large_blocks``), and the default mode registers ONNX Runtime's process-wide
    arena (``session.register_shared_arena``): in the test process either would make later tests
    depend on the order they run in. Tests of the settings themselves run them in a process of
    their own."""
    from moebius_edge import session

    monkeypatch.setattr(session, "map_large_blocks", lambda *a, **kw: False)
    monkeypatch.setattr(session, "_SHARED_ARENA", {"failed": True})


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """A models folder exported from the tiny golden UNet (latent 16) and the tiny VAE: the
    weights that produced tests/data/pipeline_case.npz."""
    pytest.importorskip("torch")
    from moebius_edge.export.onnx_export import export_models

    out = tmp_path_factory.mktemp("models") / "tiny"
    vae, scaling_factor = load_tiny_vae()
    export_models(load_golden_model(1), vae, scaling_factor, out,
                  provenance="checkpoint:tiny_weights.safetensors")
    return out


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory):
    """The trained stand-in (tests/data/standin_weights.*: the tiny preset trained briefly as a
    denoiser) exported like any checkpoint, for the quantize tests' gates. Torch is needed for
    the export only."""
    pytest.importorskip("torch")
    return export_standin(tmp_path_factory.mktemp("standin") / "models")


@pytest.fixture
def pair(tmp_path):
    """A 200×150 photo and its mask (a 40×40 box), as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    m = np.zeros((150, 200), np.uint8)
    m[50:90, 80:120] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    return tmp_path / "photo.png", tmp_path / "mask.png"


@pytest.fixture(scope="session")
def golden():
    """Every array of the official end-to-end golden, pipeline_case.npz."""
    with np.load(DATA / "pipeline_case.npz") as d:
        return {k: d[k] for k in d.files}
