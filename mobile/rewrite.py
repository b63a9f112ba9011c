"""The mobile export variant: numerically equivalent rewrites of a static graph for the mobile EPs.

Applied by ``moebius-edge bundle`` to the static graphs (never to a models folder's graphs: the
CPU EP runs its fused norm kernels faster, docs/mobile.md §3). Each rewrite removes fallbacks
that onnxruntime's usability checker reports (``bundle-report.md`` shows the partitions before
and after), and the bundle's rewrite gate checks the result against the unrewritten static graph.

* ``time-table``: the UNet's sinusoidal time features (Cast, Mul, Sin, Cos, Concat of the int64
  ``timestep``; NNAPI has no int64 tensors, NNAPI and CoreML NeuralNetwork no Sin/Cos) become one
  table of every training timestep, computed here by running that subgraph, and a ``Gather``
  indexed by an **int32** ``timestep`` input. The table stops at the first weight-bearing or
  quantization node, so it holds features, not the time MLP.
* ``gather-slice``: a ``Gather`` with a constant scalar index (the split of the two CFG halves)
  becomes ``Slice`` + ``Squeeze``: CoreML MLProgram takes no ``Gather``, CoreML NeuralNetwork no
  scalar index.
* ``unsqueeze-reshape``: ``Unsqueeze`` (not in CoreML NeuralNetwork's table) becomes a
  ``Reshape`` to its static output shape.
* ``matmul-2d``: a float32 ``MatMul`` of an N-D activation by a 2-D weight (a linear layer)
  becomes ``Reshape`` to 2-D, ``MatMul``, ``Reshape`` back: XNNPACK's fully connected kernel
  takes only 2-D inputs.
* ``norms``: ``InstanceNormalization`` (the GroupNorms) and ``LayerNormalization`` written as
  ``MatMul`` by a constant 1/n column (the mean; every EP here takes a MatMul by a constant, while
  NNAPI lists only ReduceMean and CoreML NeuralNetwork only ReduceSum), ``Sub``, ``Mul``,
  ``Add``, ``Sqrt``, ``Div``. A float16 norm computes in float32 between two ``Cast`` nodes (its
  statistics, scale and bias; one rounding to float16 at the end), as the fused kernels do:
  ``(x - mean)²`` overflows float16 from |x - mean| > 255.
  Opt-in (``--rewrites``): it helps NNAPI and CoreML NeuralNetwork only and slows the CPU EP
  (``benchmarks/bundle_rewrites.py`` measures the CPU time per rewrite set).
"""
from __future__ import annotations

import logging

import numpy as np

from moebius_edge import contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

REWRITES = ("time-table", "gather-slice", "unsqueeze-reshape", "matmul-2d", "norms")
# Per target, from the execution providers it ships with (bundle.EXECUTION_PROVIDERS): Android's
# XNNPACK gains the linear layers; "norms" only helps the optional NNAPI (and CoreML
# NeuralNetwork), while the fused norms of the CPU EP that runs them otherwise are faster.
DEFAULT_REWRITES = {"android": ("time-table", "gather-slice", "unsqueeze-reshape", "matmul-2d"),
                    "ios": ("time-table", "gather-slice", "unsqueeze-reshape")}
TIMESTEP_DTYPE = "int32"
# Where the time-feature table stops: nodes holding weights or quantization parameters.
_TABLE_STOP = {"MatMul", "Gemm", "Conv", "ConvTranspose", "QuantizeLinear", "DequantizeLinear"}
_FLOAT, _INT32, _INT64, _FLOAT16 = 1, 6, 7, 10


def parse(spec: str | None, target: str) -> tuple:
    """``--rewrites`` (a comma list, ``all``, ``none`` or None for the target's default) as names."""
    if spec is None:
        return DEFAULT_REWRITES[target]
    if spec == "none":
        return ()
    if spec == "all":
        return REWRITES
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [n for n in names if n not in REWRITES]
    if unknown or not names:
        raise UserError(f"unknown rewrite {', '.join(unknown) or repr(spec)}; choose from {', '.join(REWRITES)}, "
                        f"all or none")
    return tuple(n for n in REWRITES if n in names)  # a fixed order


