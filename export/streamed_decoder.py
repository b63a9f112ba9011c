"""Derive the low-memory mode's streamed decoder from ``vae_decoder.onnx``: onnx in, onnx out, no torch.

``runtime/streamed_decoder.py`` says what the graphs are for and runs them. Derivation, on the
graph as exported (any decoder of the SD kl-f8 layout, the tiny test VAE included):

1. the *cut* is the input of the decoder's last Resize (a nearest 2× upsampler); the *head* is
   the graph up to it, extracted with ``onnx.utils.Extractor``; the *stage* is everything after;
2. each GroupNorm of the stage (exported as Reshape → InstanceNormalization with unit scale and
   zero bias → Reshape, followed by the affine) becomes ``x·scale + shift`` with ``scale`` and
   ``shift`` new graph inputs;
3. a tensor's *level* is the number of GroupNorms between the cut and it; pass ``L`` computes the
   level-``L`` tensors that later passes read (stored) and the level-``L`` GroupNorm inputs (their
   statistics), from stored tensors of lower levels. Level-0 tensors read only at level 1 (the
   upsampler's output: the stage's widest tensor) are recomputed from the cut instead of stored;
4. each pass gets its halo: the rows on each side its outputs depend on (3×3 convolutions,
   counted at the resolution they run at), so a strip of rows computes its own rows exactly.

Anything else in the stage (attention, reshapes, strided convolutions, a non-float32 GroupNorm,
an upsampler whose rows do not map i → i // 2) makes the derivation decline: the folder then has
no streamed decoder and the low-memory mode decodes whole. So does a result further than
``STREAM_ATOL`` from the whole graph on a random latent, checked before it ships.

    python -m moebius_edge.export.streamed_decoder MODELS   # add it to a folder exported before
"""
from __future__ import annotations

import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from moebius_edge import contract, models
from moebius_edge.errors import UserError
from moebius_edge.streamed_decoder import Norm, Pass, StreamedDecoder, StreamPlan

log = logging.getLogger(__name__)

# Largest |streamed − whole| on the decoder's [0, 1] image for a random latent: the sums of a
# strip's statistics and the whole graph's differ only in rounding (1.5e-5 measured at 512²).
STREAM_ATOL = 1e-4
# Ops a pass may hold besides Conv and Resize: elementwise, so a strip's rows depend only on the same rows.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sigmoid", "Relu", "Clip", "Tanh", "Identity", "Constant"}
ROWS, CUT_ROWS = "rows", "cut_rows"  # the symbolic heights of a pass's inputs and outputs
# Names the rewritten GroupNorms' new tensors take (checked against the graph's own)
STAGE_PREFIX = "stream."
# A nearest 2× Resize maps output row i to input row i // 2 with these (coordinate transformation,
# nearest rounding) modes, so a strip of rows [lo, hi) needs input rows [lo // 2, hi // 2) only
NEAREST_FLOOR = {(b"asymmetric", b"floor"), (b"asymmetric", b"round_prefer_floor"),
                 (b"half_pixel", b"round_prefer_floor"), (b"half_pixel", b"round_prefer_ceil"),
                 (b"pytorch_half_pixel", b"round_prefer_floor"), (b"pytorch_half_pixel", b"round_prefer_ceil")}


class Declined(Exception):
    """The decoder's last stage is not one this derivation handles."""


