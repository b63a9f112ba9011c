"""`moebius-edge info`: what is installed: the runtime, its execution providers, and a models
folder's graphs, precisions and provenance (read from the manifests; no session is created)."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from moebius_edge import __version__, contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("info", help="show the runtime, execution providers and an exported models folder")
    p.add_argument("--models", default=None, metavar="DIR",
                   help=f"models folder to describe [default: ./{contract.DEFAULT_MODELS_DIR} if it exists]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)


# Manifest fields shown per variant, under the manifest's own names.
_SHOWN = tuple(contract.manifest_key(k) for k in (
    contract.META_PRECISION, contract.META_CONTRACT_VERSION, contract.META_TOOLKIT_VERSION,
    contract.META_PROVENANCE, contract.META_IMAGE_SIZE, contract.META_LATENT_SIZE,
    contract.META_SCALING_FACTOR, contract.META_PARITY, contract.META_LICENSES))
_PRECISION, _VERSION, _TOOLKIT, _PROVENANCE, _IMAGE, _LATENT, _SCALING, _PARITY, _LICENSES = _SHOWN


def _variant(root: Path, precision: str) -> dict:
    from moebius_edge.models import read_manifest, total_bytes

    folder = root / contract.precision_subdir(precision)
    manifest = read_manifest(folder)
    graphs = {}
    for spec in contract.GRAPHS:
        entry = (manifest.get(contract.MANIFEST_GRAPHS) or {}).get(spec.key) or {}
        path = folder / entry.get(contract.GRAPH_FILE, spec.file)
        sidecar = entry.get(contract.GRAPH_EXTERNAL_DATA)  # the UNet's weights (GraphSpec.mapped_weights)
        present = path.is_file() and (not isinstance(sidecar, dict) or (folder / sidecar[contract.GRAPH_FILE]).is_file())
        graphs[spec.key] = {contract.GRAPH_FILE: os.path.relpath(path, root),
                            contract.GRAPH_BYTES: total_bytes(entry) if contract.GRAPH_BYTES in entry else None,
                            contract.GRAPH_SHA256: entry.get(contract.GRAPH_SHA256), "present": present,
                            # a variant that keeps a graph unchanged references the FP32 file
                            "shared_with_fp32": folder != root and os.path.normpath(path.parent) == os.path.normpath(root)}
    out = {k: manifest.get(k) for k in _SHOWN}
    out[_PRECISION] = out[_PRECISION] or precision
    out["compatible"] = str(out[_VERSION]) == str(contract.CONTRACT_VERSION)
    out[contract.MANIFEST_GRAPHS] = graphs
    if folder != root:
        out["own_bytes"] = sum(int(g[contract.GRAPH_BYTES] or 0) for g in graphs.values() if not g["shared_with_fp32"])
        out[contract.MANIFEST_QUANTIZE_GATE] = manifest.get(contract.MANIFEST_QUANTIZE_GATE)
        out[contract.MANIFEST_MIN_ONNXRUNTIME] = manifest.get(contract.MANIFEST_MIN_ONNXRUNTIME)
    return out


def _gate_line(gate, report: str) -> str:
    """A variant's quality-gate verdict in one line (``moebius_edge.quantize.gate``)."""
    if not isinstance(gate, dict):
        return "no quality gate recorded"
    f, t = gate.get("figures") or {}, gate.get("thresholds") or {}
    status = gate.get(contract.GATE_STATUS)
    mode = " (random-init weights: figures not enforced)" if status == contract.GATE_ADVISORY else ""
    psnr, cos = f.get("hole_psnr_min_db"), f.get("mean_step_cosine")
    psnr = f"{psnr:.1f} dB" if isinstance(psnr, (int, float)) else str(psnr)
    cos = f"{cos:.5f}" if isinstance(cos, (int, float)) else str(cos)
    over = " (thresholds overridden)" if gate.get("overridden") else ""
    return (f"{status}{mode}: hole PSNR min {psnr} (≥ {t.get('min_hole_psnr_db')}), mean step ε cosine {cos} "
            f"(≥ {t.get('min_mean_step_cosine')}){over}; report {report}")


