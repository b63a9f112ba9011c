"""`moebius-edge download`: fetch an official variant's UNet weights and the VAE from the Hub.

Files land in the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE`` or ``--cache-dir``), where
``moebius-edge export --variant`` finds them later, also offline. Downloads resume where they
stopped when the command is run again. Needs only ``huggingface_hub`` (the ``hub`` extra; the
``export`` extra includes it), never torch: ``moebius_edge.export.hub`` imports nothing else.
"""
from moebius_edge import contract
from moebius_edge.commands import require


def _download(args):
    require("huggingface_hub", "hub")
    from moebius_edge.export.hub import resolve_official

    unet, vae = resolve_official(args.variant, cache_dir=args.cache_dir, local_files_only=args.local_files_only,
                                 revision=args.revision, vae_revision=args.vae_revision)
    print(f"unet weights: {unet}")
    print(f"vae folder:   {vae}")
    return 0


def register(sub):
    p = sub.add_parser(
        "download",
        help="fetch official Moebius weights and the VAE from the Hugging Face Hub into its cache",
        description=f"Fetch {contract.HUB_REPO}/<variant>/{contract.HUB_WEIGHTS_FILE} and the "
        f"{contract.HUB_VAE_REPO}/{contract.HUB_VAE_SUBFOLDER}/ folder into the Hugging Face cache "
        "and print their local paths. Run again to resume an interrupted download.",
    )
    p.add_argument("--variant", default=contract.HUB_VARIANTS[0], choices=contract.HUB_VARIANTS,
                   help="which released weights")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="Hugging Face cache folder [default: HF_HUB_CACHE, i.e. $HF_HOME/hub]")
    p.add_argument("--local-files-only", action="store_true",
                   help="do not contact the Hub; only resolve files already in the cache")
    p.add_argument("--revision", default=None, metavar="REV",
                   help=f"branch, tag or commit of {contract.HUB_REPO} [default: main]")
    p.add_argument("--vae-revision", default=None, metavar="REV",
                   help=f"branch, tag or commit of {contract.HUB_VAE_REPO} [default: main]")
    p.set_defaults(func=_download)
