"""One module per CLI subcommand: ``register(subparsers)`` declares the arguments; the handler
imports the heavy stage lazily. Helpers shared by the handlers live here."""
from __future__ import annotations

import os
from pathlib import Path


def require(module: str, extra: str):
    """Import ``module`` or raise the one-line 'install moebius-edge[extra]' error.

    Only the absence of ``module`` itself (or of a package above it) means the extra is missing.
    Any other ImportError raised while importing it (a module that imports a name that is not
    there, a broken dependency of an installed package) is a bug or a broken install, and keeps
    its traceback rather than being disguised as a missing extra."""
    import importlib

    from moebius_edge.errors import MissingExtraError

    try:
        return importlib.import_module(module)
    except ImportError as e:
        if not e.name or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise MissingExtraError(extra, module) from None


def check_writable_folder(folder, what: str) -> None:
    """Refuse, in one line, a folder that cannot be written or created: the nearest existing
    folder on its path must be a writable folder (checked before any long work starts)."""
    from moebius_edge.errors import UserError

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise UserError(f"cannot write {what}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {what}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what}: folder {existing} is not writable")
