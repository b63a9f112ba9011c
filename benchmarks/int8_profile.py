"""Where a UNet step's CPU time goes, FP32 against INT8 graphs: onnxruntime's own profiler.

    .venv/bin/python benchmarks/int8_profile.py --models DIR [--graph NAME=PATH ...] [--candidates]
        [--reps 3] [--json FILE]

Profiles the FP32 UNet of the models folder DIR and each ``--graph`` (default: DIR/int8's UNet;
``--candidates``: and the candidates ``benchmarks/quantize_int8.py`` kept in
DIR/.bench-int8-candidates) with ``SessionOptions.enable_profiling``, on the same seeded inputs,
``reps`` calls after a warm-up call; sums the kernel time per operator type (the ``op_name`` of
onnxruntime's node events, after its graph optimisations: QDQ groups appear as the fused integer
kernels it made of them, e.g. QLinearConv, and what it could not fuse as QuantizeLinear /
DequantizeLinear), and the convolutions' time by kind (1x1, 3x3, 15x15, depthwise: which kernels
INT8 speeds up), with the arithmetic each kind does (2 operations per multiply-add, from onnx's
shape inference at the feed's shapes) and so its rate in the graph. `make bench` runs this step: it
is the profile of the speed targets this machine misses (benchmarks/report.py's targets table). The
shares say where the time goes; the totals of a profiled run are not the benchmark's step times
(profiling adds overhead). Writes benchmarks/results/int8_profile.json and prints a table per graph.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import describe  # noqa: E402
from benchmarks.inputs import unet_feed  # noqa: E402
from moebius_edge import contract, models  # noqa: E402
from moebius_edge.mobile.ep_probe import node_macs  # noqa: E402


def conv_table(path: Path, feed: dict) -> dict:
    """{Conv node name: (kind, operations of one call)} of a (QDQ) graph at the feed's shapes, and
    {fused node name: Conv node name} (``_source``). Kind: ``depthwise``, ``1x1``, ``KxK`` (group
    1), or ``KxK grouped``, from the weight's shape (through a DequantizeLinear too); operations: 2
    per multiply-add (``mobile.ep_probe.node_macs``)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for i in m.graph.input:
        if i.name in feed:
            dims = i.type.tensor_type.shape.dim
            for d, n in zip(dims, feed[i.name].shape):
                d.ClearField("dim_param")
                d.dim_value = n
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*m.graph.value_info, *m.graph.output]}
    shapes.update({t.name: list(t.dims) for t in m.graph.initializer})
    producer = {o: n for n in m.graph.node for o in n.output}
    table = {}
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        w = shapes.get(n.input[1]) or [0]  # a DequantizeLinear's output too: shape inference gives it
        k = "x".join(map(str, a.get("kernel_shape", w[2:])))  # the attribute is optional
        group = a.get("group", 1)
        kind = "depthwise" if group > 1 and len(w) > 1 and w[1] == 1 else f"{k}" + (" grouped" if group > 1 else "")
        table[n.name] = (kind, 2 * node_macs(n, shapes.get))
    for n in m.graph.node:  # an NCHWc Conv is named after its output, or its fused activation's
        source = producer.get(n.input[0]) if n.input else None
        if n.op_type == "Conv":
            table.setdefault(n.output[0] + "_nchwc", n.name)
        elif n.op_type in ("Relu", "Clip", "Sigmoid", "LeakyRelu") and source is not None and source.op_type == "Conv":
            table[n.output[0] + "_nchwc"] = source.name
    return table


def _source(node: str, table: dict) -> str | None:
    """The graph's Conv node an optimised node came from: for a convolution onnxruntime moved into
    the NCHWc layout, the node ``table`` records for the name it gave it (its output's, or its
    fused activation's, with ``_nchwc``); otherwise the longest name it starts with (onnxruntime
    keeps the name and appends to it, e.g. ``_token_75``)."""
    if node in table:
        return table[node] if isinstance(table[node], str) else node
    return max((n for n, v in table.items() if not isinstance(v, str) and node.startswith(n)), key=len, default=None)


