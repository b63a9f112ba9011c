"""INT8 graphs: static QDQ with ``onnxruntime.quantization``, calibrated on denoising trajectories.

The quantization is ONNX Runtime's own ``quantize_static`` in QDQ format (per-channel symmetric
S8 weights; U8 or S8 activations, a recipe choice) of the Conv, MatMul and Gemm nodes and of the
Mix-FFN's gate (``GATE_OPS``). What is Moebius-specific, and therefore here:

* **Stable node names** (``stable_names``): the exporter's node names lose the block level
  (``/unet/resnets.0/conv1/conv_dw_3/Conv``) and some are generated (``Gemm_12``), so a recipe
  cannot name nodes by them. A node is named by the state-dict path of its weight
  (``unet.down_blocks.1.resnets.0.conv1.conv_dw``), or, without one (the activation×activation
  λ MatMuls, the gate nodes), by the module path of the λ or Mix-FFN it belongs to plus its local op name
  (``unet.up_blocks.0.attentions.2.transformer_blocks.0.attn1/MatMul_3``).
* **Groups** (``GROUPS``): the ~13 kinds of quantizable node of the architecture (Mix-FFN convs,
  DW.Res convs, samplers, λ projections, λ MatMuls, position conv, time MLP, in/out convs, the
  Mix-FFN's SiLU/GLU gate, ...), each a pattern over stable names. Recipes exclude groups or single nodes, each with its reason.
* **Calibration ranges** (``measure_ranges``): MinMax ranges come from the quantize stage's own
  range pass (``fp16.measure_ranges``: one input at a time, every activation reduced to two
  scalars in priority order and freed), written as ORT's calibration cache, so
  ``quantize_static`` skips its own calibrator, whose augmented model keeps every activation
  of a run alive (13 GB at full size). ``Percentile`` and ``Entropy`` keep histograms of every
  activation of every input: they run ORT's calibrators and are meant for the stand-in and
  reduced sizes (``recipe.check`` refuses them above ``HISTOGRAM_MAX_LATENT``).
* **Pre-processing** (``pre_process``): ``quant_pre_process`` without its symbolic shape
  inference, which fails on this graph and would import ``onnxruntime.tools`` (and with it
  torch, whenever torch is installed).

The VAE graphs (``make_int8_vae``) are quantized the same way with their convolutions only (the
attention MatMuls of the mid blocks stay FP32: quantizing them measured no faster at 512²) and
MinMax ranges; the quantize stage keeps a quantized VAE graph only if it passes its own PSNR check
against FP32 (``quantize/job.py``), else the int8 folder references the FP32 graph.
"""
from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moebius_edge import models, onnx_files
from moebius_edge.errors import UserError
from moebius_edge.quantize import graph as G

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # not Add, Softmax, Concat, Resize (ORT's default list)
# The Mix-FFN's gate, ``point_conv(p * silu(g))`` after ``silu(inverted_conv(x))``: its Sigmoid and
# Mul nodes between three quantized convs. Left FP32, every one of them reads a dequantized copy of
# a 5·C-channel map (ONNX Runtime gives each consumer of a DequantizeLinear its own copy, which also
# stops the x·sigmoid(x) fusion), and they held 0.5 s of a 2.6 s full-size INT8 step (AVX-512 VNNI
# Xeon, benchmarks/int8_profile.py); quantized, ONNX Runtime runs them as QLinearSigmoid and
# QLinearMul on the uint8 maps and the whole Mix-FFN stays integer. Only these: every other Sigmoid
# and Mul of the graph stays FP32.
GATE_OPS = ("Sigmoid", "Mul")
_GATE_NODE = re.compile(r"/ff(_\d+)?/(Sigmoid|Mul)(_\d+)?$")  # exporter names of the Mix-FFN's gate nodes
# The VAE's convolutions hold its time: quantized, the full-size decoder ran 2.23x and the encoder
# 1.91x faster than FP32 at 512² on an AVX-512 VNNI Xeon; with the attention MatMuls too, 2.24x and
# 1.99x at twice the encoder's error (random-init weights, one call each, 2026-12-05; the whole
# pipeline with an int8 decoder: benchmarks/pipeline.py).
VAE_QUANTIZED_OPS = ("Conv",)
ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_TYPE = "int8 per-channel symmetric"  # every quantized weight (the report's wording)
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Histogram calibrators keep every activation of every input; above this latent side (the
# stand-in's is 16, full size 64) a recipe asking for one is refused.
HISTOGRAM_MAX_LATENT = 32
# The oldest ONNX Runtime that runs the graphs this module writes: QDQ with per-channel axes on
# opset 17 (ORT 1.13 reads opset 17; QDQ per-channel Conv/MatMul/Gemm kernels predate it). The
# project's own floor (pyproject: onnxruntime>=1.18) is higher, so that is what is recorded.
MIN_ONNXRUNTIME = "1.18"

# (group, what it is, pattern over stable names). First match wins; ``lambda_matmul`` is
# structural (a MatMul of two activations) and is checked before the patterns.
LAMBDA_MATMUL = "lambda_matmul"
GROUPS = (
    (LAMBDA_MATMUL, "λ MatMuls: activation × activation (content and position lambdas)", None),
    ("time_mlp", "time-embedding MLP", r"^unet\.time_embedding\."),
    ("time_proj", "per-block time-embedding projections", r"\.time_emb_proj$"),
    ("conv_in", "input conv (9-channel latent, mask and masked latent)", r"^unet\.conv_in\."),
    ("conv_out", "output conv (ε)", r"^unet\.conv_out\."),
    ("pos_conv", "self-λ 15×15 position conv", r"\.pos_conv$"),
    ("lambda_proj", "λ q/k/v projections", r"\.attn[12](\.to_\w+|/MatMul_\d+)$"),
    ("mix_ffn", "Mix-FFN convs (inverted, depth, point)", r"\.ff\.\w+_conv\.conv$"),
    ("skip_conv", "up-block convs reading the skip concatenation", r"^unet\.up_blocks\.\d+\.resnets\.\d+\.(conv1\.conv_dw|conv_shortcut)$"),
    ("dw_conv", "DW.Res depthwise convs", r"\.conv[12]\.conv_dw$"),
    ("pw_conv", "DW.Res pointwise and shortcut convs", r"\.conv[12]\.conv_pw$|\.conv_shortcut$"),
    ("proj_io", "LλMI stage proj_in / proj_out", r"\.proj_(in|out)$"),
    ("ffn_gate", "Mix-FFN SiLU and GLU gate (Sigmoid, Mul)", r"\.ff/(Sigmoid|Mul)(_\d+)?$"),
    ("sampler", "down/up-sampler convs", r"\.(down|up)samplers\.\d+\.conv$"),
)
GROUP_NAMES = tuple(g for g, _, _ in GROUPS)
_SUFFIX = re.compile(r"_\d+$")


# ---------------------------------------------------------------------------------------------
# Names and groups


def _state_dict_path(names: list) -> str | None:
    """The module path of a node from its initializer inputs' state-dict names (weight first)."""
    for n in names:
        if n.startswith("unet.") and n.rsplit(".", 1)[-1] in ("weight", "bias"):
            return n.rsplit(".", 1)[0]
    return None


def quantizable(node) -> bool:
    """A node the INT8 recipe can quantize: a Conv, MatMul or Gemm, or a Mix-FFN gate node."""
    return node.op_type in QUANTIZED_OPS or (node.op_type in GATE_OPS and _GATE_NODE.search(node.name) is not None)


def stable_names(proto) -> dict:
    """{exporter node name: stable name} for every Conv, MatMul and Gemm, and the Mix-FFN's gate
    nodes (``GATE_OPS``) (module docstring)."""
    inits = {t.name for t in proto.graph.initializer}
    out, last = {}, None
    for node in proto.graph.node:
        path = _state_dict_path([i for i in node.input[1:] if i in inits])
        if path is not None:
            last = path
        if not quantizable(node):
            continue
        if path is None:
            # /unet/attentions.1/transformer_blocks.0/attn1_1/MatMul_3 -> scope "attn1", op "MatMul_3",
            # placed in the λ module of the last weight seen (the same λ, in graph order); a gate
            # node (.../ff_1/Sigmoid) likewise in its Mix-FFN, whose convs carry the weights.
            parts = node.name.strip("/").split("/")
            scope = _SUFFIX.sub("", parts[-2]) if len(parts) > 1 else ""
            atoms = (last or "").split(".")
            anchor = ".".join(atoms[:atoms.index(scope) + 1]) if scope in atoms else None
            path = f"{anchor}/{parts[-1]}" if anchor else node.name
        out[node.name] = path
    seen = {}
    for k, v in out.items():  # never two nodes under one name
        seen[v] = seen.get(v, 0) + 1
        if seen[v] > 1:
            out[k] = f"{v}#{seen[v]}"
    return out


def _is_activation_matmul(node, constants: set) -> bool:
    return node.op_type == "MatMul" and all(i not in constants for i in node.input[:2])


def groups(proto) -> dict:
    """{stable name: group} for every quantizable node (``GROUPS``); ``other`` if none matches."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    names = stable_names(proto)
    out = {}
    for node in proto.graph.node:
        if node.name not in names:
            continue
        stable = names[node.name]
        if _is_activation_matmul(node, constants):
            out[stable] = LAMBDA_MATMUL
            continue
        out[stable] = next((g for g, _, pat in GROUPS if pat and re.search(pat, stable)), "other")
    return out


def select(proto, exclude: list) -> tuple:
    """(exporter names of the nodes excluded, {stable name: the exclusion entry that matched}).

    ``exclude``: recipe entries ``{"group": G}`` or ``{"node": PATTERN}`` (a regular expression
    over stable names), each with its ``reason``."""
    names = stable_names(proto)
    by_group = groups(proto)
    matched, excluded = {}, []
    for exporter, stable in names.items():
        for e in exclude:
            hit = (e.get("group") == by_group.get(stable) if "group" in e
                   else re.search(e["node"], stable) is not None)
            if hit:
                matched[stable] = e
                excluded.append(exporter)
                break
    return excluded, matched


def check_exclusions(exclude: list) -> None:
    """One-line errors for recipe exclusions that cannot be applied."""
    for e in exclude:
        if not isinstance(e, dict) or len({"group", "node"} & set(e)) != 1:
            raise UserError(f"an int8 exclusion is {{\"group\": NAME}} or {{\"node\": REGEX}} with a reason, got {e!r}")
        if "group" in e and e["group"] not in GROUP_NAMES:
            raise UserError(f"unknown int8 group {e['group']!r}; groups: {', '.join(GROUP_NAMES)}")
        if "node" in e:
            try:
                re.compile(e["node"])
            except re.error as err:
                raise UserError(f"int8 exclusion {e['node']!r} is not a regular expression: {err}") from None


# ---------------------------------------------------------------------------------------------
# Pre-processing


def pre_process(src: Path, dst: Path) -> Path:
    """``quant_pre_process`` of ``src`` into ``dst``: ORT's basic optimisations and ONNX shape
    inference. Its symbolic shape inference is skipped: on this graph it stops with "Incomplete
    symbolic shape inference" (the λ reshapes), ONNX's own inference types every tensor the
    quantizer needs, and skipping it keeps ``onnxruntime.tools`` (which imports torch whenever
    it is installed) out of the process."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name, sidecar = src.name, models.external_data_path(src)
    try:
        if sidecar.is_file() and src.stat().st_size + sidecar.stat().st_size < onnx_files.EXTERNAL_DATA_THRESHOLD_BYTES:
            # Weights in a sidecar (the UNet's, GraphSpec.mapped_weights): the optimiser gets a one-file
            # copy. Its external-data path orders and folds the graph otherwise (measured on the tiny
            # UNet: other node order, so other stable names), and a recipe names nodes by them.
            import onnx

            inline = dst.with_name(f"source-{src.name}")
            onnx.save(G.load(src), str(inline))
            src = inline
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception as e:  # ORT raises bare Exceptions here; one line for the user
        raise UserError(f"quant_pre_process failed on {name}: {e}") from None
    return dst


# ---------------------------------------------------------------------------------------------
# Calibration


def measure_ranges(proto, feeds: list, threads: int = 0) -> dict:
    """{tensor: (min, max)} of every float tensor over ``feeds`` (the quantize stage's lean range
    pass, shared with FP16)."""
    from moebius_edge.quantize import fp16

    return fp16.measure_ranges(proto, feeds, threads=threads, desc="int8 ranges")


def write_calibration_cache(ranges: dict, path: Path) -> Path:
    """ORT's calibration cache (``quantize_static(calibration_cache_path=...)``) from MinMax ranges."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    data = {k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for k, (lo, hi) in ranges.items() if np.isfinite(lo) and np.isfinite(hi)}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
    return path


class _Reader:
    """``CalibrationDataReader`` over recorded feeds (histogram methods only)."""

    def __init__(self, feeds: list):
        self._it = iter(feeds)
        self._n = len(feeds)

    def get_next(self):
        return next(self._it, None)

    def __len__(self):
        return self._n


# ---------------------------------------------------------------------------------------------
# Quantize


@dataclass
class Int8Result:
    proto: object  # the QDQ ModelProto
    excluded: dict  # {stable name: exclusion entry}
    quantized: dict  # {group: count of quantized nodes}
    counts: dict  # {group: count of quantizable nodes}


def make_int8(src: Path, feeds: list, *, exclude: list, activation_type: str = "uint8", method: str = "minmax",
              ranges: dict | None = None, pre_processed: bool = False, threads: int = 0,
              work: Path | None = None) -> Int8Result:
    """The QDQ INT8 graph of the FP32 graph ``src`` calibrated on ``feeds`` (UNet inputs).

    Benchmarks comparing recipes pass ``src`` already through ``pre_process``
    (``pre_processed=True``) and ``ranges`` measured once on it (``measure_ranges``), so the
    candidates share both. ``work`` is where the scratch folder goes (the system's by default)."""
    import onnx

    check_exclusions(exclude)
    _check_quantizer()
    if activation_type not in ACTIVATION_TYPES or method not in CALIBRATION_METHODS:
        raise UserError(f"activation_type must be one of {ACTIVATION_TYPES} and method one of {CALIBRATION_METHODS}")
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=work) as tmp:
        tmp = Path(tmp)
        pre = Path(src) if pre_processed else pre_process(Path(src), tmp / "pre.onnx")
        G.release_memory()
        proto = onnx.load(str(pre))
        excluded, matched = select(proto, exclude)
        names, by_group = stable_names(proto), groups(proto)
        # GATE_OPS are quantized only in the Mix-FFN: ORT's quantizer selects by op type, so every
        # other Sigmoid and Mul is named to it as excluded.
        others = [n.name for n in proto.graph.node if n.op_type in GATE_OPS and not quantizable(n)]
        if method == "minmax" and ranges is None:
            ranges = measure_ranges(proto, feeds, threads)
        del proto
        q = _quantize(pre, tmp, feeds, ops=QUANTIZED_OPS + GATE_OPS, excluded=excluded + others,
                      activation_type=activation_type,
                      method=method, ranges=ranges)
    counts, quantized = {}, {}
    for stable in names.values():
        g = by_group[stable]
        counts[g] = counts.get(g, 0) + 1
        if stable not in matched:
            quantized[g] = quantized.get(g, 0) + 1
    return Int8Result(proto=q, excluded=matched, quantized=quantized, counts=counts)


def make_int8_vae(src: Path, feeds: list, *, activation_type: str = "uint8", threads: int = 0,
                  work: Path | None = None):
    """The QDQ INT8 graph (a ModelProto) of the FP32 VAE graph ``src``: its convolutions
    (``VAE_QUANTIZED_OPS``), per-channel symmetric S8 weights, MinMax ranges over ``feeds``."""
    import onnx

    _check_quantizer()
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=work) as tmp:
        tmp = Path(tmp)
        pre = pre_process(Path(src), tmp / "pre.onnx")
        G.release_memory()
        proto = onnx.load(str(pre))
        ranges = measure_ranges(proto, feeds, threads)
        del proto
        return _quantize(pre, tmp, feeds, ops=VAE_QUANTIZED_OPS, excluded=[], activation_type=activation_type,
                         method="minmax", ranges=ranges)