def _constant(model, name: str):
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _attr(node, name: str, default=None):
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _replace_group_norms(model, stage: set) -> tuple:
    """Rewrite the stage's GroupNorms as ``x·scale + shift`` (new inputs); returns (model, norms,
    {the Mul's output: the GroupNorm's source})."""
    import onnx
    from onnx import helper

    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    infos = {v.name: v.type.tensor_type for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    taken = set(producer) | set(infos) | {t.name for t in model.graph.initializer}
    batch = [d.dim_value or d.dim_param for d in infos[model.graph.input[0].name].shape.dim][0]
    drop, add, norms, muls = set(), {}, [], {}
    for n in nodes:
        if n.op_type != "InstanceNormalization" or n.output[0] not in stage:
            continue
        first = producer.get(n.input[0])
        after = consumers[n.output[0]]
        if first is None or first.op_type != "Reshape" or len(after) != 1 or after[0].op_type != "Reshape":
            raise Declined(f"{n.name}: an InstanceNormalization that is not a GroupNorm's")
        scale, bias = _constant(model, n.input[1]), _constant(model, n.input[2])
        if scale is None or bias is None or not (np.all(scale == 1) and np.all(bias == 0)):
            raise Declined(f"{n.name}: a GroupNorm with its affine inside the InstanceNormalization")
        x, out = first.input[0], after[0].output[0]
        info = infos.get(x)
        dims = [d.dim_value or d.dim_param for d in info.shape.dim] if info is not None else []
        if info is None or info.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
            raise Declined(f"{n.name}: {x} is not a float32 (batch, C, H, W) tensor")
        if not isinstance(dims[1], int) or dims[1] % scale.size:
            raise Declined(f"{n.name}: unknown channel count of {x}")
        if any(norm.source == x for norm in norms):
            raise Declined(f"{x}: normalised twice")
        k = len(norms)
        norm = Norm(source=x, groups=int(scale.size), eps=float(_attr(n, "epsilon", 1e-5)),
                    scale=f"{STAGE_PREFIX}norm{k}.scale", shift=f"{STAGE_PREFIX}norm{k}.shift")
        scaled = f"{STAGE_PREFIX}norm{k}.scaled"
        if {norm.scale, norm.shift, scaled} & taken:
            raise Declined(f"the graph already has a tensor named {STAGE_PREFIX}norm{k}.*")
        norms.append(norm)
        muls[scaled] = x
        for name in (norm.scale, norm.shift):
            model.graph.input.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [batch, dims[1], 1, 1]))
        drop |= {first.output[0], n.output[0]}
        add[out] = [helper.make_node("Mul", [x, norm.scale], [scaled], name=scaled + ".Mul"),
                    helper.make_node("Add", [scaled, norm.shift], [out], name=scaled + ".Add")]
    if not norms:
        raise Declined("no GroupNorm after the last upsampler")
    rewritten = []
    for n in nodes:
        if n.output[0] in add:
            rewritten += add[n.output[0]]
        elif n.output[0] not in drop:
            rewritten.append(n)
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    return model, norms, muls


