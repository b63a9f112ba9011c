"""FP16 graphs with an FP32 keep-list found by measurement.

The conversion itself is ONNX Runtime's ``convert_float_to_float16`` (weights and activations
stored as float16, graph inputs and outputs kept float32 with ``keep_io_types`` so the runtime's
feeds do not change). What stays FP32 is decided from FP32 runs on calibration inputs, never from
a hand-written list:

1. **Range** (``measure_ranges``): one run per calibration input of the graph instrumented with a
   ReduceMin/ReduceMax on every float tensor. A tensor whose values leave ``±safe_abs_max`` (a
   quarter of float16's 65,504: headroom for inputs beyond the calibration set) would overflow to
   ±inf in FP16: its producer and all its readers stay FP32, so the tensor never exists in FP16.
2. **Error** (``measure_errors``): the candidate FP16 graph and the FP32 graph on a few calibration
   inputs, side by side in one session (``graph.error_model``), every arithmetic node's output
   compared (relative L2, reduced inside ONNX Runtime). A node whose output error is
   above ``error_min`` *and* ``error_gain`` times the error of its inputs is where FP16 goes wrong
   (rounding the argument of sin(1000·f), cancellation in a difference, ...): it stays FP32 with
   its nearest arithmetic producers (walking back through data movement), because such a node is
   ill-conditioned in its *inputs*: computing it in FP32 on FP16-rounded inputs would not help.
   Repeated for ``error_rounds`` rounds or until nothing new is flagged.

``convert_float_to_float16`` leaves ``Cast(fp16)→Cast(fp32)`` pairs between two FP32 nodes; they
are removed (``graph.collapse_fp16_round_trips``) so kept values really stay FP32.

On the CPU execution provider, ONNX Runtime has no float16 kernels for Conv, MatMul, Gemm and most
element-wise ops: it inserts casts and computes them in FP32, and drops its own casts between two
such nodes. A CPU check therefore sees FP16 *storage* (rounding of weights and activations) and
overflow only where a tensor is really held in FP16 (LayerNormalization inputs, data movement,
the converter's explicit casts), not FP16 arithmetic, and not every overflow a GPU would hit:
hence a keep-list from FP32 ranges rather than from CPU FP16 runs. FP16 is for CUDA, CoreML and
NNAPI, and for halving the download. The report says so (``CPU_NOTE``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from moebius_edge import contract
from moebius_edge.quantize import graph as G

log = logging.getLogger(__name__)

FP16_MAX = 65504.0  # largest finite float16
FP16_UNIT = 2.0 ** -11  # float16's relative rounding error (half an ulp at 1.0)
# A quarter of FP16_MAX: a tensor beyond this on calibration data may well overflow on other photos.
FP16_SAFE_ABS_MAX = FP16_MAX / 4
# A node's output error must exceed both to be blamed. error_min: 16 roundings (3.9e-3 relative),
# far above the ~1-3 roundings an ordinary node adds. error_gain: the output error is 8× what its
# inputs already carried, i.e. the node amplifies FP16 rounding instead of passing it on.
# Measured on the trained stand-in (tests/data/standin_weights.json): ordinary nodes add gains of
# 1-3; see report.json's error_pass for the distribution on any model.
ERROR_MIN = 16 * FP16_UNIT
ERROR_GAIN = 8.0
ERROR_ROUNDS = 3
# FP32 tensors compared per session of the error pass (``measure_errors``): each chunk's are held
# until the FP16 side catches up. 2 GiB: four chunks for the full-size UNet (6.7 GiB of them).
ERROR_CHUNK_BYTES = 2 << 30

CPU_NOTE = ("CPU execution provider: ONNX Runtime has no float16 kernels for Conv, MatMul and Gemm (nor for "
            "most element-wise ops) and computes them in FP32 between inserted casts, so these CPU figures "
            "measure FP16 storage (rounding of weights and activations) and overflow where a tensor is held "
            "in FP16 (LayerNormalization inputs, data movement, explicit casts), not FP16 arithmetic. Between "
            "two FP32-computed nodes ORT drops its own casts, so a CPU run cannot show every overflow a GPU "
            "would hit: that is why the keep-list comes from FP32 activation ranges. FP16 is meant for CUDA, "
            "CoreML and NNAPI, and for halving the download.")


@dataclass
class KeepList:
    """Nodes kept in FP32 for one graph, each with the measurement that put it there."""

    entries: dict = field(default_factory=dict)  # node name -> {"op", "reason", ...measurement}

    def add(self, node, reason: str, **measurement) -> bool:
        if node.name in self.entries:
            return False
        self.entries[node.name] = {"op": node.op_type, "reason": reason, **measurement}
        return True

    @property
    def names(self) -> list:
        return list(self.entries)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def measure_ranges(proto, feeds: list, *, threads: int = 0, desc: str = "ranges") -> dict:
    """{tensor: (min, max)} over ``feeds``, one run per feed (ReduceMin/ReduceMax instrumented).

    Only graph inputs and the outputs of computing nodes are measured; a tensor that data
    movement makes (reshape, transpose, concat, slice, ...) holds a subset of its inputs' values,
    so its range is bounded by theirs (``_propagate_ranges``). That halves the reductions."""
    from tqdm.auto import tqdm

    floats = G.float_tensors(proto)
    made_by = G.producers(proto)
    # A Cast is measured: from an integer tensor (the timestep) it makes new float values.
    names = [n for n in floats if n not in made_by or made_by[n].op_type not in G.DATA_MOVEMENT_OPS
             or made_by[n].op_type == "Cast"]
    instrumented, table = G.range_model(proto, names)
    sess = G.session(instrumented, threads)
    del instrumented
    wanted = [x for _, lo, hi in table for x in (lo, hi)]
    lo_hi = {name: [np.inf, -np.inf] for name in names}
    for feed in tqdm(feeds, desc=desc, unit="input", leave=False, disable=None):
        values = sess.run(wanted, feed)
        for (name, _, _), lo, hi in zip(table, values[0::2], values[1::2]):
            r = lo_hi[name]
            r[0], r[1] = min(r[0], float(lo)), max(r[1], float(hi))
    return _propagate_ranges(proto, {k: tuple(v) for k, v in lo_hi.items()}, set(floats))


def _propagate_ranges(proto, ranges: dict, floats: set) -> dict:
    """Bound the range of every data-movement output by its float inputs' (in graph order); a
    chain that starts at a float initializer (a reshaped constant) is bounded by its values."""
    from onnx import TensorProto, numpy_helper

    out = dict(ranges)
    constants = {}
    for t in proto.graph.initializer:
        if t.data_type == TensorProto.FLOAT and t.name not in out:
            v = numpy_helper.to_array(t)
            if v.size:
                constants[t.name] = (float(v.min()), float(v.max()))
    out.update(constants)
    for node in proto.graph.node:
        if node.op_type not in G.DATA_MOVEMENT_OPS:
            continue
        src = [out[i] for i in node.input if i in out]
        for o in node.output:
            if o in floats and o not in out and src:
                # Pad and Where may add zeros, within these bounds for the ±limit test.
                out[o] = (min(lo for lo, _ in src), max(hi for _, hi in src))
    for name in constants:
        del out[name]
    return out


def keep_out_of_range(proto, ranges: dict, limit: float, keep: KeepList) -> list:
    """Keep the producer and every reader of each tensor outside ±``limit``; returns the tensors."""
    made_by, read_by = G.producers(proto), G.consumers(proto)
    flagged = []
    for name, (lo, hi) in ranges.items():
        peak = max(abs(lo), abs(hi))
        if np.isfinite(peak) and peak <= limit:
            continue
        flagged.append(name)
        m = {"tensor": name, "min": _finite(lo), "max": _finite(hi), "limit": limit}
        if name in made_by:
            keep.add(made_by[name], "range", **m)
        for reader in read_by.get(name, []):
            keep.add(reader, "range (reads it)", **m)
    return flagged


def convert(proto, keep_nodes) -> object:
    """The FP16 graph: ``convert_float_to_float16`` with float32 I/O and ``keep_nodes`` in FP32,
    then the FP32→FP16→FP32 round trips between kept nodes removed. ``proto`` is not modified."""
    from onnx import ModelProto
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = ModelProto()
    src.CopyFrom(proto)
    # op_block_list=None: ORT's default list (ops without float16 kernels anywhere, none of which
    # this model uses); node_block_list: the measured keep-list.
    out = convert_float_to_float16(src, keep_io_types=True, node_block_list=list(keep_nodes))
    n = G.collapse_fp16_round_trips(out)
    log.debug("fp16: %d nodes kept, %d fp32 round trips removed", len(keep_nodes), n)
    return out


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """‖a − ref‖ / ‖ref‖, summed in float64 element-wise (no BLAS threads: the machines are shared)."""
    a, ref = np.asarray(a, np.float32), np.asarray(ref, np.float32)
    if not np.isfinite(a).all():
        return float("inf")
    num = np.square(a - ref, dtype=np.float64).sum()
    return float(np.sqrt(num / max(np.square(ref, dtype=np.float64).sum(), 1e-60)))


def _chunks(names: list, shapes: dict, budget: int):
    """Split ``names`` so that one chunk's tensors stay within ``budget`` bytes as float32 (a
    symbolic dimension counts as 2, the CFG doubling)."""
    chunk, size = [], 0
    for n in names:
        b = 4 * int(np.prod([d if d else 2 for d in shapes[n]] or [1]))
        if chunk and size + b > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(n)
        size += b
    if chunk:
        yield chunk


def measure_errors(fp32, fp16, feeds: list, *, threads: int = 0, budget: int = ERROR_CHUNK_BYTES,
                   desc: str = "fp16 error") -> dict:
    """{tensor: worst relative L2 error over ``feeds``} of every arithmetic node's float output,
    FP16 graph against FP32 graph, both in one session (``graph.error_model``) per chunk of
    tensors: one run per feed, and only two scalars per tensor leave ONNX Runtime.

    Chunks bound the memory: ONNX Runtime runs the FP32 side ahead of the FP16 side (the casts it
    inserts for the FP16 nodes come last in its priority order), so the FP32 tensors compared stay
    alive until their FP16 counterparts are made.

    On the CPU provider a tensor between two nodes that ORT computes in FP32 is compared as ORT
    passes it on, without its own FP16 rounding (ORT drops that cast pair, in the FP16 graph alone
    too): against capturing it as an FP16 output, errors differ by less than one rounding
    (FP16_UNIT), 0.3 % relative at most above ``error_min`` (stand-in UNet, measured)."""
    from tqdm.auto import tqdm

    shapes = G.float_tensors(fp32)
    made_by = G.producers(fp32)
    names16 = set(G.producers(fp16))
    names = [n for n in shapes if n in made_by and made_by[n].op_type not in G.DATA_MOVEMENT_OPS
             and made_by[n].op_type != "Constant" and n in names16]
    types16 = _types(fp16)  # float16, except the graph output (kept float32) and kept nodes
    errors = dict.fromkeys(names, 0.0)
    chunks = list(_chunks(names, shapes, budget))
    with tqdm(total=len(chunks) * len(feeds), desc=desc, unit="run", leave=False, disable=None) as bar:
        for chunk in chunks:
            both, table = G.error_model(fp32, fp16, chunk, types16)
            sess = G.session(both, threads, arena=False)
            del both
            wanted = [x for _, num, den in table for x in (num, den)]
            for feed in feeds:
                values = sess.run(wanted, feed)
                for (name, _, _), num, den in zip(table, values[0::2], values[1::2]):
                    num, den = float(num), float(den)
                    err = float(np.sqrt(num / max(den, 1e-60))) if np.isfinite(num) else float("inf")
                    errors[name] = max(errors[name], err)
                bar.update()
            del sess
            G.release_memory()
    return errors


def _types(proto) -> dict:
    """{tensor name: ONNX element type} (shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    return {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}


def _input_error(node, errors: dict, made_by: dict, float_names) -> float:
    """The error a node receives: the worst over its float inputs, through data movement to the
    nearest measured tensor; graph inputs and weights carry one FP16 rounding."""
    worst = FP16_UNIT
    for name in node.input:
        if name not in float_names:
            continue
        worst = max(worst, _tensor_error(name, errors, made_by, float_names, set()))
    return worst


def _tensor_error(name, errors, made_by, float_names, seen) -> float:
    if name in errors:
        return errors[name]
    node = made_by.get(name)
    if node is None or name in seen:
        return FP16_UNIT
    seen.add(name)
    return max([FP16_UNIT] + [_tensor_error(i, errors, made_by, float_names, seen)
                              for i in node.input if i in float_names])


def _arithmetic_producers(node, made_by: dict, float_names) -> list:
    """The nearest nodes that compute (not merely move) the values ``node`` reads, and the
    Constant nodes on the way (their values would otherwise be rounded to FP16)."""
    out, stack, seen = [], [i for i in node.input if i in float_names or i in made_by], set()
    while stack:
        name = stack.pop()
        p = made_by.get(name)
        if p is None or p.name in seen:
            continue
        seen.add(p.name)
        out.append(p)
        if p.op_type in G.DATA_MOVEMENT_OPS:
            stack.extend(i for i in p.input if i in made_by)
    return out


def keep_error_sources(proto, errors: dict, keep: KeepList, *, error_min: float, error_gain: float,
                       round_no: int) -> list:
    """Flag the nodes that amplify FP16 error (above ``error_min`` and ``error_gain`` × their
    inputs' error) and keep them with their nearest arithmetic producers; returns the new names."""
    made_by = G.producers(proto)
    float_names = set(G.float_tensors(proto)) | {t.name for t in proto.graph.initializer}
    new = []
    for node in proto.graph.node:
        outs = [o for o in node.output if o in errors]
        if not outs or node.name in keep.entries:
            continue
        err = max(errors[o] for o in outs)
        received = _input_error(node, errors, made_by, float_names)
        if not (err > error_min and err > error_gain * received):
            continue
        m = {"rel_error": _finite(err), "input_rel_error": received,
             "gain": _finite(err / received), "round": round_no}
        if keep.add(node, "fp16 error", **m):
            new.append(node.name)
        for p in _arithmetic_producers(node, made_by, float_names):
            if keep.add(p, f"producer for {node.name}", round=round_no):
                new.append(p.name)
    return new


def gain_summary(proto, errors: dict) -> dict:
    """Distribution of per-node error gains (for the report: how far from the thresholds)."""
    made_by = G.producers(proto)
    float_names = set(G.float_tensors(proto)) | {t.name for t in proto.graph.initializer}
    gains, errs = [], []
    for node in proto.graph.node:
        outs = [o for o in node.output if o in errors]
        if not outs:
            continue
        err = max(errors[o] for o in outs)
        if not np.isfinite(err):
            continue
        errs.append(err)
        gains.append(err / _input_error(node, errors, made_by, float_names))
    if not gains:
        return {}
    g, e = np.asarray(gains), np.asarray(errs)
    return {"nodes": len(g), "gain_p50": float(np.median(g)), "gain_p99": float(np.percentile(g, 99)),
            "gain_max": float(g.max()), "rel_error_p50": float(np.median(e)), "rel_error_max": float(e.max())}


def _keep_constants(proto, keep: KeepList) -> None:
    """Keep the Constant nodes that feed kept nodes: a kept node computes in FP32, and a constant
    operand rounded to FP16 on the way in would undo that (sin(t·f) needs f exact)."""
    made_by = G.producers(proto)
    for name in list(keep.entries):
        node = next(n for n in proto.graph.node if n.name == name)
        for i in node.input:
            p = made_by.get(i)
            if p is not None and p.op_type == "Constant":
                keep.add(p, f"constant input of {name}")


@dataclass
class FP16Result:
    """One graph made FP16: the graph, its keep-list and what was measured."""

    proto: object
    keep: KeepList
    ranges_abs_max: float
    range_flagged: list
    error_rounds: list  # per round: {"new": [...], "summary": gain_summary, "output_rel_error": x}


def make_fp16(proto, calib_feeds: list, error_feeds: list, *, key: str, safe_abs_max: float = FP16_SAFE_ABS_MAX,
              error_min: float = ERROR_MIN, error_gain: float = ERROR_GAIN, rounds: int = ERROR_ROUNDS,
              extra_keep=(), measure: bool = True, threads: int = 0) -> FP16Result:
    """Measure the keep-list of one graph on calibration feeds and convert it (see module doc).

    ``extra_keep``: node names kept in FP32 by the recipe, in addition to (or with ``measure``
    False, instead of) the measured ones."""
    keep = KeepList()
    by_name = {n.name: n for n in proto.graph.node}
    for name in extra_keep:
        if name not in by_name:
            from moebius_edge.errors import UserError

            raise UserError(f"the recipe keeps {name!r} in FP32, but the {key} graph has no such node")
        keep.add(by_name[name], "recipe")
    flagged, abs_max, history = [], 0.0, []
    if measure:
        ranges = measure_ranges(proto, calib_feeds, threads=threads, desc=f"{key} ranges")
        abs_max = max((max(abs(lo), abs(hi)) for lo, hi in ranges.values()), default=0.0)
        flagged = keep_out_of_range(proto, ranges, safe_abs_max, keep)
        log.info("%s: activations within ±%.4g on calibration data; %d tensors beyond ±%g", key, abs_max,
                 len(flagged), safe_abs_max)
    _keep_constants(proto, keep)
    out = convert(proto, keep.names)
    out_name = contract.GRAPHS[[g.key for g in contract.GRAPHS].index(key)].output_names[0]
    for r in range(1, rounds + 1 if measure else 1):
        errors = measure_errors(proto, out, error_feeds, threads=threads, desc=f"{key} fp16 error, round {r}")
        new = keep_error_sources(proto, errors, keep, error_min=error_min, error_gain=error_gain, round_no=r)
        history.append({"round": r, "new": new, "summary": gain_summary(proto, errors),
                        "output_rel_error": _finite(errors.get(out_name, float("nan")))})
        log.info("%s fp16 error round %d: output rel-L2 %.3g, %d nodes newly kept", key, r,
                 history[-1]["output_rel_error"] or float("inf"), len(new))
        if not new:
            break
        _keep_constants(proto, keep)
        out = convert(proto, keep.names)
    return FP16Result(proto=out, keep=keep, ranges_abs_max=abs_max, range_flagged=flagged, error_rounds=history)

