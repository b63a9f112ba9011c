"""`moebius-edge export`: PyTorch checkpoint → unet.onnx, vae_encoder.onnx, vae_decoder.onnx.

The output folder is checked before anything is loaded: a file, or a folder that already holds
something, is refused in one line unless --force (the default ``models`` is also `run`'s default,
so an export must not silently replace the models a user runs with). With --force the graphs and
manifest are replaced and the quantized variants removed (``export_models``: staged, then moved).
"""
import json
import logging
from pathlib import Path

from moebius_edge import contract
from moebius_edge.commands import check_writable_folder, require
from moebius_edge.errors import UserError
from moebius_edge.models import total_bytes

log = logging.getLogger(__name__)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    check_writable_folder(out, "the models")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} is not empty; pass --force to replace the models in it (its quantized "
                        f"variants are removed too) or choose another folder")


def _export(args):
    _check_out(Path(args.out), args.force)
    for module in ("torch", "onnx", "diffusers", "safetensors"):
        require(module, "export")
    job = require("moebius_edge.export.job", "export")
    manifest = job.run_export(
        args.out, unet_config=args.unet_config if not args.random_init else args.preset,
        unet_weights=args.unet_weights, vae_dir=args.vae, variant=args.variant,
        random_init=args.random_init, seed=args.seed, image_size=args.image_size,
        static_batch=args.static_batch, local_files_only=args.local_files_only, cache_dir=args.cache_dir)
    parity_key, provenance_key = (contract.manifest_key(k) for k in (contract.META_PARITY, contract.META_PROVENANCE))
    for key, g in manifest[contract.MANIFEST_GRAPHS].items():
        print(f"{args.out}/{g[contract.GRAPH_FILE]}  {total_bytes(g) / 2**20:8.1f} MiB  "
              f"parity rel-L2 {manifest[parity_key][key]['rel_l2']:.2e}")
    print(f"{args.out}/{contract.MANIFEST_FILE}  provenance {manifest[provenance_key]}")
    if args.json:
        print(json.dumps({k: manifest[k] for k in (provenance_key, parity_key, contract.MANIFEST_GRAPHS)}))
    return 0


def register(sub):
    p = sub.add_parser("export", help="export the UNet and VAE graphs to ONNX (needs the export extra)",
                       description="Export the guided UNet, VAE encoder and VAE decoder to ONNX, each "
                       "checked against PyTorch (parity gate), with a manifest.json beside them.")
    src = p.add_argument_group("weights (one of)")
    src.add_argument("--variant", choices=contract.HUB_VARIANTS,
                     help="official weights from the Hugging Face cache (downloaded when online)")
    src.add_argument("--unet-weights", metavar="FILE", help="a Moebius checkpoint (.bin or .safetensors)")
    src.add_argument("--random-init", action="store_true", help="random weights, for toolchain checks")
    p.add_argument("--unet-config", default="moebius", metavar="CFG",
                   help="model config: preset name or official moebius.yaml / JSON")
    p.add_argument("--vae", metavar="DIR", help="diffusers-format VAE folder (config.json + weights); "
                   "--random-init without it builds a random VAE (SDXL layout, tiny layout for --preset tiny)")
    p.add_argument("--preset", default="moebius", choices=("moebius", "tiny"), help="model preset for --random-init")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    p.add_argument("--image-size", type=int, default=None,
                   help="build a --random-init model for this image side instead of the preset's")
    p.add_argument("--out", default=contract.DEFAULT_MODELS_DIR, metavar="DIR", help="output folder")
    p.add_argument("-f", "--force", action="store_true",
                   help="replace the models in a folder that is not empty (its quantized variants are removed)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch to 1 (mobile execution providers)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the Hub with --variant")
    p.add_argument("--cache-dir", metavar="DIR", help="Hugging Face cache folder (HF_HOME's when omitted)")
    p.add_argument("--json", action="store_true", help="also print the provenance, parity and graph table as JSON")
    p.set_defaults(func=_export)
