"""ONNX graph plumbing for the quantize stage: load, save, inspect, instrument. Never torch.

Only the ``onnx`` package and ONNX Runtime: ``onnx.shape_inference`` (C++, in the onnx wheel)
gives every intermediate tensor's element type; ``onnxruntime.tools`` and its symbolic shape
inference are deliberately not used, because they import torch whenever it is installed
(``quantize/__init__.py``).

* ``float_tensors``: the float32 tensors of a graph (inputs and node outputs) with their shapes;
* ``range_model``: the graph with a ReduceMin and a ReduceMax on every such tensor, so one run per
  calibration input yields every activation's range as scalars (no activation leaves ORT);
* ``error_model``: a graph and its FP16 conversion in one graph, side by side, with every
  compared tensor's squared error and squared norm as scalar outputs;
* ``collapse_fp16_round_trips``: remove the ``fp32 → Cast(fp16) → Cast(fp32)`` pairs the FP16
  converter leaves between two nodes kept in FP32 (they would round, and overflow, the very values
  the keep-list protects);
* ``save`` (``moebius_edge.onnx_files``, shared with export): atomic write, with one external-data
  sidecar for the UNet (``GraphSpec.mapped_weights``) or over protobuf's 2 GB limit.
"""
from __future__ import annotations

import logging

import numpy as np

from moebius_edge import onnx_files
from moebius_edge.session import release_memory  # noqa: F401 - the runtime's; quantize calls it G.release_memory

log = logging.getLogger(__name__)

# Nodes that only move, reshape or select values: they add no rounding of their own, so an error
# seen after them was made before them (used when walking back to the node that made it).
DATA_MOVEMENT_OPS = frozenset({"Reshape", "Transpose", "Slice", "Concat", "Unsqueeze", "Squeeze", "Expand",
                               "Gather", "Split", "Identity", "Flatten", "Shape", "Cast", "Where", "Tile",
                               "Pad", "DepthToSpace", "SpaceToDepth"})
_RANGE_SUFFIX = ("__range_min", "__range_max")
_CANDIDATE_PREFIX = "candidate/"  # error_model: the candidate graph's names
_ERROR_PREFIX = "error_"  # error_model: the comparison nodes


def load(path):
    import onnx

    return onnx.load(str(path))


# Atomic saves with metadata and, where the contract maps weights, a sidecar: shared with export.
save, metadata, set_metadata = onnx_files.save, onnx_files.metadata, onnx_files.set_metadata


def float_tensors(proto) -> dict:
    """{name: shape tuple (ints, or None where symbolic)} of every float32 graph input and node
    output, in execution order. Types come from ONNX shape inference."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(proto)
    infos = {v.name: v for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    initializers = {t.name for t in proto.graph.initializer}
    out = {}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    names += [o for n in proto.graph.node for o in n.output if o]
    for name in names:
        v = infos.get(name)
        if v is None or v.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        dims = v.type.tensor_type.shape.dim
        out[name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return out


def producers(proto) -> dict:
    """{tensor name: the node that writes it}."""
    return {o: n for n in proto.graph.node for o in n.output if o}


def consumers(proto) -> dict:
    """{tensor name: [nodes that read it]}."""
    out = {}
    for n in proto.graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def session(proto, threads: int = 0, arena: bool = True):
    """A CPU InferenceSession on an in-memory graph (ORT's warnings off: unused initializers
    and the like are expected in instrumented copies).

    Priority-based execution order: with the default order, a graph whose every activation has
    an extra reader (the range pass) keeps them all alive to the end of the run, 13 GB instead
    of 4.3 GB at the process's peak for the full-size UNet, and twice the time (measured)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if not arena:  # every tensor back to the system when freed; no run-to-run memory pattern
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