class _Graph:
    """The graph being rewritten: shapes and dtypes from onnx's shape inference, fresh names."""

    def __init__(self, proto):
        import onnx

        self.onnx, self.proto, self.g = onnx, proto, proto.graph
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True).graph
        self.info = {v.name: v.type.tensor_type for v in (*inferred.input, *inferred.output, *inferred.value_info)}
        self.init = {t.name: t for t in self.g.initializer}
        self.opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        self._n = 0

    def shape(self, name) -> list:
        if name in self.init:
            return list(self.init[name].dims)
        return [d.dim_value for d in self.info[name].shape.dim]

    def dtype(self, name) -> int:
        return self.init[name].data_type if name in self.init else self.info[name].elem_type

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}/mobile_{self._n}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        t = self.onnx.numpy_helper.from_array(value, name)
        self.g.initializer.append(t)
        self.init[name] = t
        return name

    def set_nodes(self, nodes: list) -> None:
        """Replace the graph's nodes (a rewrite builds the new list, then sets it)."""
        del self.g.node[:]
        self.g.node.extend(nodes)

    def node(self, op: str, inputs, base: str, **attrs) -> tuple:
        out = self.name(base)
        return self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs), out


def time_table(gr: _Graph, num_timesteps: int) -> dict:
    """The ``time-table`` rewrite; returns what it changed ({} when the graph has no timestep)."""
    import onnxruntime as ort

    onnx, g = gr.onnx, gr.g
    name = contract.UNET.inputs[3].name  # the timestep
    inp = next((i for i in g.input if i.name == name), None)
    if inp is None:
        return {}
    cone, tensors = [], {name}
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type in _TABLE_STOP or not any(i in tensors for i in ins):
            continue
        if all(i in tensors or i in gr.init for i in ins):
            cone.append(n)
            tensors.update(n.output)
    inside = {id(n) for n in cone}
    used_outside = {i for n in g.node if id(n) not in inside for i in n.input} | {o.name for o in g.output}
    frontier = [o for n in cone for o in n.output if o in used_outside]
    if not frontier or any(o.name in tensors for o in g.output):
        raise UserError(f"the {name} input feeds no time features this rewrite knows; bundle with --rewrites none")
    # The subgraph alone, run for every training timestep.
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(
            cone, "time_features", [inp],
            [onnx.helper.make_tensor_value_info(f, gr.dtype(f), gr.shape(f)) for f in frontier],
            [gr.init[i] for i in sorted({i for n in cone for i in n.input if i in gr.init})]),
        opset_imports=gr.proto.opset_import, ir_version=gr.proto.ir_version)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
    in_dtype = {_INT64: np.int64, _INT32: np.int32}[inp.type.tensor_type.elem_type]
    rows = [sess.run(frontier, {name: np.array([t], in_dtype)}) for t in range(num_timesteps)]
    # The new input, and per frontier tensor: Gather(table, timestep) reshaped to the tensor's shape.
    new_nodes, tables = [], [np.stack([r[k] for r in rows]) for k in range(len(frontier))]
    for k, f in enumerate(frontier):
        table = gr.const(f"time_table_{k}", tables[k])
        gather, gathered = gr.node("Gather", [table, name], "time_table", axis=0)
        shape = gr.const("time_table_shape", np.array(gr.shape(f), np.int64))
        new_nodes += [gather, onnx.helper.make_node("Reshape", [gathered, shape], [f], name=gr.name("time_table"))]
    keep = [n for n in g.node if id(n) not in inside]
    gr.set_nodes(new_nodes + keep)
    inp.type.tensor_type.elem_type = _INT32
    return {"timestep_dtype": TIMESTEP_DTYPE, "timesteps": num_timesteps, "nodes_removed": len(cone),
            "ops_removed": sorted({n.op_type for n in cone}),
            "table_bytes": int(sum(t.nbytes for t in tables))}


def gather_slice(gr: _Graph) -> dict:
    """The ``gather-slice`` rewrite."""
    out, changed = [], 0
    for n in gr.g.node:
        idx = n.input[1] if n.op_type == "Gather" else None
        if idx in gr.init and not gr.init[idx].dims:
            i = int(gr.onnx.numpy_helper.to_array(gr.init[idx]))
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            axis %= len(gr.shape(n.input[0]))
            i %= gr.shape(n.input[0])[axis]
            sl, sliced = gr.node("Slice", [n.input[0], gr.const("gather_slice", np.array([i], np.int64)),
                                           gr.const("gather_slice", np.array([i + 1], np.int64)),
                                           gr.const("gather_slice", np.array([axis], np.int64))], n.name)
            sq = gr.onnx.helper.make_node("Squeeze", [sliced, gr.const("gather_slice", np.array([axis], np.int64))],
                                          list(n.output), name=gr.name(n.name))
            out += [sl, sq]
            changed += 1
        else:
            out.append(n)
    gr.set_nodes(out)
    return {"gathers": changed} if changed else {}


