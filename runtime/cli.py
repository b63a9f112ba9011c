"""The ``moebius-edge`` command line.

Subcommands: download | check-weights | export | quantize | run | run-dataset | bundle | info. Each lives in
``moebius_edge/commands/<name>.py`` with a ``register(subparsers)`` that only declares arguments
(light imports, so ``--help`` and ``--version`` are instant) and a handler that imports the heavy
stage lazily. Every ``UserError`` (bad input, missing extra, wrong model file) becomes one line on
stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from moebius_edge import __version__
from moebius_edge.errors import UserError

COMMANDS = ("download", "check_weights", "export", "quantize", "run", "run_dataset", "bundle", "info")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every default, except for flags and options whose absence is the default
    and for help texts that state their default themselves."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


class _SubcommandParser(argparse.ArgumentParser):
    """Every subcommand gets the help formatter and -v/-q (so ``run -v`` works as ``-v run``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # SUPPRESS: a subcommand's unset flag must not overwrite one given before the subcommand.
        _add_verbosity(self, argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moebius-edge",
        description="Moebius image inpainting on ONNX Runtime: export, quantize and run.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"moebius-edge {__version__}")
    _add_verbosity(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
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


def _json_error(args, message: str, exit_code: int) -> None:
    """With --json, a failure is also an object on stdout, so that a script reading stdout
    always gets JSON (the stderr line stays for people)."""
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": exit_code}))


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
        _json_error(args, str(e), e.exit_code)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"moebius-edge {args.command}: interrupted", file=sys.stderr)
        _json_error(args, "interrupted", 130)
        return 130
    except BrokenPipeError:  # `moebius-edge ... | head`: the reader left, not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
