"""`moebius-edge info`: what is installed: the runtime, its execution providers, and a models
folder's graphs, precisions and provenance (read from the manifests; no session is created)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from moebius_edge import __version__, contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MODELS = "models"


def register(sub):
    from moebius_edge.commands.run import HelpFormatter

    p = sub.add_parser("info", help="show the runtime, execution providers and an exported models folder",
                       formatter_class=HelpFormatter)
    p.add_argument("--models", default=None, metavar="DIR",
                   help=f"models folder to describe [default: ./{DEFAULT_MODELS} if it exists]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)


def _variant(root: Path, precision: str) -> dict:
    from moebius_edge.session import read_manifest

    folder = root / contract.precision_subdir(precision)
    manifest = read_manifest(folder)
    graphs = {}
    for spec in contract.GRAPHS:
        entry = (manifest.get(contract.MANIFEST_GRAPHS) or {}).get(spec.key) or {}
        path = folder / entry.get("file", spec.file)
        graphs[spec.key] = {"file": str(path.relative_to(root)), "bytes": entry.get("bytes"),
                            "sha256": entry.get("sha256"), "present": path.is_file()}
    version = manifest.get(contract.manifest_key(contract.META_CONTRACT_VERSION))
    return {
        "precision": manifest.get(contract.manifest_key(contract.META_PRECISION), precision),
        "contract_version": version,
        "compatible": str(version) == str(contract.CONTRACT_VERSION),
        "toolkit_version": manifest.get(contract.manifest_key(contract.META_TOOLKIT_VERSION)),
        "provenance": manifest.get(contract.manifest_key(contract.META_PROVENANCE)),
        "image_size": manifest.get(contract.manifest_key(contract.META_IMAGE_SIZE)),
        "latent_size": manifest.get(contract.manifest_key(contract.META_LATENT_SIZE)),
        "vae_scaling_factor": manifest.get(contract.manifest_key(contract.META_SCALING_FACTOR)),
        "parity": manifest.get(contract.manifest_key(contract.META_PARITY)),
        "licenses": manifest.get(contract.manifest_key(contract.META_LICENSES)),
        "graphs": graphs,
    }


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

    from moebius_edge.session import exported_precisions

    dists = installed_ort_distributions()
    out = {"moebius_edge": __version__, "contract_version": contract.CONTRACT_VERSION,
           "onnxruntime": ort.__version__, "onnxruntime_distributions": dists,
           "providers": list(ort.get_available_providers()), "models": None}
    if len(dists) > 1:
        log.warning("both %s are installed: they share the onnxruntime module and overwrite each other; "
                    "keep one (`pip uninstall %s`, then reinstall the one you want)",
                    " and ".join(dists), " ".join(dists))
    explicit = models is not None
    root = Path(models if explicit else DEFAULT_MODELS)
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
    w(f"moebius-edge {d['moebius_edge']} (contract version {d['contract_version']}), "
      f"onnxruntime {d['onnxruntime']}\n")
    w(f"execution providers: {', '.join(d['providers'])}\n")
    m = d["models"]
    if m is None:
        w(f"models: none in ./{DEFAULT_MODELS} (make one with `moebius-edge export`, or pass --models DIR)\n")
        return
    w(f"models: {m['folder']}  precisions: {', '.join(m['precisions'])}\n")
    for p, v in m["variants"].items():
        flag = "" if v["compatible"] else f"  INCOMPATIBLE: needs contract version {d['contract_version']}"
        w(f"  [{p}] contract {v['contract_version']}, toolkit {v['toolkit_version']}, image "
          f"{v['image_size']} px (latent {v['latent_size']}), VAE scaling {v['vae_scaling_factor']}{flag}\n")
        w(f"       provenance: {v['provenance']}\n")
        for key, g in v["graphs"].items():
            sha = (g["sha256"] or "?")[:16]
            missing = "" if g["present"] else "  MISSING"
            w(f"       {key:<12} {g['file']:<28} {_mb(g['bytes']):>12}  sha256 {sha}…{missing}\n")
        if v["parity"]:
            w(f"       parity: {json.dumps(v['parity'], sort_keys=True)}\n")
        if v["licenses"]:
            for k, lic in v["licenses"].items():
                w(f"       licence {k}: {lic}\n")


def _info(args) -> int:
    d = describe(args.models)
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        _print(d)
    return 0