def unsqueeze_reshape(gr: _Graph) -> dict:
    """The ``unsqueeze-reshape`` rewrite."""
    changed = 0
    for n in gr.g.node:
        if n.op_type == "Unsqueeze":
            shape = gr.const("unsqueeze_reshape", np.array(gr.shape(n.output[0]), np.int64))
            n.op_type = "Reshape"
            del n.input[1:]
            n.input.append(shape)
            del n.attribute[:]  # opset < 13 keeps the axes as an attribute
            changed += 1
    return {"unsqueezes": changed} if changed else {}


def matmul_2d(gr: _Graph) -> dict:
    """The ``matmul-2d`` rewrite."""
    out, changed = [], 0
    for n in gr.g.node:
        a, b = (n.input[0], n.input[1]) if n.op_type == "MatMul" else (None, None)
        if (b in gr.init and len(gr.init[b].dims) == 2 and gr.dtype(b) == _FLOAT and a not in gr.init
                and len(gr.shape(a)) > 2):
            sa, sy = gr.shape(a), gr.shape(n.output[0])
            r1, flat = gr.node("Reshape", [a, gr.const("matmul_2d", np.array([-1, sa[-1]], np.int64))], n.name)
            mm, y = gr.node("MatMul", [flat, b], n.name)
            r2 = gr.onnx.helper.make_node("Reshape", [y, gr.const("matmul_2d", np.array(sy, np.int64))],
                                          list(n.output), name=gr.name(n.name))
            out += [r1, mm, r2]
            changed += 1
        else:
            out.append(n)
    gr.set_nodes(out)
    return {"matmuls": changed} if changed else {}


def _mean(gr: _Graph, x: str, n: int, base: str, col_dtype, nodes: list) -> str:
    """Mean of ``x`` over its last axis (length ``n``) as a MatMul by a constant 1/n column."""
    col = gr.const("norm_mean", np.full((n, 1), 1.0 / n, dtype=col_dtype))
    mm, y = gr.node("MatMul", [x, col], base)
    nodes.append(mm)
    return y


def _normalise(gr: _Graph, node, x: str, axes_from: int, eps: float, nodes: list) -> str:
    """(x - mean) / sqrt(var + eps) over the axes from ``axes_from`` to the last, in float32 (a
    float16 ``x`` is cast first)."""
    base = node.name
    shape = gr.shape(x)
    elem = gr.dtype(x)
    if elem == _FLOAT16:
        c, x = gr.node("Cast", [x], base, to=_FLOAT)
        nodes.append(c)
    lead, n = shape[:axes_from], int(np.prod(shape[axes_from:]))
    flat = x
    if axes_from != len(shape) - 1:  # the normalised axes as one last axis
        r, flat = gr.node("Reshape", [x, gr.const("norm_shape", np.array([*lead, n], np.int64))], base)
        nodes.append(r)
    mean = _mean(gr, flat, n, base, np.float32, nodes)
    sub, d = gr.node("Sub", [flat, mean], base)
    sq, d2 = gr.node("Mul", [d, d], base)
    nodes += [sub, sq]
    var = _mean(gr, d2, n, base, np.float32, nodes)
    add, ve = gr.node("Add", [var, gr.const("norm_eps", np.array(eps, np.float32))], base)
    sqrt, std = gr.node("Sqrt", [ve], base)
    div, y = gr.node("Div", [d, std], base)
    nodes += [add, sqrt, div]
    if flat is not x:
        r, y = gr.node("Reshape", [y, gr.const("norm_shape", np.array(shape, np.int64))], base)
        nodes.append(r)
    return y  # float32: the caller applies scale and bias, then casts back once


def _is_const(gr: _Graph, name: str, value: float) -> bool:
    return name in gr.init and bool(np.all(gr.onnx.numpy_helper.to_array(gr.init[name]) == value))


