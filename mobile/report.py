"""The execution-provider readiness report of a bundle: bundle-report.json and bundle-report.md.

Input: the probe of the static graphs (``ep_probe``: ONNX Runtime's usability checker for NNAPI
and CoreML, ``xnnpack_ops`` for XNNPACK) and bundle.json's content. Per graph and EP: nodes
taken, partitions, the share of nodes and of multiply-accumulates (MACs: Conv, ConvTranspose,
MatMul and Gemm, from the static shapes), and every operator that falls back to the CPU with the
reason; and the same figures for the static graphs before the mobile rewrites (``rewrite``).
These figures are a static analysis of the graphs, not a measurement on a device.
"""
from __future__ import annotations

import json
from pathlib import Path

from moebius_edge import contract

HOW_TO_READ = (
    "A *partition* is a connected group of nodes one EP runs; for NNAPI and CoreML each partition is "
    "compiled separately and every boundary is a hand-off between the CPU and the accelerator on every "
    "call (19 UNet calls per image). XNNPACK runs on the CPU cores: its boundaries cost an NCHW↔NHWC "
    "transpose, and the element-wise operators it leaves to ONNX Runtime's CPU EP are expected. MACs are "
    "multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm computed from the static shapes; norms "
    "and element-wise operators count 0 MACs but not 0 time. Unchecked caveats are conditions of the EP "
    "that the operator tables state but the checker does not verify (attributes, constant inputs).")


def _pct(a, b) -> str:
    return f"{100.0 * a / b:.1f} %" if b else "–"


def _mac(n) -> str:
    return f"{n / 1e9:.2f} G" if n >= 1e8 else f"{n / 1e6:.1f} M"


def converter_changes(probe: dict) -> dict:
    """Per graph: what the ORT-format converter changed (nodes, Casts added, weight bytes by type)."""
    out = {}
    for key, g in probe["by_graph"].items():
        ort = g.get("ort")
        if not ort:
            continue
        casts = ort["operators"].get("ai.onnx:Cast", 0) - g["operators"].get("ai.onnx:Cast", 0)
        out[key] = {"static_nodes": g["nodes"], "ort_nodes": ort["nodes"], "casts_added": casts,
                    "weight_bytes": ort["weight_bytes"]}
    return out


CAST_NOTE = (
    "The converter runs each graph through the CPU EP of the machine that converts it, and that EP wraps "
    "every operator it has no float16 kernel for (most of them on x86-64) in Casts to float32 and back; "
    "those Casts are saved in the .ort (\"Casts added\" above, the weights themselves stay float16 in the "
    "file). On the device the Casts are ordinary nodes: the operators between them compute in float32, "
    "whichever EP takes them. Not measured on a device (docs/mobile.md §7).")


def summary_rows(probe: dict) -> list:
    """One row per graph and EP: the figures bundle.json readers and benchmarks want."""
    rows = []
    for key, g in probe["by_graph"].items():
        for ep, e in g["eps"].items():
            rows.append({"graph_key": key, "ep": ep, "nodes": e["nodes"], "supported_nodes": e["supported_nodes"],
                         "node_share": e["supported_nodes"] / e["nodes"] if e["nodes"] else 0.0,
                         "partitions": e["partitions"], "macs": e["macs"], "supported_macs": e["supported_macs"],
                         "mac_share": e["supported_macs"] / e["macs"] if e["macs"] else 0.0,
                         "dynamic_shape_nodes": e["dynamic_shape_nodes"],
                         "fallback_ops": sorted({f["op"].split(":")[-1] for f in e["fallbacks"]})})
    return rows


