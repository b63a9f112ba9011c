"""Static graphs for mobile execution providers: batch 1, every shape fixed, shape arithmetic folded.

NNAPI needs every tensor shape fixed and CoreML runs better that way (ONNX Runtime's usability
checker counts a node with a dynamic input as unsupported; issue 13 measured 94 NNAPI partitions on
the UNet with its dynamic batch). The exported graphs have one symbolic axis, the batch
(``contract.BATCH_AXIS``); their spatial sizes are fixed at export (docs/contract.md §2). So:

1. the graph is checked against the contract and the manifest (metadata, I/O names, ranks, sizes):
   a graph from another export or of another kind is refused in one line;
2. every graph input and output gets batch 1 (any other symbolic axis is refused), and the stale
   intermediate shapes are dropped;
3. constant folding: ``Shape`` of a value whose shape is now known, then every node whose inputs
   are all constants (``onnx.reference`` evaluates it), in one topological pass repeated until
   nothing changes; this turns the Shape → Gather → Concat chains of the batch axis into
   constant shape inputs. DequantizeLinear/QuantizeLinear are never folded (the QDQ pairs are
   what the int8 kernels match), nor are results over ``FOLD_MAX_ELEMENTS``. ONNX Runtime's own
   optimiser is deliberately not used here: it runs a graph through the converting machine's CPU
   EP, which wraps every float16 operator without an x86 float16 kernel in Casts to float32;
4. ONNX shape inference (strict mode) must give every value a fixed shape: a graph that keeps a
   dynamic shape is refused, so no node reaches a device with one.

The metadata (contract version, provenance, ...) is kept. ``graph_io`` reads the resulting inputs
and outputs for bundle.json.
"""
from __future__ import annotations

import heapq
import logging
import os
from pathlib import Path

from moebius_edge import contract, onnx_files
from moebius_edge.errors import UserError
from moebius_edge.models import ModelsFolder, total_bytes

log = logging.getLogger(__name__)

# Folding never materialises a constant larger than this (elements): what the batch axis leaves
# behind is shape arithmetic and a few small broadcast constants.
FOLD_MAX_ELEMENTS = 1 << 22
# Never folded: the int8 kernels match DequantizeLinear → op → QuantizeLinear, and folding a
# constant weight's DequantizeLinear would store it as float32.
NO_FOLD = ("DequantizeLinear", "QuantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
           "RandomUniformLike", "Multinomial", "If", "Loop", "Scan")

# ONNX TensorProto element types -> NumPy dtype names (what bundle.json records).
_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def _dims(value_info) -> list:
    """Shape of a graph input/output: ints, or the symbolic name, or None for an unknown dim."""
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def expected_dims(tensor: contract.TensorSpec, models: ModelsFolder, batch: int | None = None) -> list:
    """A contract tensor's shape with the manifest's sizes (and ``batch`` for the batch axis)."""
    n, lat = models.image_size, models.latent_size
    sizes = {contract.IMAGE_H: n, contract.IMAGE_W: n, contract.LATENT_H: lat, contract.LATENT_W: lat}
    if batch is not None:
        sizes[contract.BATCH_AXIS] = batch
    return [sizes.get(d, d) if isinstance(d, str) else d for d in tensor.shape]


def check_graph(proto, spec: contract.GraphSpec, models: ModelsFolder, where) -> None:
    """Refuse, in one line, a graph that is not ``spec`` of this models folder's export."""
    meta = {p.key: p.value for p in proto.metadata_props}
    if contract.META_CONTRACT_VERSION not in meta:
        raise UserError(f"{where} carries no moebius-edge metadata: it was not written by `moebius-edge export`")
    if meta[contract.META_CONTRACT_VERSION] != str(contract.CONTRACT_VERSION):
        raise UserError(f"{where} was written under contract version {meta[contract.META_CONTRACT_VERSION]}, this "
                        f"toolkit reads version {contract.CONTRACT_VERSION}: export the models again")
    graph = meta.get(contract.META_GRAPH)
    if graph is not None and graph != spec.key:
        raise UserError(f"{where} is the {graph!r} graph, expected {spec.key!r}; the models folder mixes graphs")
    for key in (contract.META_IMAGE_SIZE, contract.META_LATENT_SIZE):
        if key in meta and str(meta[key]) != str(models.get(key)):
            raise UserError(f"{where}: {contract.manifest_key(key)} is {meta[key]} in the graph but "
                            f"{models.get(key)} in the manifest; the folder mixes exports")
    inputs = {i.name: i for i in proto.graph.input}
    init = {t.name for t in proto.graph.initializer}
    declared = sorted(n for n in inputs if n not in init)
    if declared != sorted(spec.input_names):
        raise UserError(f"{where} has inputs {declared}, the contract says {spec.input_names}")
    outputs = [o.name for o in proto.graph.output]
    if outputs[:1] != spec.output_names:
        raise UserError(f"{where} has outputs {outputs}, the contract says {spec.output_names}")
    for t in (*spec.inputs, *spec.outputs):
        vi = inputs[t.name] if t in spec.inputs else proto.graph.output[0]
        got, want = _dims(vi), expected_dims(t, models)
        if len(got) != len(want) or any(isinstance(g, int) and isinstance(w, int) and g != w
                                        for g, w in zip(got, want)):
            raise UserError(f"{where}: {t.name!r} has shape {got}, but the manifest's sizes need {want}; "
                            f"the folder mixes exports")