def _check_quantizer() -> None:
    import inspect

    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise UserError(f"int8 quantization needs an onnxruntime whose quantize_static takes a calibration cache "
                        f"(tested: 1.32; installed: {onnxruntime.__version__}): pip install -U onnxruntime")


def _quantize(pre: Path, tmp: Path, feeds: list, *, ops, excluded: list, activation_type: str, method: str,
              ranges: dict | None):
    """``quantize_static`` of the pre-processed graph ``pre`` in QDQ format; MinMax from ``ranges`` (as
    ORT's calibration cache, so its own calibrator does not run), histogram methods from ``feeds``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    G.release_memory()
    out = tmp / "int8.onnx"
    common = dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=list(ops), per_channel=True,
                  activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                  weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                  extra_options={"WeightSymmetric": True, "ActivationSymmetric": activation_type == "int8"})
    if method == "minmax":
        cache = write_calibration_cache(ranges, tmp / "calibration.json")
        quantize_static(str(pre), str(out), None, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=str(cache), **common)
    else:
        meth = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.Entropy
        quantize_static(str(pre), str(out), _Reader(feeds), calibrate_method=meth, **common)
    return onnx.load(str(out))


def describe(result: Int8Result) -> dict:
    """The report's view of an ``Int8Result`` (JSON-able)."""
    return {"groups": {g: {"quantizable": result.counts.get(g, 0), "quantized": result.quantized.get(g, 0),
                           "what": next((d for n, d, _ in GROUPS if n == g), "")} for g in sorted(result.counts)},
            "excluded": {k: dict(v) for k, v in result.excluded.items()},
            "qdq_nodes": qdq_nodes(result.proto)}


def qdq_nodes(proto) -> int:
    """QuantizeLinear and DequantizeLinear nodes of a graph."""
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
