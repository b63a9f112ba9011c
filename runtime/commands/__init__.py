"""One module per CLI subcommand: ``register(subparsers)`` declares the arguments; the handler
imports the heavy stage lazily."""


def require(module: str, extra: str):
    """Import ``module`` or raise the one-line 'install moebius-edge[extra]' error."""
    import importlib

    from moebius_edge.errors import MissingExtraError

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(extra, module) from None