def rewrite_rows(before: dict, after: dict) -> list:
    """Per graph and EP: the figures before and after the mobile rewrites, and the fallback
    operators the rewrites removed."""
    rows = []
    b = {(r["graph_key"], r["ep"]): r for r in summary_rows(before)}
    for r in summary_rows(after):
        old = b[(r["graph_key"], r["ep"])]
        rows.append({"graph_key": r["graph_key"], "ep": r["ep"],
                     "partitions": [old["partitions"], r["partitions"]],
                     "supported_nodes": [old["supported_nodes"], r["supported_nodes"]],
                     "nodes": [old["nodes"], r["nodes"]], "node_share": [old["node_share"], r["node_share"]],
                     "fallbacks_removed": sorted(set(old["fallback_ops"]) - set(r["fallback_ops"])),
                     "fallbacks_left": r["fallback_ops"]})
    return rows


def _rewrite_section(bundle: dict, probe: dict, before: dict) -> list:
    rw = bundle.get("mobile_rewrites", {})
    lines = ["", "## Mobile rewrites: partitions before → after", "",
             f"Applied: {', '.join(rw.get('applied', [])) or 'none'} (available: {', '.join(rw.get('available', []))}; "
             f"`--rewrites`, docs/mobile.md §3). Each rewritten graph passed the rewrite gate against the static "
             f"graph before the rewrites:", ""]
    for key, g in bundle[contract.MANIFEST_GRAPHS].items():
        r = g.get("rewrites")
        if r:
            what = "; ".join(f"{k}: {', '.join(f'{a} {b}' for a, b in v.items() if not isinstance(b, list))}"
                             for k, v in r["applied"].items()) or "nothing applies"
            lines.append(f"* {key}: {what}; relative L2 {r['gate']['rel_l2']:.2e} (≤ {r['gate']['tolerance']:g})")
    lines += ["", "| graph | EP | partitions | nodes taken | fallbacks removed | fallbacks left |",
              "|---|---|---|---|---|---|"]
    for r in rewrite_rows(before, probe):
        label = probe["by_graph"][r["graph_key"]]["eps"][r["ep"]]["label"]
        lines.append(f"| {r['graph_key']} | {label} | {r['partitions'][0]} → {r['partitions'][1]} | "
                     f"{_pct(r['supported_nodes'][0], r['nodes'][0])} → {_pct(r['supported_nodes'][1], r['nodes'][1])} | "
                     f"{', '.join(r['fallbacks_removed']) or '–'} | {', '.join(r['fallbacks_left']) or '–'} |")
    return lines