def norms(gr: _Graph) -> dict:
    """The ``norms`` rewrite."""
    onnx = gr.onnx
    out, counts = [], {}
    for n in gr.g.node:
        if n.op_type not in ("InstanceNormalization", "LayerNormalization"):
            out.append(n)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        eps = float(attrs.get("epsilon", 1e-5))
        x, scale = n.input[0], n.input[1]
        bias = n.input[2] if len(n.input) > 2 else ""
        rank = len(gr.shape(x))
        nodes = []
        if n.op_type == "InstanceNormalization":
            y = _normalise(gr, n, x, 2, eps, nodes)
            param_shape = [gr.shape(x)[1]] + [1] * (rank - 2)  # per channel
        else:
            if attrs.get("stash_type", 1) != 1 or len(n.output) > 1 and any(n.output[1:]):
                out.append(n)  # a LayerNorm whose mean/inv-std outputs are used: leave it
                continue
            axis = attrs.get("axis", -1) % rank
            y = _normalise(gr, n, x, axis, eps, nodes)
            param_shape = None  # broadcast as stored
        half = gr.dtype(x) == _FLOAT16
        for p, neutral, op in ((scale, 1.0, "Mul"), (bias, 0.0, "Add")):
            if not p or _is_const(gr, p, neutral):  # x * 1 and x + 0 are exact: no node
                continue
            if p in gr.init:  # float32, shaped to broadcast: one rounding to float16 at the end, as fused
                arr = onnx.numpy_helper.to_array(gr.init[p]).astype(np.float32)
                p = gr.const("norm_param", arr.reshape(param_shape) if param_shape is not None else arr)
            else:
                if half:
                    c, p = gr.node("Cast", [p], n.name, to=_FLOAT)
                    nodes.append(c)
                if param_shape is not None:
                    r, p = gr.node("Reshape", [p, gr.const("norm_shape", np.array(param_shape, np.int64))], n.name)
                    nodes.append(r)
            nd, y = gr.node(op, [y, p], n.name)
            nodes.append(nd)
        if half:
            c, y = gr.node("Cast", [y], n.name, to=_FLOAT16)
            nodes.append(c)
        nodes.append(onnx.helper.make_node("Identity", [y], [n.output[0]], name=gr.name(n.name)))
        out += nodes
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    gr.set_nodes(out)
    return counts


def _drop_identities(gr: _Graph) -> None:
    """Bypass the Identity nodes the rewrites left (their output keeps its name via the producer)."""
    outputs = {o.name for o in gr.g.output}
    rename = {}
    keep = []
    producer = {o: n for n in gr.g.node for o in n.output}
    for n in gr.g.node:
        if n.op_type == "Identity" and n.output[0] not in outputs and n.input[0] in producer:
            rename[n.input[0]] = n.output[0]
        else:
            keep.append(n)
    for n in keep:  # the producer writes the Identity's output name directly (its own, fresh
        for k, o in enumerate(n.output):  # name had no other reader)
            if o in rename:
                n.output[k] = rename[o]
    gr.set_nodes(keep)


def _drop_unused_initializers(gr: _Graph) -> None:
    used = {i for n in gr.g.node for i in n.input}
    keep = [t for t in gr.g.initializer if t.name in used]
    del gr.g.initializer[:]
    gr.g.initializer.extend(keep)


def apply(proto, names, *, num_timesteps: int) -> dict:
    """Apply the rewrites ``names`` to the static graph ``proto`` in place; returns what each changed."""
    from moebius_edge.mobile.static import toposort

    done = {}
    for name in names:
        gr = _Graph(proto)  # shapes of the graph as the previous rewrite left it
        if name == "time-table":
            changes = time_table(gr, num_timesteps)
        elif name == "gather-slice":
            changes = gather_slice(gr)
        elif name == "unsqueeze-reshape":
            changes = unsqueeze_reshape(gr)
        elif name == "matmul-2d":
            changes = matmul_2d(gr)
        else:
            changes = norms(gr)
        _drop_identities(gr)
        _drop_unused_initializers(gr)
        toposort(proto.graph)
        if changes:
            done[name] = changes
    nodes = len(proto.graph.node)
    log.info("mobile rewrites %s: %d nodes", ", ".join(done) or "none applied", nodes)
    return done