class GraphRunner:
    """The runtime's ``GraphSession`` calling convention (``run(**inputs)`` → the first output as
    float32, ``release()``) over an in-memory graph, so candidate graphs can go where the
    evaluation code expects a session of a models folder."""

    def __init__(self, proto, threads: int = 0):
        self.sess = session(proto, threads)
        self.output = self.sess.get_outputs()[0].name

    def run(self, **inputs) -> np.ndarray:
        # A copy, as GraphSession.run: ORT's own array would keep the session's arena alive.
        return np.array(self.sess.run([self.output], inputs)[0], dtype=np.float32, copy=True)

    def release(self) -> None:
        pass


def _with_outputs(proto, outputs: list, extra_nodes: list = ()):
    """A copy of ``proto`` (sharing nothing) with ``outputs`` [(name, elem_type)] added as graph
    outputs and ``extra_nodes`` appended."""
    from onnx import ModelProto, helper

    out = ModelProto()
    out.CopyFrom(proto)
    out.graph.node.extend(extra_nodes)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(n, t, None) for n, t in outputs if n not in have)
    return out


def range_model(proto, names) -> tuple:
    """(instrumented graph, [(tensor, min output, max output)]): a ReduceMin and a ReduceMax over
    all axes on every tensor in ``names`` (opset ≤ 17: axes as attribute, none = all).

    Each pair is placed right after the node that writes its tensor (and ``session`` runs nodes in
    priority order), so that every activation can be freed as soon as it was reduced."""
    from onnx import ModelProto, TensorProto, helper

    wanted = set(names)
    reducers, outputs, table = {}, [], []
    for i, name in enumerate(names):
        lo, hi = f"{name}{_RANGE_SUFFIX[0]}", f"{name}{_RANGE_SUFFIX[1]}"
        reducers[name] = [helper.make_node("ReduceMin", [name], [lo], keepdims=0, name=f"range_min_{i}"),
                          helper.make_node("ReduceMax", [name], [hi], keepdims=0, name=f"range_max_{i}")]
        outputs += [(lo, TensorProto.FLOAT), (hi, TensorProto.FLOAT)]
        table.append((name, lo, hi))
    order = [r for i in proto.graph.input if i.name in wanted for r in reducers[i.name]]
    for node in proto.graph.node:
        order.append(node)
        order += [r for o in node.output if o in wanted for r in reducers[o]]
    out = ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(order)
    return _with_outputs(out, outputs), table