def _stage(model, cut: str) -> set:
    """The nodes that depend on ``cut``, by their first output's name (a node's identity: protobuf
    gives no stable Python objects). Declines a stage that reads a tensor computed before the cut
    (other than a constant): a strip could not be fed it."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    constants |= {i.name for i in model.graph.input if i.name.startswith(STAGE_PREFIX)}  # the norms' inputs
    seen, names = {cut}, set()
    for n in model.graph.node:  # topological
        if any(i in seen for i in n.input):
            names.add(n.output[0])
            seen.update(n.output)
            if any(i and i not in seen and i not in constants for i in n.input):
                raise Declined(f"{n.name}: reads a tensor computed before the last upsampler")
    return names


def _levels(nodes, cut: str, muls: dict) -> tuple:
    """({tensor: level}, {tensor: highest level of a node reading it})."""
    level = {cut: 0}
    read = defaultdict(lambda: -1)
    for n in nodes:
        ins = [i for i in n.input if i in level]
        if not ins:
            continue
        lv = level[muls[n.output[0]]] + 1 if n.output[0] in muls else max(level[i] for i in ins)
        for i in ins:
            read[i] = max(read[i], lv)
        for o in n.output:
            level[o] = lv
    return level, read


def _needed_inputs(nodes, outputs: list, available: set) -> list:
    """The available tensors (and norm inputs) the outputs are computed from, in a stable order."""
    producer = {o: n for n in nodes for o in n.output}
    need, seen, stack = [], set(), list(outputs)
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in available:
            need.append(t)
        elif t in producer:
            stack.extend(producer[t].input)
    return sorted(need)


def _halo(model, graph, inputs: list, factor: int, cut: str) -> int:
    """Rows of context on each side, at full resolution, that the graph's outputs need."""
    halo = {i: 0 for i in inputs}
    res = {i: factor if i == cut else 1 for i in inputs}
    for n in graph.node:
        ins = [i for i in n.input if i in halo and res[i] is not None]
        if n.op_type == "Constant" or not ins:
            for o in n.output:
                halo[o], res[o] = 0, None
            continue
        h, r = max(halo[i] for i in ins), max(res[i] for i in ins)
        if n.op_type == "Conv":
            weight = _constant(model, n.input[1])
            k = _attr(n, "kernel_shape") or (list(weight.shape[2:]) if weight is not None else None)
            d = _attr(n, "dilations", [1, 1])
            pads = _attr(n, "pads", [0, 0, 0, 0])
            if not k or any(s != 1 for s in _attr(n, "strides", [1, 1])) or k[0] % 2 == 0 \
                    or pads[0] != pads[2] or pads[0] != d[0] * (k[0] - 1) // 2 \
                    or _attr(n, "auto_pad", b"NOTSET") != b"NOTSET":
                raise Declined(f"{n.name}: a convolution that changes the height")
            h += r * pads[0]
        elif n.op_type == "Resize":
            modes = (_attr(n, "coordinate_transformation_mode", b"half_pixel"),
                     _attr(n, "nearest_mode", b"round_prefer_floor"))
            if _attr(n, "mode", b"nearest") != b"nearest" or modes not in NEAREST_FLOOR:
                raise Declined(f"{n.name}: a Resize whose output row i is not input row i // 2")
            r = 1
        elif n.op_type not in ELEMENTWISE:
            raise Declined(f"{n.name}: {n.op_type} in the full-resolution stage")
        for o in n.output:
            halo[o], res[o] = h, r
    top = max(halo[o.name] for o in graph.output)
    return -(-top // factor) * factor


def _dynamic_rows(model, cut: str) -> None:
    """Let a pass take strips: its inputs' and outputs' height symbolic (the cut's its own: it has
    half the rows), no stale inner shapes."""
    for v in (*model.graph.input, *model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and not (dims[2].dim_value == 1 and dims[3].dim_value == 1):
            dims[2].dim_param = CUT_ROWS if v.name == cut else ROWS
    del model.graph.value_info[:]


def _save(part, path: Path, metadata: dict, graph: str) -> None:
    """Save a head or pass graph with the decoder's metadata (provenance, versions), its own
    ``META_GRAPH``: the key its session's settings are chosen by."""
    import onnx

    del part.metadata_props[:]
    for k, v in {**metadata, contract.META_GRAPH: graph}.items():
        part.metadata_props.add(key=k, value=v)
    onnx.save_model(part, str(path))


def derive(decoder: Path, root: Path, decoder_sha256: str) -> StreamPlan:
    """Write the head and pass graphs into ``root/STREAMED_DECODER_DIR`` and return the plan (graph
    entries relative to ``root``) for the decoder of that SHA-256 (its manifest entry's); raises
    ``Declined`` for a stage it does not handle."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.shape_inference.infer_shapes(onnx.load(str(decoder)))
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    if not resizes:
        raise Declined("no upsampler")
    cut = resizes[-1].input[0]
    scales = _constant(model, resizes[-1].input[2]) if len(resizes[-1].input) > 2 else None
    if scales is None or list(scales) != [1, 1, 2, 2]:
        raise Declined("the last upsampler is not a 2× Resize by scales")
    factor = 2
    inputs = [i.name for i in model.graph.input]
    metadata = {p.key: p.value for p in model.metadata_props}
    model, norms, muls = _replace_group_norms(model, _stage(model, cut))
    in_stage = _stage(model, cut)
    stage = [n for n in model.graph.node if n.output[0] in in_stage]
    level, read = _levels(stage, cut, muls)
    output = model.graph.output[0].name
    sources = {n.source for n in norms}

    def stored(t: str) -> bool:
        if t == cut or t == output:
            return True
        # read at a later level: kept whole, except what the upsampler computes from the cut and
        # only the next level reads (the stage's widest tensors): recomputed from the cut instead
        return read[t] > level[t] and not (level[t] == 0 and read[t] == 1)

    folder = root / contract.STREAMED_DECODER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    extractor = Extractor(model)
    head_path = folder / "head.onnx"
    _save(extractor.extract_model(inputs, [cut]), head_path, metadata, contract.VAE_DECODER.key)
    plans, last_read = [], {}
    for lv in range(max(level.values()) + 1):
        outs = sorted({t for t, l in level.items() if l == lv and t != cut and (stored(t) or t in sources)})
        if not outs:
            continue
        available = {cut} | {t for t, l in level.items() if l < lv and stored(t)}
        available |= {x for n in norms if level[n.source] < lv for x in (n.scale, n.shift)}
        ins = _needed_inputs(stage, outs, available)
        part = extractor.extract_model(ins, outs)
        halo = _halo(model, part.graph, ins, factor, cut)
        _dynamic_rows(part, cut)
        path = folder / f"pass{len(plans) + 1}.onnx"
        _save(part, path, metadata, contract.STREAMED_DECODER_PASS)
        for t in ins:
            last_read[t] = len(plans)
        plans.append((path, ins, outs, halo, [t for t in outs if stored(t)]))
    passes = tuple(Pass(entry=models.graph_entry(path, root), inputs=tuple(ins), outputs=tuple(outs), halo=halo,
                        store=tuple(keep), free=tuple(sorted(t for t, i in last_read.items() if i == k and t in level)))
                   for k, (path, ins, outs, halo, keep) in enumerate(plans))
    return StreamPlan(source_sha256=decoder_sha256, head=models.graph_entry(head_path, root), cut=cut,
                      factor=factor, norms=tuple(norms), passes=passes, output=output)


def check(decoder: Path, root: Path, plan: StreamPlan, latent_size: int, seed: int = 0) -> float:
    """Largest |streamed − whole| on the decoder's [0, 1] image for a random latent, both on the CPU."""
    from moebius_edge.session import SessionConfig, create_session

    latent = np.random.default_rng(seed).standard_normal(
        (1, contract.LATENT_CHANNELS, latent_size, latent_size)).astype(np.float32) * 4
    whole = create_session(decoder, SessionConfig(provider="cpu"))
    ref = whole.run(None, {contract.VAE_DECODER.inputs[0].name: latent})[0]
    del whole
    # strips of a quarter of the height: several strips at any size, the halos crossing them
    width = latent_size * contract.VAE_FACTOR
    got = StreamedDecoder(root, plan, SessionConfig(provider="cpu", low_memory=True),
                          strip_pixels=max(1, width * width // 4)).run(latent)
    err = float(np.abs(got - ref).max())
    return err if np.isfinite(err) else float("inf")


def add_streamed_decoder(staging: Path, decoder: Path, decoder_sha256: str, latent_size: int) -> dict | None:
    """Derive, check and write the streamed decoder beside ``decoder`` in ``staging``; the manifest
    record, or None (logged) where the decoder's last stage is not one it handles or the check
    fails (the low-memory mode then decodes whole, as before it existed)."""
    import shutil

    try:
        plan = derive(decoder, staging, decoder_sha256)
        err = check(decoder, staging, plan, latent_size)
        if err > STREAM_ATOL:
            raise Declined(f"max |streamed - whole| {err:.1e} > {STREAM_ATOL:.0e}")
    except (Declined, UserError) as e:  # UserError: ONNX Runtime could not run a derived graph
        shutil.rmtree(staging / contract.STREAMED_DECODER_DIR, ignore_errors=True)
        log.warning("no streamed decoder for the low-memory mode (%s): it will decode whole", e)
        return None
    log.info("streamed decoder: %d passes, max |streamed - whole| %.1e", len(plan.passes), err)
    return plan.to_json()


def add_to_folder(models_dir) -> str:
    """Add the streamed decoder to a models folder exported before it existed (or re-derive it);
    returns what was done, in a line. The folder is never a mix: the manifest first loses the old
    record (low-memory runs decode whole meanwhile), the files are swapped by renames, and the
    manifest gets the new record last."""
    from moebius_edge.commands import require

    require("onnx", "quantize")  # the lightest extra with onnx
    fp32 = models.open_models(models_dir, "fp32")
    fp32.verify({contract.VAE_DECODER.key})  # what the plan is derived from is what the manifest names
    decoder = fp32.graph_path(contract.VAE_DECODER)
    staging = models.staging_folder(fp32.root, "stream")
    try:
        record = add_streamed_decoder(staging, decoder, fp32.entry(contract.VAE_DECODER)[contract.GRAPH_SHA256],
                                      fp32.latent_size)
        if record is None:
            raise UserError(f"{decoder}: no streamed decoder could be derived (the warning above says why)")
        manifest = {k: v for k, v in fp32.manifest.items() if k != contract.MANIFEST_STREAMED_DECODER}
        models.write_manifest(fp32.root, manifest)
        dest = fp32.root / contract.STREAMED_DECODER_DIR
        models.replace_folder(staging / contract.STREAMED_DECODER_DIR, dest)
        models.write_manifest(fp32.root, {**manifest, contract.MANIFEST_STREAMED_DECODER: record})
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return f"{dest}: {len(record['passes'])} passes, checked against {decoder.name}"


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m moebius_edge.export.streamed_decoder",
                                 description=add_to_folder.__doc__.split(";")[0] + ".")
    ap.add_argument("models", help="models folder (its FP32 graphs)")
    args = ap.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package = logging.getLogger("moebius_edge")
    package.addHandler(handler)
    package.setLevel(logging.WARNING)
    try:
        print(add_to_folder(args.models))
    except UserError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
