"""The one exception type the CLI turns into a single line and exit code 2.

Raise ``UserError`` for anything a user can fix (bad input, missing file, wrong model folder,
missing extra). Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can act on; ``str(err)`` is the whole message, one line."""

    exit_code = 2


class MissingExtraError(UserError):
    """An optional dependency group is not installed."""

    def __init__(self, extra: str, module: str):
        super().__init__(f"this command needs the '{extra}' extra ({module} is not installed): "
                         f"pip install 'moebius-edge[{extra}]'")