def error_model(reference, candidate, names: list, elem_types: dict) -> tuple:
    """(one graph running ``reference`` and ``candidate`` side by side, [(tensor, ‖c − r‖² output,
    ‖r‖² output)]): for every tensor in ``names`` (made by both graphs, float32 in ``reference``;
    ``elem_types``: its type in ``candidate``, float16 where missing) a Cast to float32, a Sub and
    two ReduceSumSquare, so one run per input yields every tensor's error as two scalars and no
    activation leaves ONNX Runtime.

    The two graphs share their inputs (same names and types: ``keep_io_types``); everything else of
    ``candidate`` is renamed under ``_CANDIDATE_PREFIX``. Each candidate node is placed in the graph
    as soon as the reference has made the tensor it is compared with. ONNX Runtime still runs most
    of the reference side first on the CPU provider: the casts it inserts around FP16 nodes without
    a float16 kernel come last in its priority order, and the candidate side waits on them. So the
    compared reference tensors stay alive until the end of the run, and ``fp16.measure_errors``
    compares a bounded chunk of tensors per graph."""
    from onnx import ModelProto, TensorProto, helper

    inputs = {i.name for i in candidate.graph.input}
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in candidate.graph.node for a in n.attribute):
        raise ValueError("error_model: graphs with subgraphs are not supported")

    def rename(name: str) -> str:
        return name if not name or name in inputs else _CANDIDATE_PREFIX + name

    theirs = []
    for node in candidate.graph.node:
        n = helper.make_node(node.op_type, [rename(i) for i in node.input], [rename(o) for o in node.output],
                             name=rename(node.name), domain=node.domain)
        n.attribute.extend(node.attribute)
        theirs.append(n)
    wanted = {n: i for i, n in enumerate(names)}
    made_at = {o: i for i, n in enumerate(theirs) for o in n.output if o}
    order, next_theirs, table, outputs = [], 0, [], []

    def compare(name: str) -> None:
        nonlocal next_theirs
        i = wanted[name]
        until = made_at[rename(name)]
        order.extend(theirs[next_theirs:until + 1])
        next_theirs = max(next_theirs, until + 1)
        got = rename(name)
        if elem_types.get(name, TensorProto.FLOAT16) != TensorProto.FLOAT:
            got = f"{_ERROR_PREFIX}{i}_cast"
            order.append(helper.make_node("Cast", [rename(name)], [got], to=TensorProto.FLOAT,
                                          name=f"{_ERROR_PREFIX}{i}_cast"))
        diff, num, den = (f"{_ERROR_PREFIX}{i}_{s}" for s in ("diff", "num", "den"))
        order.append(helper.make_node("Sub", [got, name], [diff], name=diff))
        order.append(helper.make_node("ReduceSumSquare", [diff], [num], keepdims=0, name=num))
        order.append(helper.make_node("ReduceSumSquare", [name], [den], keepdims=0, name=den))
        table.append((name, num, den))
        outputs.extend([(num, TensorProto.FLOAT), (den, TensorProto.FLOAT)])

    for name in (i.name for i in reference.graph.input):
        if name in wanted and rename(name) in made_at:
            compare(name)
    for node in reference.graph.node:
        order.append(node)
        for o in node.output:
            if o in wanted and rename(o) in made_at:
                compare(o)
    order.extend(theirs[next_theirs:])
    out = ModelProto()
    out.CopyFrom(reference)
    del out.graph.node[:]
    out.graph.node.extend(order)
    for t in candidate.graph.initializer:
        c = out.graph.initializer.add()
        c.CopyFrom(t)
        c.name = rename(t.name)
    del out.graph.value_info[:]
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(n, t, None) for n, t in outputs if n not in have)
    return out, table


def collapse_fp16_round_trips(proto) -> int:
    """Rewire ``x(fp32) → Cast(to fp16) → y → Cast(to fp32) → z`` so that readers of ``z`` read
    ``x``; returns how many were rewired. ``convert_float_to_float16`` leaves such pairs between
    two nodes of its block list, and ONNX Runtime ≥ 1.17 no longer removes the down-cast
    (microsoft/onnxconverter-common#271): a value kept in FP32 because it overflows FP16 would
    still pass through FP16 on its way to the next FP32 node. Only this exact float round trip is
    removed (it is the identity in FP32); casts between other types are left alone."""
    from onnx import TensorProto

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    made_by = producers(proto)
    types = _elem_types(proto)
    outputs = {o.name for o in proto.graph.output}
    renames = {}
    for node in proto.graph.node:
        if cast_to(node) != TensorProto.FLOAT:
            continue
        down = made_by.get(node.input[0])
        if down is None or cast_to(down) != TensorProto.FLOAT16:
            continue
        if types.get(down.input[0]) != TensorProto.FLOAT or node.output[0] in outputs:
            continue
        renames[node.output[0]] = down.input[0]
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    if renames:
        _prune(proto)
    return len(renames)


def _elem_types(proto) -> dict:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    out = {v.name: v.type.tensor_type.elem_type
           for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    out.update({t.name: t.data_type for t in proto.graph.initializer})
    return out


def _prune(proto) -> None:
    """Drop nodes whose outputs nobody reads (the orphaned casts), back to a fixed point."""
    keep_outputs = {o.name for o in proto.graph.output}
    while True:
        read = {i for n in proto.graph.node for i in n.input} | keep_outputs
        dead = [n for n in proto.graph.node if not any(o in read for o in n.output if o)]
        if not dead:
            return
        for n in dead:
            proto.graph.node.remove(n)
        names = {o for n in dead for o in n.output}
        kept = [v for v in proto.graph.value_info if v.name not in names]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(kept)
