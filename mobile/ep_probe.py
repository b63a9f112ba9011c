"""Execution-provider readiness of static graphs, measured with ONNX Runtime's usability checker.

Run in a child process only (``ort_tools.probe_graphs``): it imports ``onnxruntime.tools``.

    python -m moebius_edge.mobile.ep_probe OUT.json KEY GRAPH.onnx GRAPH.ort|- [KEY GRAPH.onnx GRAPH.ort|- ...]

For every graph and EP it records what ONNX Runtime's partitioner would do: the supported nodes,
the partitions (ONNX Runtime's own ``check_partitioning``, which mirrors the C++
``CreateSupportedPartitionNodeGroups``), the share of nodes and of multiply-accumulates, and every
node that falls back to the CPU, grouped by operator with the reason. EPs:

* ``nnapi``, ``coreml_neuralnetwork``, ``coreml_mlprogram``: the operator tables onnxruntime ships
  with its usability checker (``mobile_helpers/*_supported_ops.md``), plus one rule the tables do
  not state: NNAPI has no 64-bit integer tensors, so a node with an int64 activation input is not
  taken (the UNet's ``timestep`` input);
* ``xnnpack``: ``xnnpack_ops.XnnpackChecker``, the table kept in this repository.

It also reads each ``.ort`` file (``ort_summary``: operators and weight bytes by type), because
the converter changes float16 graphs: it runs them through the converting machine's CPU EP, which
surrounds every operator without a float16 kernel there with Casts to float32 and folds the casts
of constant weights into float32 copies. Those are in the .ort the device loads.

Internals used (``mobile_helpers.usability_checker._SupportedOpsChecker`` and
``check_partitioning``): the mobile extra pins onnxruntime to the release this was written for.

One correction is applied to the checker's input, and recorded: it counts an omitted optional
input (``""``, e.g. Resize's ``roi``) as a value of dynamic shape, which no EP does; the analysed
copy gives ``""`` a fixed shape so that the count of dynamic-shape fallbacks means what it says.
"""
from __future__ import annotations

import json
import pathlib
import sys

EPS = {  # report key -> (name, operator table shipped with onnxruntime or None for ours, max rank)
    "nnapi": ("NNAPI", "nnapi_supported_ops.md", 999),
    "coreml_neuralnetwork": ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md", 5),
    "coreml_mlprogram": ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md", 5),
    "xnnpack": ("XNNPACK", None, 999),
}
_INT64 = 7


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def node_macs(node, shape) -> int:
    """Multiply-accumulates of a Conv/ConvTranspose/MatMul/Gemm node from the inferred shapes
    (``shape(name)`` -> list of ints or None); 0 for every other operator."""
    try:
        if node.op_type == "Conv":
            w, y = shape(node.input[1]), shape(node.output[0])
            return _prod(y) * _prod(w[1:])  # (C_in / group)·kh·kw per output element
        if node.op_type == "ConvTranspose":
            x, w = shape(node.input[0]), shape(node.input[1])
            return _prod(x) * _prod(w[1:])
        if node.op_type == "MatMul":
            a, y = shape(node.input[0]), shape(node.output[0])
            return _prod(y) * int(a[-1])
        if node.op_type == "Gemm":
            a, y = shape(node.input[0]), shape(node.output[0])
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            return _prod(y) * int(a[0] if trans_a else a[-1])
    except (TypeError, IndexError):  # a shape inference could not give
        return 0
    return 0


class _TableChecker:
    """ONNX Runtime's table checker, plus NNAPI's missing 64-bit integer type; remembers why."""

    def __init__(self, inner, no_int64: bool, dtype, init):
        self.inner, self.no_int64, self.dtype, self.init = inner, no_int64, dtype, init
        self.reasons = {}

    def is_op_supported(self, node) -> bool:
        ok = self.inner.is_op_supported(node)
        if not ok:
            self.reasons[id(node)] = "operator not in the EP's table"
        elif self.no_int64 and any(i and i not in self.init and self.dtype(i) == _INT64 for i in node.input):
            self.reasons[id(node)] = "int64 activation input: NNAPI has no 64-bit integer tensors"
            ok = False
        return ok

    def reason(self, node) -> str:
        return self.reasons.get(id(node), "")

    def get_caveats(self) -> list:
        return self.inner.get_caveats()


