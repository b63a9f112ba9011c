"""`moebius-edge check-weights`: load a checkpoint strictly and print what it is.

A quick verdict on a downloaded or converted ``diffusion_pytorch_model.bin`` before a long export:
the file loads key-for-key into the model of the given config (docs/model.md §7), or the command
says in one line why not (exit code 2).
"""
from pathlib import Path

from moebius_edge.commands import require
from moebius_edge.errors import UserError


def _check_weights(args):
    require("torch", "export")
    require("safetensors", "export")
    from moebius_edge.export.checkpoint import count_parameters, load_removal_model
    from moebius_edge.models import sha256_file
    from moebius_edge.export.config import PRESETS, get_config

    if args.config not in PRESETS and not Path(args.config).is_file():
        raise UserError(f"--config {args.config}: neither a preset ({', '.join(PRESETS)}) nor a config file")
    cfg = get_config(args.config)
    model = load_removal_model(cfg, args.file)
    tensors = len(model.state_dict())
    print(f"file:       {args.file}")
    print(f"config:     {args.config} (image {cfg.image_size}, latent {cfg.latent_size})")
    print(f"tensors:    {tensors} (all loaded strictly)")
    print(f"parameters: {count_parameters(model):,}")
    print(f"sha256:     {sha256_file(args.file, progress=True)}")
    return 0


def register(sub):
    p = sub.add_parser(
        "check-weights",
        help="load a Moebius checkpoint strictly; print its parameter count and SHA-256",
        description="Load FILE (.bin or .safetensors) into the model of CONFIG with strict key and "
        "shape checks; print the parameter count and the file's SHA-256, or one line saying "
        "what does not match.",
    )
    p.add_argument("file", metavar="FILE", help="checkpoint: official diffusion_pytorch_model.bin or a .safetensors")
    p.add_argument("--config", default="moebius", metavar="CFG",
                   help="model config: a preset (moebius, tiny) or a .yaml/.json path ")
    p.set_defaults(func=_check_weights)
