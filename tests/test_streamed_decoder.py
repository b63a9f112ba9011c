"""The low-memory mode's streamed decoder (runtime/streamed_decoder.py, export/streamed_decoder.py):
the decoder's last stage in strips of rows with the whole image's GroupNorm statistics gives the
whole graph's pixels, whatever the strip height; it is written at export, found for variants that
decode with the FP32 file, and a broken one is refused in one line."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from moebius_edge import cli, contract, models
from moebius_edge.models import open_models
from moebius_edge.session import GraphSession, SessionConfig
from moebius_edge.streamed_decoder import StreamedDecoder, find_plan


def _latent(m, batch=1, seed=0):
    # posterior latents of real photos reach |z| of a few units; the scaling factor is inside the graph
    return (np.random.default_rng(seed).standard_normal((batch, contract.LATENT_CHANNELS, m.latent_size,
                                                         m.latent_size)) * 3).astype(np.float32)


def test_the_export_writes_the_streamed_decoder(tiny_models_dir):
    m = open_models(tiny_models_dir)
    plan = find_plan(m)
    assert plan is not None and plan.source_sha256 == m.entry(contract.VAE_DECODER)[contract.GRAPH_SHA256]
    # the SD decoder's last stage: three ResNet blocks (two GroupNorms each) and the output norm
    assert len(plan.norms) == 7 and len(plan.passes) == 8
    stored = {t for p in plan.passes for t in p.store}
    assert plan.norms[0].source not in stored  # the upsampler's output is recomputed, never held whole
    assert plan.output in plan.passes[-1].store
    for p in plan.passes:  # every stored tensor but the image is freed after its last reader
        assert set(p.free) <= stored | {plan.cut}
    assert {t for p in plan.passes for t in p.free} == (stored | {plan.cut}) - {plan.output}


@pytest.mark.parametrize("rows", [2, 6, 34, 128])
def test_streamed_decode_gives_the_whole_graphs_pixels(tiny_models_dir, rows):
    """Strips of 2 rows (every strip's halo reaches past its neighbours) up to one strip; a batch of
    two (statistics per sample). Strip-local statistics would miss by ~1e-1."""
    m = open_models(tiny_models_dir)
    latent = _latent(m, batch=2, seed=rows)
    whole = GraphSession(m, contract.VAE_DECODER, SessionConfig(provider="cpu"))
    ref = whole.run(latent=latent)
    whole.release()
    dec = StreamedDecoder(m.root, find_plan(m), SessionConfig(provider="cpu", low_memory=True),
                          strip_pixels=rows * m.image_size)
    got = dec.run(latent)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-5
    assert dec.provider == "CPUExecutionProvider"


def test_variants_stream_only_with_the_fp32_decoder(tiny_models_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir, root)
    fp32 = open_models(root)
    for precision, changed in (("fp16", False), ("int8", True)):
        staged = models.staging_folder(root, precision)
        graphs = {}
        if changed:  # a decoder of its own (here: the same graph with other bytes)
            graphs[contract.VAE_DECODER.key] = staged / contract.VAE_DECODER.file
            data = fp32.graph_path(contract.VAE_DECODER).read_bytes()
            graphs[contract.VAE_DECODER.key].write_bytes(data + b"\n")
        models.write_manifest(staged, models.variant_manifest(fp32, precision, staged, graphs))
        models.publish_variant(staged, root, precision)
        variant = open_models(root, precision)
        assert contract.MANIFEST_STREAMED_DECODER not in variant.manifest  # the plan stays in the FP32 manifest
        assert (find_plan(variant) is None) == changed


def test_a_folder_exported_before_gets_it_added(tiny_models_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir, root)
    shutil.rmtree(root / contract.STREAMED_DECODER_DIR)
    manifest = models.read_manifest(root)
    del manifest[contract.MANIFEST_STREAMED_DECODER]
    models.write_manifest(root, manifest)
    assert find_plan(open_models(root)) is None
    done = subprocess.run([sys.executable, "-m", "moebius_edge.export.streamed_decoder", str(root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = find_plan(open_models(root))
    assert plan is not None and len(plan.passes) == 8
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left behind


def _decoder_with_align_corners(src, dst) -> None:
    """The decoder with its last upsampler's rows mapped another way (align_corners): output row i
    is no longer input row i // 2, so a strip would need rows it is not given."""
    import onnx

    model = onnx.load(str(src))
    resize = [n for n in model.graph.node if n.op_type == "Resize"][-1]
    for a in resize.attribute:
        if a.name == "coordinate_transformation_mode":
            a.s = b"align_corners"
    onnx.save_model(model, str(dst))


def test_declined_stages_leave_the_whole_decode(tiny_models_dir, tmp_path, caplog, monkeypatch):
    """An upsampler whose rows do not map i -> i // 2, and a derivation the check finds off, get no
    streamed decoder, with a warning saying why."""
    from moebius_edge.export import streamed_decoder as derivation

    m = open_models(tiny_models_dir)
    path = tmp_path / contract.VAE_DECODER.file
    _decoder_with_align_corners(m.graph_path(contract.VAE_DECODER), path)
    with caplog.at_level("WARNING"):
        assert derivation.add_streamed_decoder(tmp_path, path, "sha", m.latent_size) is None
    assert "i // 2" in caplog.text and not (tmp_path / contract.STREAMED_DECODER_DIR).exists()
    caplog.clear()
    monkeypatch.setattr(derivation, "check", lambda *a, **kw: 1.0)
    with caplog.at_level("WARNING"):
        assert derivation.add_streamed_decoder(tmp_path, m.graph_path(contract.VAE_DECODER), "sha",
                                               m.latent_size) is None
    assert "max |streamed - whole| 1.0e+00" in caplog.text


def test_adding_it_to_a_declined_folder_is_one_line(tiny_models_dir, tmp_path, capsys):
    from moebius_edge.export.streamed_decoder import main

    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir, root)
    decoder = root / contract.VAE_DECODER.file
    _decoder_with_align_corners(decoder, decoder)
    manifest = models.read_manifest(root)
    manifest[contract.MANIFEST_GRAPHS][contract.VAE_DECODER.key] = models.graph_entry(decoder, root)
    models.write_manifest(root, manifest)
    before = (root / contract.MANIFEST_FILE).read_bytes()
    assert main([str(root)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "no streamed decoder could be derived" in lines[0]
    assert (root / contract.MANIFEST_FILE).read_bytes() == before  # the folder as it was
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_a_stage_without_group_norms_is_declined(tmp_path, caplog):
    """A decoder whose last stage is not the SD layout gets no streamed decoder: it decodes whole."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from moebius_edge.export.streamed_decoder import add_streamed_decoder

    w = numpy_helper.from_array(np.ones((3, 4, 3, 3), np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    graph = helper.make_graph(
        [helper.make_node("Resize", ["latent", "", "scales"], ["up"], mode="nearest"),
         helper.make_node("Conv", ["up", "w"], ["image"], pads=[1, 1, 1, 1])],
        "plain", [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])], [w, scales])
    path = tmp_path / contract.VAE_DECODER.file
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with caplog.at_level("WARNING"):
        assert add_streamed_decoder(tmp_path, path, "sha", 8) is None
    assert "no GroupNorm" in caplog.text
    assert not (tmp_path / contract.STREAMED_DECODER_DIR).exists()


# An edited plan record: each would end in a traceback (or wrong crops) if taken as it is.
RECORD_DAMAGE = {
    "no passes": lambda r: r.pop("passes"),
    "passes a table": lambda r: r.update(passes={"a": 1}),
    "halo as text": lambda r: r["passes"][2].update(halo="x"),
    "odd halo": lambda r: r["passes"][2].update(halo=1),
    "factor 0": lambda r: r.update(factor=0),
    "entry a list": lambda r: r["passes"][2].update(entry=[1]),
    "groups as text": lambda r: r["norms"][0].update(groups="4"),
    "reads what nothing stored": lambda r: r["passes"][0].update(inputs=["elsewhere"]),
    "image never stored": lambda r: r["passes"][-1].update(store=[]),
    "outside the folder": lambda r: r["passes"][2]["entry"].update(file="../../x.onnx"),
    # consistent as a record, wrong for the graphs: found when a session is made, or by the statistics
    "a pass input dropped": lambda r: r["passes"][2].update(inputs=r["passes"][2]["inputs"][:-1]),
    "groups not dividing": lambda r: r["norms"][0].update(groups=3),
}


@pytest.mark.parametrize("damage", ["truncated", "flipped", *RECORD_DAMAGE])
def test_a_broken_streamed_decoder_is_one_line_in_low_memory_mode(tiny_models_dir, pair, tmp_path, capsys, damage):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir, root)
    target = root / contract.STREAMED_DECODER_DIR / "pass3.onnx"
    data = bytearray(target.read_bytes())
    if damage == "truncated":
        target.write_bytes(data[:-100])
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        manifest = json.loads((root / contract.MANIFEST_FILE).read_text())
        RECORD_DAMAGE[damage](manifest[contract.MANIFEST_STREAMED_DECODER])
        (root / contract.MANIFEST_FILE).write_text(json.dumps(manifest))
    photo, mask = pair
    out = tmp_path / "out.png"
    rc = cli.main(["run", str(photo), str(mask), "--models", str(root), "--low-memory", "--steps", "2", "-o", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # refused as the folder opens, before any work; the last two only when the decode reaches
    # them, after the progress lines of the phases before
    late = damage in ("a pass input dropped", "groups not dividing")
    assert rc == 2 and "Traceback" not in err and (late or len(lines) == 1), err
    assert [ln for ln in lines if "error:" in ln] == lines[-1:]
    assert ("pass3.onnx" if damage in ("truncated", "flipped", "a pass input dropped") else
            "outside the models folder" if damage == "outside the folder" else
            contract.MANIFEST_STREAMED_DECODER) in lines[-1]
    assert not out.exists()
    # the default mode does not read them
    assert cli.main(["run", str(photo), str(mask), "--models", str(root), "--steps", "2", "-o", str(out)]) == 0


def test_group_statistics_over_strips_match_a_float64_group_norm():
    """Channels whose mean is large against their spread (E[x²] − E[x]² in float32 would cancel to
    noise), merged over strips of unequal height, per sample and group."""
    from moebius_edge.streamed_decoder import Norm, _Moments

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 8, 40, 16)) * 0.1 + 1000 + np.arange(8)[None, :, None, None] * 1e-3)
    x = x.astype(np.float32)
    moments = _Moments()
    for a in (0, 6, 7, 30):
        moments.add(x[:, :, a:{0: 6, 6: 7, 7: 30, 30: 40}[a]])
    scale, shift = moments.affine(Norm(source="x", groups=4, eps=1e-6, scale="s", shift="t"))
    g = x.astype(np.float64).reshape(2, 4, -1)
    ref = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + 1e-6)
    got = (x.astype(np.float64) * scale + shift).reshape(2, 4, -1)
    assert np.abs(got - ref).max() < 1e-2  # float32 inputs at 1000 carry 6e-5 of rounding: 6e-4 of 0.1