def markdown(bundle: dict, probe: dict, before: dict | None = None) -> str:
    graphs = bundle[contract.MANIFEST_GRAPHS]
    ortv = bundle["onnxruntime"]
    lines = [f"# Execution-provider readiness: {bundle['target']} bundle, "
             f"{bundle[contract.manifest_key(contract.META_PRECISION)]}", "",
             f"Graphs at batch 1 with every shape static, in ORT format {ortv['ort_format_version']} written by "
             f"onnxruntime {ortv['writer_version']} (runtime {ortv['min_runtime_version']} or newer on the device). "
             f"Analysed with onnxruntime {probe['onnxruntime']}'s usability checker (NNAPI, CoreML) and the XNNPACK "
             f"table of `mobile/xnnpack_ops.py`. Static analysis, not a device measurement."
             + (" The partitions are those of the static QDQ graph; the .ort runs its QDQ groups as fused "
                "integer kernels (\"Fixed\" optimisation style)." if ortv.get("optimization_style") == "Fixed" else ""),
             "",
             "| file | size |", "|---|---|"]
    for key, g in graphs.items():
        lines.append(f"| `{g[contract.GRAPH_FILE]}` | {g[contract.GRAPH_BYTES] / 2**20:.1f} MiB |")
    changes = converter_changes(probe)
    if changes:
        lines += ["", "## What the ORT-format converter changed", "",
                  "| graph | static ONNX nodes | .ort nodes | Casts added | .ort weights by type |", "|---|---|---|---|---|"]
        for key, c in changes.items():
            w = ", ".join(f"{t} {b / 2**20:.1f} MiB" for t, b in sorted(c["weight_bytes"].items()))
            lines.append(f"| {key} | {c['static_nodes']} | {c['ort_nodes']} | {c['casts_added']} | {w} |")
        if any(c["casts_added"] for c in changes.values()):
            lines += ["", CAST_NOTE]
    lines += ["", "## Summary", "", HOW_TO_READ, "",
              "| graph | EP | nodes taken | partitions | MACs taken | falls back to the CPU |",
              "|---|---|---|---|---|---|"]
    for r in summary_rows(probe):
        label = probe["by_graph"][r["graph_key"]]["eps"][r["ep"]]["label"]
        lines.append(f"| {r['graph_key']} | {label} | {r['supported_nodes']}/{r['nodes']} ({_pct(r['supported_nodes'], r['nodes'])}) "
                     f"| {r['partitions']} | {_pct(r['supported_macs'], r['macs'])} | "
                     f"{', '.join(r['fallback_ops']) or '–'} |")
    if before is not None:
        lines += _rewrite_section(bundle, probe, before)
    for key, g in probe["by_graph"].items():
        lines += ["", f"## {key}: {g['nodes']} nodes, {_mac(g['macs'])}MAC", ""]
        for ep, e in g["eps"].items():
            sizes = e["partition_sizes"]
            shown = ", ".join(map(str, sizes[:12])) + (f", … ({len(sizes) - 12} more)" if len(sizes) > 12 else "")
            lines += [f"### {e['label']}", "",
                      f"{e['supported_nodes']} of {e['nodes']} nodes ({_pct(e['supported_nodes'], e['nodes'])}), "
                      f"{_pct(e['supported_macs'], e['macs'])} of the MACs, in {e['partitions']} partitions"
                      f"{' (sizes ' + shown + ')' if sizes else ''}; {e['dynamic_shape_nodes']} nodes refused for a "
                      f"dynamic shape. Table: `{e['table']}`.", ""]
            if e["fallbacks"]:
                lines += ["| operator | nodes | MACs | why | e.g. |", "|---|---|---|---|---|"]
                for f in e["fallbacks"]:
                    lines.append(f"| {f['op'].split(':')[-1]} | {f['nodes']} | {_mac(f['macs']) if f['macs'] else '0'} "
                                 f"| {f['reason']} | `{f['examples'][0]}` |")
                lines.append("")
            if e["unchecked_caveats"]:
                lines += ["Unchecked caveats of the operators taken:", ""]
                lines += [f"* {c.split(':', 1)[-1]}" for c in e["unchecked_caveats"]]
                lines.append("")
    if probe.get("corrections"):
        lines += ["## Corrections to the checker's input", ""] + [f"* {c}" for c in probe["corrections"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write(folder: Path, bundle: dict, probe: dict, before: dict | None = None) -> dict:
    """Write bundle-report.json and bundle-report.md into ``folder``; returns the JSON content."""
    from moebius_edge.mobile.bundle import REPORT_JSON, REPORT_MD

    graphs = bundle[contract.MANIFEST_GRAPHS]
    content = {"target": bundle["target"], contract.manifest_key(contract.META_PRECISION):
               bundle[contract.manifest_key(contract.META_PRECISION)],
               "onnxruntime": probe["onnxruntime"], "ort_writer": bundle["onnxruntime"],
               "sizes": {k: g[contract.GRAPH_BYTES] for k, g in graphs.items()},
               "summary": summary_rows(probe), "converter_changes": converter_changes(probe),
               "corrections": probe.get("corrections", []),
               "rewrites": {"applied": bundle.get("mobile_rewrites", {}).get("applied", []),
                            "before_after": rewrite_rows(before, probe) if before is not None else []},
               "by_graph": probe["by_graph"]}
    Path(folder, REPORT_JSON).write_text(json.dumps(content, indent=1) + "\n")
    Path(folder, REPORT_MD).write_text(markdown(bundle, probe, before))
    return content