def after_warm_up(events: list) -> tuple:
    """(durations of the calls, kernel events of the calls) of a profile, the first call (the
    warm-up) left out: the profiler records from the session's creation."""
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    warm_end = runs[0][0] + runs[0][1]
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
               and e["ts"] >= warm_end]
    return [dur for _, dur in runs[1:]], kernels


def profile(path: Path, feed: dict, reps: int, threads: int, work: Path) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(work / path.stem)
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    table = conv_table(path, feed)  # before the session: never both graphs in memory at once
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    sess.run(None, feed)  # warm-up
    for _ in range(reps):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    del sess
    by_op, calls, by_kind = {}, {}, {}
    run_us, kernels = after_warm_up(events)
    for e in kernels:
        op = e["args"].get("op_name", "?")
        by_op[op] = by_op.get(op, 0) + e["dur"]
        calls[op] = calls.get(op, 0) + 1
        if "Conv" in op:  # Conv, FusedConv, QLinearConv: by the kind of the source Conv node it came from
            source = _source(e["name"][:-len("_kernel_time")], table)
            kind = table[source][0] if source else "other"
            by_kind[kind] = by_kind.get(kind, 0) + e["dur"]
    ops = {}
    for kind, n in (v for v in table.values() if not isinstance(v, str)):
        ops[kind] = ops.get(kind, 0) + n
    runs = len(run_us)  # the profiled calls, as the profile recorded them
    total = sum(by_op.values())
    rows = sorted(({"op": op, "ms_per_step": us / runs / 1000, "share": us / total, "nodes": calls[op] // runs}
                   for op, us in by_op.items()), key=lambda r: -r["ms_per_step"])
    conv_ms = {k: v / runs / 1000 for k, v in sorted(by_kind.items(), key=lambda x: -x[1])}
    return {"onnx": str(path), "reps": reps, "kernel_ms_per_step": total / runs / 1000,
            "run_ms_median": float(np.median(run_us)) / 1000, "by_op": rows,
            "conv_ms_per_step_by_kind": conv_ms,
            "conv_gop_by_kind": {k: ops.get(k, 0) / 1e9 for k in conv_ms},
            "conv_gop_per_s_by_kind": {k: ops[k] / 1e6 / ms for k, ms in conv_ms.items() if ops.get(k) and ms}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="FP32 models folder (full size)")
    ap.add_argument("--graph", action="append", default=[], metavar="NAME=PATH", help="a UNet to profile")
    ap.add_argument("--candidates", action="store_true",
                    help="and the candidates benchmarks/quantize_int8.py kept in DIR/.bench-int8-candidates")
    ap.add_argument("--reps", type=int, default=3, help="profiled calls after the warm-up (at least 1)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/int8_profile.json"))
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    folder = Path(args.models)
    fp32 = models.open_models(folder, "fp32")
    graphs = {"fp32": fp32.graph_path(contract.UNET)}
    if args.graph:
        graphs.update(dict(g.split("=", 1) for g in args.graph))
    else:
        shipped = folder / contract.precision_subdir("int8") / contract.UNET.file
        if shipped.is_file():
            graphs["int8 (shipped)"] = shipped
    if args.candidates:
        for p in sorted((folder / ".bench-int8-candidates").glob("*.onnx")):
            graphs[f"candidate {p.stem}"] = p
    feed = unet_feed(fp32.latent_size)
    results = {"machine": describe(), "models": str(folder), "models_provenance": fp32.provenance, "profiles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in graphs.items():
            results["profiles"][name] = profile(Path(path), feed, args.reps, args.threads, Path(tmp))
            r = results["profiles"][name]
            print(f"\n{name}: kernels {r['kernel_ms_per_step']:.0f} ms per step (profiled run {r['run_ms_median']:.0f} ms)")
            print("| operator | nodes | ms per step | share |\n|---|---|---|---|")
            for row in r["by_op"][:12]:
                print(f"| {row['op']} | {row['nodes']} | {row['ms_per_step']:.1f} | {100 * row['share']:.1f} % |")
            print("convolutions by kind, ms per step (GOP/s): " + ", ".join(
                f"{k} {v:.0f} ({r['conv_gop_per_s_by_kind'].get(k, 0):.0f})"
                for k, v in r["conv_ms_per_step_by_kind"].items()))
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