def _fix_io(proto, batch: int, where) -> None:
    for vi in (*proto.graph.input, *proto.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if d.HasField("dim_param") and d.dim_param == contract.BATCH_AXIS:
                d.Clear()
                d.dim_value = batch
            else:  # the contract fixes every other size at export
                raise UserError(f"{where}: {vi.name!r} has an axis that is neither fixed nor the batch "
                                f"({d.dim_param or 'unknown'}); export the models again")
    del proto.graph.value_info[:]  # intermediate shapes written for a dynamic batch


def _fixed(value_info) -> bool:
    t = value_info.type.tensor_type
    return t.HasField("shape") and all(d.HasField("dim_value") and d.dim_value > 0 for d in t.shape.dim)


def dynamic_values(proto) -> list:
    """Names of the node outputs that ONNX shape inference cannot give a fixed shape."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    return [o for n in inferred.graph.node for o in n.output if o and not (o in known and _fixed(known[o]))]


def toposort(graph) -> None:
    """Order ``graph.node`` topologically, in place, keeping the given order where it is free
    (ONNX requires the order; ONNX Runtime's float16 converter appends its input Casts at the end)."""
    produced = {o: n for n, node in enumerate(graph.node) for o in node.output}
    need = [{produced[i] for i in node.input if i in produced} for node in graph.node]
    users = [[] for _ in graph.node]
    for n, deps in enumerate(need):
        for d in deps:
            users[d].append(n)
    ready = [n for n, deps in enumerate(need) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for u in users[n]:
            need[u].discard(n)
            if not need[u]:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise UserError("the graph has a cycle; export the models again")
    nodes = [graph.node[n] for n in order]
    del graph.node[:]
    graph.node.extend(nodes)


def fold_constants(proto) -> int:
    """Fold, in place, what static shapes make constant (see the module docstring); returns the
    number of nodes removed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    g = proto.graph
    removed = 0
    while True:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
        known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.input)}
        del inferred
        init = {t.name: t for t in g.initializer}
        values = {}  # name -> ndarray, converted on first use (weights stay protos)

        def const(name):
            if name not in values:
                values[name] = numpy_helper.to_array(init[name])
            return values[name]

        keep, new_init, changed = [], [], False
        for node in g.node:
            outs = None
            if node.domain in ("", "ai.onnx") and node.op_type not in NO_FOLD:
                if node.op_type == "Shape" and node.input[0] in known and _fixed(known[node.input[0]]):
                    dims = [d.dim_value for d in known[node.input[0]].type.tensor_type.shape.dim]
                    start = next((a.i for a in node.attribute if a.name == "start"), 0)
                    end = next((a.i for a in node.attribute if a.name == "end"), len(dims))
                    outs = [np.array(dims[start:end] if end else dims[start:], dtype=np.int64)]
                elif all(not i or i in init for i in node.input):
                    feeds = {i: const(i) for i in node.input if i}
                    outs = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
                    if sum(np.asarray(o).size for o in outs) > FOLD_MAX_ELEMENTS:
                        outs = None
            if outs is None:
                keep.append(node)
                continue
            for name, value in zip(node.output, outs):
                t = numpy_helper.from_array(np.asarray(value), name)
                init[name] = t
                new_init.append(t)
            removed += 1
            changed = True
        if not changed:
            break
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(new_init)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:
        g.initializer.remove(t)
    return removed


def make_static(models: ModelsFolder, spec: contract.GraphSpec, dst: Path, *, batch: int = 1) -> dict:
    """Write ``spec``'s graph of ``models`` to ``dst`` with every shape static; returns what changed."""
    import onnx

    src = models.graph_path(spec)
    size = total_bytes(models.entry(spec))  # with the UNet's sidecar (GraphSpec.mapped_weights)
    if size > onnx_files.EXTERNAL_DATA_THRESHOLD_BYTES:
        # An ORT-format file is one flatbuffer, which cannot exceed 2 GB, and a phone could not hold it.
        raise UserError(f"{src} and its weights take {size / 1e9:.1f} GB: too large for an ORT-format mobile "
                        f"graph; bundle a smaller precision (fp16 or int8)")
    proto = onnx.load(str(src))  # with its sidecar, if it has one
    check_graph(proto, spec, models, src)
    nodes_before = len(proto.graph.node)
    _fix_io(proto, batch, src)
    toposort(proto.graph)
    try:
        folded = fold_constants(proto)
    except Exception as e:  # noqa: BLE001 - onnx's checker and evaluator raise many types
        raise UserError(f"cannot fold the static {spec.key} graph: {str(e).splitlines()[0]}") from None
    dynamic = dynamic_values(proto)
    if dynamic:
        raise UserError(f"the static {spec.key} graph still has {len(dynamic)} values of dynamic shape "
                        f"(first: {dynamic[0]}); it cannot run on NNAPI")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        onnx.save_model(proto, str(tmp))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: batch %d, %d → %d nodes (%d folded), every shape static", spec.key, batch, nodes_before,
             len(proto.graph.node), folded)
    return {"nodes_source": nodes_before, "nodes_static": len(proto.graph.node), "dynamic_values": 0}


def graph_io(path) -> dict:
    """{"inputs": [...], "outputs": [...]} of a static graph: name, dtype (NumPy name), shape."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    init = {t.name for t in proto.graph.initializer}

    def describe(vi):
        return {"name": vi.name, "dtype": _ELEM_TYPES.get(vi.type.tensor_type.elem_type, "unknown"),
                "shape": _dims(vi)}

    return {"inputs": [describe(i) for i in proto.graph.input if i.name not in init],
            "outputs": [describe(o) for o in proto.graph.output]}