def analyse(path: pathlib.Path) -> dict:
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, is_fixed_size_tensor

    from moebius_edge.mobile.xnnpack_ops import XnnpackChecker

    model = ModelProtoWithShapeInfo(path).model_with_shape_info
    g = model.graph
    # The correction described in the module docstring: "" (an omitted optional input) is no value.
    g.value_info.append(onnx.helper.make_tensor_value_info("", onnx.TensorProto.FLOAT, [1]))
    init = {t.name: t for t in g.initializer}
    info = {v.name: v for v in (*g.input, *g.output, *g.value_info)}

    def shape(name):
        if name in init:
            return list(init[name].dims)
        v = info.get(name)
        if v is None or not v.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]

    def dtype(name):
        if name in init:
            return init[name].data_type
        v = info.get(name)
        return v.type.tensor_type.elem_type if v is not None else None

    def fixed(name):
        return not name or name in init or (name in info and is_fixed_size_tensor(info[name]))

    nodes = list(g.node)
    macs = [node_macs(n, shape) for n in nodes]
    total_macs = sum(macs)
    ops = {}
    for n in nodes:
        key = f"{n.domain or 'ai.onnx'}:{n.op_type}"
        ops[key] = ops.get(key, 0) + 1
    tables = pathlib.Path(uc.__file__).parent
    result = {"nodes": len(nodes), "macs": total_macs, "operators": dict(sorted(ops.items())), "eps": {}}
    for ep, (label, table, max_rank) in EPS.items():
        if table is None:
            checker = XnnpackChecker(model)
        else:
            checker = _TableChecker(uc._SupportedOpsChecker(tables / table), ep == "nnapi", dtype, init)
        part = uc.check_partitioning(g, checker, require_fixed_input_sizes=True, max_rank=max_rank)
        taken = {id(n) for group in part.supported_groups for n in group}
        fallbacks = {}
        for n, m in zip(nodes, macs):
            if id(n) in taken:
                continue
            why = checker.reason(n)
            if not why:
                if not all(fixed(i) for i in n.input):
                    why = "an input has a dynamic shape"
                elif any(len(shape(i) or []) > max_rank for i in n.input if i):
                    why = f"an input has rank > {max_rank}"
                else:
                    why = "not taken"
            key = (f"{n.domain or 'ai.onnx'}:{n.op_type}", why)
            f = fallbacks.setdefault(key, {"op": key[0], "reason": why, "nodes": 0, "macs": 0, "examples": []})
            f["nodes"] += 1
            f["macs"] += m
            if len(f["examples"]) < 3:
                f["examples"].append(n.name)
        supported_macs = sum(m for n, m in zip(nodes, macs) if id(n) in taken)
        result["eps"][ep] = {
            "label": label,
            "table": f"onnxruntime/tools/mobile_helpers/{table}" if table else "moebius_edge/mobile/xnnpack_ops.py",
            "nodes": len(nodes), "supported_nodes": len(taken), "partitions": len(part.supported_groups),
            "partition_sizes": sorted((len(grp) for grp in part.supported_groups), reverse=True),
            "macs": total_macs, "supported_macs": supported_macs,
            "dynamic_shape_nodes": part.nodes_unsupported_due_to_dynamic_input,
            "fallbacks": sorted(fallbacks.values(), key=lambda f: (-f["macs"], -f["nodes"], f["op"])),
            "unchecked_caveats": list(checker.get_caveats()),
        }
    return result


_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16"}


def ort_summary(path: pathlib.Path) -> dict:
    """Operators and initializer bytes by type of an ORT-format file (its flatbuffer schema)."""
    import onnxruntime.tools.ort_format_model  # noqa: F401 - puts the flatbuffer bindings on sys.path
    from ort_flatbuffers_py.fbs import InferenceSession

    buf = path.read_bytes()
    graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model().Graph()
    ops = {}
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        key = f"{(node.Domain() or b'').decode() or 'ai.onnx'}:{node.OpType().decode()}"
        ops[key] = ops.get(key, 0) + 1
    weights = {}
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        name = _DTYPES.get(t.DataType(), str(t.DataType()))
        weights[name] = weights.get(name, 0) + t.RawDataLength()
    return {"nodes": graph.NodesLength(), "operators": dict(sorted(ops.items())), "weight_bytes": weights}


def main(argv) -> int:
    import onnxruntime

    out, pairs = pathlib.Path(argv[0]), argv[1:]
    report = {"onnxruntime": onnxruntime.__version__,
              "corrections": ["an omitted optional input (\"\") is not counted as a dynamic shape"],
              "by_graph": {}}
    for key, onnx_path, ort_path in zip(pairs[::3], pairs[1::3], pairs[2::3]):
        report["by_graph"][key] = analyse(pathlib.Path(onnx_path))
        if ort_path != "-":  # "-": a graph with no .ort file (the bundle's graphs before rewriting)
            report["by_graph"][key]["ort"] = ort_summary(pathlib.Path(ort_path))
    out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
