"""The ``moebius-edge`` command line.

Subcommands: download | check-weights | export | quantize | run | info. Each lives in
``moebius_edge/commands/<name>.py`` with a ``register(subparsers)`` that only declares arguments
(light imports, so ``--help`` and ``--version`` are instant) and a handler that imports the heavy
stage lazily. Every ``UserError`` (bad input, missing extra, wrong model file) becomes one line on
stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from moebius_edge import __version__
from moebius_edge.errors import UserError

COMMANDS = ("download", "check_weights", "export", "quantize", "run", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moebius-edge",
        description="Moebius image inpainting on ONNX Runtime: export, quantize and run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"moebius-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_parser = sub.add_parser

    def add_parser_with_defaults(*args, **kwargs):  # every subcommand's --help shows its defaults
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        return add_parser(*args, **kwargs)

    sub.add_parser = add_parser_with_defaults
    for name in COMMANDS:
        importlib.import_module(f"moebius_edge.commands.{name}").register(sub)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("moebius_edge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"moebius-edge {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"moebius-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `moebius-edge ... | head`: the reader left, not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
