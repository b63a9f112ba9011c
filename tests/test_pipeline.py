"""The NumPy/ONNX Runtime pipeline on the tiny exported graphs (native size 128 px).

The golden case: pipeline_case.npz was produced by the official pipeline with exactly the weights
of the ``tiny_models_dir`` fixture, so with its four noise tensors injected the output must match
within 1 LSB.
"""
import json
import logging
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

from moebius_edge import contract, masks, models
from moebius_edge.errors import UserError
from moebius_edge.pipeline import NOISE_KEYS, Cancelled, Inpainter, load_noise_file
from moebius_edge.models import open_models
from moebius_edge.session import resolve_providers
from moebius_edge.streamed_decoder import find_plan

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def inpainter(tiny_models_dir):
    return Inpainter.from_models(tiny_models_dir, providers="cpu")


def _photo(h, w, seed=0):
    """A smooth synthetic photo with some texture."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0)
    g = 60 + 150 * y / h
    b = 200 - 120 * x / w
    img = np.stack([r, g, b], -1) + np.random.default_rng(seed).normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_golden_case_matches_the_official_pipeline(inpainter, golden):
    assert inpainter.image_size == golden["image_u8"].shape[0] == 128
    out = inpainter.inpaint(golden["image_u8"], golden["mask_u8"], noise=golden, fidelity="official")
    assert out.dtype == np.uint8 and out.shape == golden["output_u8"].shape
    diff = np.abs(out.astype(int) - golden["output_u8"])
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.999
    info = inpainter.last_run
    assert info.steps == 19 and info.fidelity == "official"
    assert [{k: c[k] for k in ("box", "squashed")} for c in info.crops] == [{"box": [0, 0, 128, 128], "squashed": False}]
    # The official rules leave part of the hole to the original: counted, not silently.
    (coverage,) = [c["coverage"] for c in info.crops]
    assert coverage["hole_px"] == (golden["mask_u8"] >= 128).sum()
    assert 0 < coverage["unseen_px"] < coverage["hole_px"] and 0 < coverage["underweight_px"] < coverage["hole_px"]
    assert set(info.providers.values()) == {"CPUExecutionProvider"}
    # Every session was released after its phase.
    assert not any(g.loaded for g in inpainter.graphs.values())


def test_each_phase_hands_its_memory_back(inpainter, golden, monkeypatch):
    """Encode, denoise and decode each give the freed heap back after creating their session and
    after dropping it (glibc keeps it otherwise: at 512² the int8 run's decode peaked 170 MB higher,
    benchmarks/pipeline.py, and the fp32 decoder's call up to 170 MB higher, benchmarks/graph_memory.py)."""
    from moebius_edge import session

    calls = []
    monkeypatch.setattr(session, "release_memory", lambda: calls.append([g.loaded for g in inpainter.graphs.values()]))
    inpainter.inpaint(golden["image_u8"], golden["mask_u8"], noise=golden, fidelity="official")
    # Per phase: once when its session is created (the optimiser's leftovers), once when it is dropped.
    assert [sum(c) for c in calls] == [1, 0, 1, 0, 1, 0] and not any(calls[-1])


def test_noise_file(tmp_path, golden):
    np.savez(tmp_path / "n.npz", **{k: golden[k] for k in NOISE_KEYS})
    noise = load_noise_file(tmp_path / "n.npz")
    assert sorted(noise) == sorted(NOISE_KEYS)
    with pytest.raises(UserError, match="not found"):
        load_noise_file(tmp_path / "missing.npz")


def test_bad_noise_is_refused(inpainter, golden):
    bad = dict(golden, noise_base=np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(UserError, match="noise_base"):
        inpainter.inpaint(golden["image_u8"], golden["mask_u8"], noise=bad)
    with pytest.raises(UserError, match="lacks"):
        inpainter.inpaint(golden["image_u8"], golden["mask_u8"], noise={"noise_base": golden["noise_base"]})


@pytest.mark.parametrize("hole", [
    (300, 60, 330, 90),  # small: a native-size square around it
    (150, 60, 270, 180),  # larger than native: a 184 px square, area-filtered down
    (10, 110, 350, 130),  # long and thin: no square fits, squashed rectangle
])
def test_crop_around_the_mask_on_a_large_non_square_photo(inpainter, hole):
    h, w = 240, 360
    img = _photo(h, w)
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = hole
    mask[y0:y1, x0:x1] = 255
    out = inpainter.inpaint(img, mask, seed=3)
    assert out.shape == img.shape and out.dtype == np.uint8
    keep = ~masks.paste_region(mask, inpainter.image_size)
    assert np.array_equal(out[keep], img[keep])
    assert np.abs(out[y0:y1, x0:x1].astype(int) - img[y0:y1, x0:x1]).mean() > 5
    (c,) = inpainter.last_run.crops
    assert c["squashed"] == (hole[2] - hole[0] > 300)


def test_small_image_is_padded_and_comes_back_at_its_size(inpainter):
    img = _photo(90, 70)
    mask = np.zeros((90, 70), np.uint8)
    mask[30:50, 20:40] = 255
    out = inpainter.inpaint(img, mask)
    assert out.shape == img.shape
    keep = ~masks.paste_region(mask, inpainter.image_size)
    assert np.array_equal(out[keep], img[keep])
    assert inpainter.last_run.crops[0]["box"][0] < 0


def test_far_apart_holes_run_as_separate_crops(inpainter, golden):
    h, w = 300, 600
    img = _photo(h, w, seed=1)
    mask = np.zeros((h, w), np.uint8)
    mask[200:230, 20:50] = 255
    mask[20:40, 500:530] = 255
    steps = []
    out = inpainter.inpaint(img, mask, progress=lambda done, total: steps.append((done, total)))
    assert len(inpainter.last_run.crops) == 2
    assert inpainter.last_run.crops[0]["box"][1] < inpainter.last_run.crops[1]["box"][1]  # top-left order
    assert steps[-1] == (38, 38)
    keep = ~masks.paste_region(mask, inpainter.image_size)
    assert np.array_equal(out[keep], img[keep])
    with pytest.raises(UserError, match="2"):
        inpainter.inpaint(img, mask, noise=golden)
    inpainter.inpaint(img, mask, noise=golden, separate=False)  # one crop: accepted


def test_determinism_and_seed(inpainter):
    img = _photo(200, 260, seed=2)
    mask = np.zeros((200, 260), np.uint8)
    mask[80:120, 100:150] = 200
    a = inpainter.inpaint(img, mask, seed=7)
    b = inpainter.inpaint(img, mask, seed=7)
    c = inpainter.inpaint(img, mask, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_progress_can_cancel(inpainter, golden):
    seen = []

    def progress(done, total):
        seen.append(done)
        return done < 3

    with pytest.raises(Cancelled):
        inpainter.inpaint(golden["image_u8"], golden["mask_u8"], progress=progress)
    assert seen == [1, 2, 3]
    assert not any(g.loaded for g in inpainter.graphs.values())


def test_empty_and_full_masks(inpainter, caplog):
    img = _photo(100, 150)
    with caplog.at_level(logging.WARNING, logger="moebius_edge"):
        out = inpainter.inpaint(img, np.full((100, 150), 127, np.uint8))
    assert np.array_equal(out, img) and "no hole" in caplog.text
    with caplog.at_level(logging.WARNING, logger="moebius_edge"):
        out = inpainter.inpaint(img, np.full((100, 150), 255, np.uint8), steps=5)
    assert out.shape == img.shape and "whole image" in caplog.text


def test_api_rejects_wrong_arrays(inpainter):
    img = _photo(64, 64)
    with pytest.raises(ValueError, match="image"):
        inpainter.inpaint(img.astype(np.float32), np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="mask"):
        inpainter.inpaint(img, np.zeros((64, 63), np.uint8))
    with pytest.raises(UserError, match="strength"):
        inpainter.inpaint(img, np.zeros((64, 64), np.uint8), strength=0.01)


def test_inputs_are_checked_against_the_session(inpainter):
    unet = inpainter.graphs["unet"]
    lat = inpainter.latent_size
    z = np.zeros((1, 4, lat + 1, lat), np.float32)
    with pytest.raises(UserError, match="latent"):
        unet.run(latent=z, mask=np.zeros((1, 1, lat, lat), np.float32), masked_latent=z,
                 timestep=np.array([900]), guidance_scale=np.array([2.5], np.float32))
    with pytest.raises(ValueError, match="fed"):
        unet.run(latent=z)
    z = np.zeros((1, 4, lat, lat), np.float32)
    with pytest.raises(TypeError, match="timestep.*float64.*int64"):  # would be truncated if cast
        unet.run(latent=z, mask=np.zeros((1, 1, lat, lat), np.float32), masked_latent=z,
                 timestep=np.array([900.7]), guidance_scale=np.array([2.5], np.float32))
    unet.release()


def test_session_results_do_not_hold_onnxruntime_memory(inpainter):
    """A result is the caller's own array: ORT's array would keep the released session's whole
    memory arena alive for as long as the result lives (the encoder's latents held ~1 GB through
    the denoising loop at 512²)."""
    enc = inpainter.graphs[contract.VAE_ENCODER.key]
    n, lat = inpainter.image_size, inpainter.latent_size
    z = enc.run(image=np.zeros((1, 3, n, n), np.float32), noise=np.zeros((1, 4, lat, lat), np.float32))
    enc.release()
    assert z.flags.owndata and z.base is None and z.dtype == np.float32


def test_low_memory_and_threads(tiny_models_dir, golden):
    inp = Inpainter.from_models(tiny_models_dir, providers=["CPUExecutionProvider"], threads=1, low_memory=True,
                                verify=False)
    out = inp.inpaint(golden["image_u8"], golden["mask_u8"], noise=golden, steps=20, fidelity="official")
    assert np.abs(out.astype(int) - golden["output_u8"]).max() <= 1


_MEMORY_SETTINGS_CHILD = """
import json, sys
import numpy as np
import onnxruntime as ort
from moebius_edge import contract, session
from moebius_edge.pipeline import Inpainter

models, case, mode = sys.argv[1:4]
created, events = [], []
real, real_map = ort.InferenceSession, session.map_large_blocks

real_register, registered = ort.create_and_register_allocator, []

def spy(path, sess_options=None, **kw):
    sess = real(path, sess_options=sess_options, **kw)
    shared = session.computes_in_shared_arena(sess_options)
    events.append("session")
    created.append([sess.get_modelmeta().custom_metadata_map[contract.META_GRAPH],
                    "shared" if shared else "own" if sess_options.enable_cpu_mem_arena else "none",
                    sess_options.execution_order == ort.ExecutionOrder.PRIORITY_BASED])
    return sess

def mapping():
    events.append("map")
    return real_map()

def register(info, config):
    if registered and mode == "held":
        raise RuntimeError("An allocator for this device has already been registered for sharing.")  # older ORT
    registered.append(len(created))  # how many sessions had been created by then
    return real_register(info, config)

ort.InferenceSession, session.map_large_blocks, ort.create_and_register_allocator = spy, mapping, register
if mode == "refused":
    session.register_shared_arena = lambda image_size: False  # ONNX Runtime without the API
g = dict(np.load(case))
inp = Inpainter.from_models(models, providers=["CPUExecutionProvider"], low_memory=mode == "low-memory", verify=False)
inp.keep_sessions = mode == "keep"  # after construction, as `run` sets it for a folder
worst = 0
for call in range(2):
    out = inp.inpaint(g["image_u8"], g["mask_u8"], noise=g, steps=20, fidelity="official")
    worst = max(worst, int(np.abs(out.astype(int) - g["output_u8"]).max()))
    if call == 0 and mode == "keep":  # one kept session goes while the other two still compute in the arena
        inp.graphs[contract.VAE_DECODER.key].release()
inp.release()
print(json.dumps({"created": created, "events": events, "registered": registered, "worst": worst}))
"""


@pytest.mark.parametrize("mode", ["default", "keep", "low-memory", "refused", "held"])
def test_each_graph_gets_its_memory_settings(tiny_models_dir, mode):
    """The memory settings per graph and mode over two calls, each mode in a fresh process (the
    process-wide arena and glibc's mapping stay set): outside low-memory mode the VAE decoder computes
    in the process-wide arena (session.uses_shared_arena), renewed once no session computes in it
    any more, so that the second call runs as the first; all three compute in it when kept together
    (renewed when the last of them is released), and so does every session created after ONNX
    Runtime refused to renew it (older builds: "held"). Otherwise each graph has its own arena or
    none (session.NO_ARENA), as when ONNX Runtime refuses the shared one. The decoder runs in
    priority-based order. Low-memory mode has glibc map large blocks before the first session.
    None of it changes the output (the official golden, within 1 LSB)."""
    import subprocess
    import sys

    case = Path(__file__).parent / "data" / "pipeline_case.npz"
    done = subprocess.run([sys.executable, "-c", _MEMORY_SETTINGS_CHILD, str(tiny_models_dir), str(case), mode],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    enc, unet, dec = contract.VAE_ENCODER.key, contract.UNET.key, contract.VAE_DECODER.key
    passes = len(find_plan(open_models(tiny_models_dir)).passes)  # the SD decoder's last stage: 7 GroupNorms
    assert passes == 8
    own = [[enc, "own", False], [unet, "own", False], [dec, "none", True]]
    first = own[:2] + [[dec, "shared", True]]
    expected = {"default": first * 2,
                "keep": [[enc, "shared", False], [unet, "shared", False]] + [[dec, "shared", True]] * 2,
                # the decoder streamed: its head as the decoder, then its passes, each with an arena
                "low-memory": ([[enc, "none", False], [unet, "own", False], [dec, "none", True]]
                               + [[contract.STREAMED_DECODER_PASS, "own", False]] * passes) * 2,
                "refused": own * 2,
                "held": first + [[enc, "shared", False], [unet, "shared", False], [dec, "shared", True]]}[mode]
    assert got["created"] == expected
    # when the arena was registered, by how many sessions created: before the first session in it,
    # then anew once the last session computing in it was released: each decoder's without kept
    # sessions (the second one's after the last call), the last of the kept ones at release()
    assert got["registered"] == {"default": [2, 3, 6], "keep": [0, 4], "held": [2]}.get(mode, [])
    # low-memory mode: glibc's mapping before each graph's session (the first included)
    maps = (["map", "session"] * 2 + ["session"] * (1 + passes)) * 2
    assert got["events"] == (maps if mode == "low-memory" else ["session"] * len(expected))
    assert got["worst"] <= 1


def test_the_shared_arena_is_renewed_when_its_last_session_goes(tiny_models_dir, monkeypatch):
    """The process-wide arena counts the sessions computing in it and is replaced only when the
    last one goes: released, or dropped without release() (an Inpainter left after an exception);
    a graph refused by the checks after its session's creation never counts. The registration is
    stubbed: this process's ONNX Runtime environment is left alone."""
    import gc

    from moebius_edge import session
    from moebius_edge.session import GraphSession, SessionConfig

    registered = []
    monkeypatch.setattr(session, "_register_arena", registered.append)
    monkeypatch.setattr(session, "_SHARED_ARENA", {})
    folder, config = open_models(tiny_models_dir), SessionConfig(provider="cpu")
    first, second = (GraphSession(folder, contract.VAE_DECODER, config) for _ in range(2))
    first.session()
    second.session()
    assert (session._SHARED_ARENA["users"], len(registered)) == (2, 1)
    first.release()  # the other one still computes in it
    assert (session._SHARED_ARENA["users"], len(registered)) == (1, 1)
    del second
    gc.collect()
    assert (session._SHARED_ARENA["users"], session._SHARED_ARENA["generation"], len(registered)) == (0, 1, 2)

    def refuse(self, sess):
        raise UserError("the folder mixes exports")

    monkeypatch.setattr(GraphSession, "_check_declared", refuse)
    with pytest.raises(UserError):
        GraphSession(folder, contract.VAE_DECODER, config).session()
    assert session._SHARED_ARENA["users"] == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt and mallinfo2")
def test_large_blocks_are_mapped_on_their_own():
    """After map_large_blocks() a 4 MiB block is a mapping of its own (returned to the system when
    freed), where glibc's moving threshold had put it in the heap. Run in a process of its own: it
    changes glibc's settings for good."""
    import os
    import subprocess
    import sys

    code = """
import ctypes, sys
from moebius_edge.session import map_large_blocks
libc = ctypes.CDLL("libc.so.6")
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc.mallinfo2.restype = Info  # glibc 2.33 and later
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def mapped_4mib():
    libc.malloc_trim(0)
    before = libc.mallinfo2().hblks
    p = libc.malloc(4 << 20)
    n = libc.mallinfo2().hblks - before
    libc.free(p)
    return n
libc.free(libc.malloc(16 << 20))  # freeing a 16 MiB mapping raises glibc's threshold to 16 MiB
first = mapped_4mib()
ok = map_large_blocks() if sys.argv[1] == "map" else True
print(first, mapped_4mib(), ok)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's moving threshold on
    got = {how: subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60,
                               env=env).stdout.split() for how in ("map", "leave")}
    assert got == {"map": ["0", "1", "True"], "leave": ["0", "0", "True"]}


def test_provider_fallback(caplog):
    import onnxruntime as ort

    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    if "CoreMLExecutionProvider" not in ort.get_available_providers():
        with caplog.at_level(logging.WARNING, logger="moebius_edge"):
            assert resolve_providers("coreml") == ["CPUExecutionProvider"]
        assert "falling back to CPU" in caplog.text
    with pytest.raises(UserError, match="unknown provider"):
        resolve_providers("tpu")
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="moebius_edge"):
        assert resolve_providers(["NoSuchExecutionProvider", "cpu"]) == ["CPUExecutionProvider"]
    assert "skipping" in caplog.text


# ---------------------------------------------------------------------------------------------
# Models folder problems


@pytest.fixture
def models_copy(tiny_models_dir, tmp_path):
    dst = tmp_path / "models"
    shutil.copytree(tiny_models_dir, dst)
    return dst


def _edit_manifest(folder, **changes):
    path = folder / contract.MANIFEST_FILE
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


def test_models_folder_errors(models_copy, tmp_path):
    with pytest.raises(UserError, match="models folder not found"):
        open_models(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a models folder"):
        open_models(tmp_path)
    with pytest.raises(UserError, match="precision int8 is not exported.*available: fp32"):
        open_models(models_copy, "int8")
    with pytest.raises(UserError, match="unknown precision"):
        open_models(models_copy, "bf16")


def test_incompatible_contract_version(models_copy):
    _edit_manifest(models_copy, contract_version=contract.CONTRACT_VERSION + 1)
    with pytest.raises(UserError, match="contract version"):
        open_models(models_copy)


def test_corrupt_or_truncated_graph(models_copy):
    path = models_copy / contract.VAE_DECODER.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        Inpainter.from_models(models_copy)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(UserError, match="bytes"):
        open_models(models_copy)
    path.unlink()
    with pytest.raises(UserError, match="missing"):
        open_models(models_copy)


def test_graphs_that_disagree_with_the_manifest(models_copy):
    # A manifest claiming another size: each graph's metadata and declared shapes disagree with it.
    _edit_manifest(models_copy, image_size=256, latent_size=32)
    inp = Inpainter.from_models(models_copy, providers="cpu", verify=False)
    with pytest.raises(UserError, match="manifest"):
        inp.inpaint(_photo(256, 256), np.full((256, 256), 255, np.uint8))


def test_non_finite_quantized_decoder_falls_back_to_fp32(models_copy, golden, caplog):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    fp32 = open_models(models_copy)
    lat, n = fp32.latent_size, fp32.image_size
    # A stand-in "fp16" variant: the fp32 UNet and encoder, and a decoder that returns NaN.
    variant = models_copy / contract.precision_subdir("fp16")
    variant.mkdir()
    nodes = [
        helper.make_node("Slice", ["latent", "s0", "s1", "ax"], ["l3"]),
        helper.make_node("Resize", ["l3", "", "scales"], ["big"], mode="nearest"),
        helper.make_node("Mul", ["big", "nan"], ["image"]),
    ]
    inits = [helper.make_tensor("s0", TensorProto.INT64, [1], [0]), helper.make_tensor("s1", TensorProto.INT64, [1], [3]),
             helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
             helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 8, 8]),
             helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])]
    graph = helper.make_graph(
        nodes, "nan_decoder",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", 4, lat, lat])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, n, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {contract.META_CONTRACT_VERSION: str(contract.CONTRACT_VERSION),
                                   contract.META_GRAPH: contract.VAE_DECODER.key, contract.META_PRECISION: "fp16"})
    onnx.save(model, str(variant / contract.VAE_DECODER.file))
    _write_variant(models_copy, "fp16", {contract.VAE_DECODER.key: variant / contract.VAE_DECODER.file})

    inp = Inpainter.from_models(models_copy, precision="fp16", providers="cpu")
    with caplog.at_level(logging.WARNING, logger="moebius_edge"):
        out = inp.inpaint(golden["image_u8"], golden["mask_u8"], noise=golden, fidelity="official")
    assert "fp32 decoder" in caplog.text and inp.last_run.decoder_fallback
    assert np.abs(out.astype(int) - golden["output_u8"]).max() <= 1


def _write_variant(root, precision, replaced: dict):
    """A variant folder as quantize writes it: the graphs in ``replaced`` ({key: path in the
    variant folder}), the other graphs referenced from the FP32 folder, the source digests."""
    fp32 = open_models(root)
    folder = root / contract.precision_subdir(precision)
    folder.mkdir(exist_ok=True)
    manifest = dict(fp32.manifest)
    manifest[contract.manifest_key(contract.META_PRECISION)] = precision
    manifest[contract.MANIFEST_SOURCE_GRAPHS] = models.source_digests(fp32.manifest)
    manifest[contract.MANIFEST_GRAPHS] = {
        s.key: models.graph_entry(replaced.get(s.key, root / s.file), folder) for s in contract.GRAPHS}
    models.write_manifest(folder, manifest)
    return folder


def test_variant_references_unchanged_graphs_and_checks_its_source(models_copy):
    folder = _write_variant(models_copy, "int8", {})
    assert not any(folder.glob("*.onnx"))  # referenced, not copied
    m = open_models(models_copy, "int8")
    assert m.graph_path(contract.UNET).samefile(models_copy / contract.UNET.file)
    m.verify()
    # Re-exported FP32 graphs (another digest in the FP32 manifest): the variant is refused.
    fp32 = json.loads((models_copy / contract.MANIFEST_FILE).read_text())
    fp32[contract.MANIFEST_GRAPHS][contract.UNET.key][contract.GRAPH_SHA256] = "0" * 64
    (models_copy / contract.MANIFEST_FILE).write_text(json.dumps(fp32))
    with pytest.raises(UserError, match="made from other FP32 graphs"):
        open_models(models_copy, "int8")
    # A manifest that points outside the models folder is refused.
    manifest = json.loads((folder / contract.MANIFEST_FILE).read_text())
    manifest[contract.MANIFEST_GRAPHS][contract.UNET.key][contract.GRAPH_FILE] = "../../elsewhere.onnx"
    (folder / contract.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="outside the models folder"):
        open_models(models_copy, "int8")


@pytest.mark.parametrize("edit", ["nan", "increasing", "short", "above_one"])
def test_edited_noise_schedule_is_refused(models_copy, edit):
    a = json.loads((models_copy / contract.MANIFEST_FILE).read_text())[contract.MANIFEST_ALPHAS_CUMPROD]
    if edit == "nan":
        a[500] = float("nan")
    elif edit == "increasing":
        a[10], a[11] = a[11], a[10]
    elif edit == "short":
        a = a[:-1]
    else:
        a[0] = 1.5
    _edit_manifest(models_copy, **{contract.MANIFEST_ALPHAS_CUMPROD: a})
    with pytest.raises(UserError, match=contract.MANIFEST_ALPHAS_CUMPROD):
        open_models(models_copy)


def test_intermediates_match_the_official_pipeline(inpainter, golden):
    """The encoder, noising and first UNet step against the reference arrays, so a failure of the
    end-to-end golden says which stage moved."""
    from moebius_edge.pipeline import to_model_input
    from moebius_edge.scheduler import DDIMSchedule, add_noise

    hole = masks.to_model(masks.binarize(golden["mask_u8"]), (128, 128), "official")
    x = to_model_input(golden["image_u8"])
    enc = inpainter.graphs[contract.VAE_ENCODER.key]
    z_img = enc.run(image=x, noise=golden["eps_posterior_image"])
    z_msk = enc.run(image=x * (1 - masks.pixel_mask(hole)), noise=golden["eps_posterior_masked"])
    # Measured max |Δ| ≈ 1e-6 against latents of magnitude ~1.
    assert np.abs(z_img - golden["latents_scaled"]).max() <= 2e-5
    assert np.abs(z_msk - golden["masked_latents_scaled"]).max() <= 2e-5
    sched = DDIMSchedule.create(golden["alphas_cumprod_all"], 20, contract.DEFAULT_STRENGTH)
    noise = golden["noise_base"] + np.float32(contract.NOISE_OFFSET) * golden["noise_offset_draw"]
    x_t = add_noise(golden["latents_scaled"], noise, sched.alpha_start)
    assert np.abs(x_t - golden["noisy_latents_init"]).max() <= 1e-6
    eps = inpainter.graphs[contract.UNET.key].run(
        latent=golden["latents_per_step"][0], mask=masks.latent_mask(hole), masked_latent=golden["masked_latents_scaled"],
        timestep=sched.timesteps[:1], guidance_scale=np.array([contract.DEFAULT_GUIDANCE], np.float32))
    assert np.abs(eps - golden["eps_cfg_per_step"][0]).max() <= 1e-5