# Distributions that all install the one `onnxruntime` module; two of them overwrite each other's
# files and leave an install that may load either build.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn")


def installed_ort_distributions() -> list:
    from importlib import metadata

    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def describe(models) -> dict:
    import onnxruntime as ort

    from moebius_edge.models import exported_precisions

    dists = installed_ort_distributions()
    out = {"moebius_edge": __version__, _VERSION: contract.CONTRACT_VERSION,
           "onnxruntime": ort.__version__, "onnxruntime_distributions": dists,
           "providers": list(ort.get_available_providers()), "models": None}
    if len(dists) > 1:
        log.warning("both %s are installed: they share the onnxruntime module and overwrite each other; "
                    "keep one (`pip uninstall %s`, then reinstall the one you want)",
                    " and ".join(dists), " ".join(dists))
    explicit = models is not None
    root = Path(models if explicit else contract.DEFAULT_MODELS_DIR)
    if not root.is_dir():
        if explicit:
            raise UserError(f"models folder not found: {root}")
        return out
    precisions = exported_precisions(root)
    if not precisions:
        raise UserError(f"{root} has no {contract.MANIFEST_FILE}: not a models folder written by "
                        f"`moebius-edge export`")
    out["models"] = {"folder": str(root), "precisions": precisions,
                     "variants": {p: _variant(root, p) for p in precisions}}
    return out


def _mb(n) -> str:
    return "?" if n is None else f"{int(n) / 1e6:,.1f} MB"


def _print(d: dict) -> None:
    w = sys.stdout.write
    w(f"moebius-edge {d['moebius_edge']} (contract version {d[_VERSION]}), onnxruntime {d['onnxruntime']}\n")
    w(f"execution providers: {', '.join(d['providers'])}\n")
    m = d["models"]
    if m is None:
        w(f"models: none in ./{contract.DEFAULT_MODELS_DIR} (make one with `moebius-edge export`, or pass --models DIR)\n")
        return
    w(f"models: {m['folder']}  precisions: {', '.join(m['precisions'])}\n")
    for p, v in m["variants"].items():
        flag = "" if v["compatible"] else f"  INCOMPATIBLE: needs contract version {d[_VERSION]}"
        w(f"  [{p}] contract {v[_VERSION]}, toolkit {v[_TOOLKIT]}, image {v[_IMAGE]} px (latent {v[_LATENT]}), "
          f"VAE scaling {v[_SCALING]}{flag}\n")
        w(f"       provenance: {v[_PROVENANCE]}\n")
        for key, g in v[contract.MANIFEST_GRAPHS].items():
            sha = (g[contract.GRAPH_SHA256] or "?")[:16]
            missing = "" if g["present"] else "  MISSING"
            shared = "  (the fp32 file)" if g.get("shared_with_fp32") else ""
            w(f"       {key:<12} {g[contract.GRAPH_FILE]:<28} {_mb(g[contract.GRAPH_BYTES]):>12}  sha256 {sha}…{missing}{shared}\n")
        if contract.MANIFEST_QUANTIZE_GATE in v:
            report = f"{p}/{contract.QUANTIZE_REPORT_MD}"
            w(f"       own files: {_mb(v['own_bytes'])}; gate {_gate_line(v[contract.MANIFEST_QUANTIZE_GATE], report)}\n")
        if v.get(contract.MANIFEST_MIN_ONNXRUNTIME):
            w(f"       needs onnxruntime >= {v[contract.MANIFEST_MIN_ONNXRUNTIME]}\n")
        if v[_PARITY]:
            w(f"       parity: {json.dumps(v[_PARITY], sort_keys=True)}\n")
        for k, lic in (v[_LICENSES] or {}).items():
            w(f"       licence {k}: {lic}\n")


def _info(args) -> int:
    d = describe(args.models)
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        _print(d)
    return 0
