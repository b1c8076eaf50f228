"""The one base class for user errors.

Anything raised as a `UserError` is bad input: the CLI and `python -m splitinfer.run` print its message
as one line and exit with status 2. Every other exception is a bug and keeps its traceback.

The subclasses also derive from the built-in exception a caller would expect (`ValueError`,
`FileNotFoundError`), so `except ValueError` keeps working in library code.
"""

from __future__ import annotations

import sys
from typing import NoReturn


class UserError(Exception):
    """Bad input from a user: the message names the bad value, what is allowed and what to do."""


class ConfigError(UserError, ValueError):
    """A bad argument, option or config value."""


class NotFoundError(UserError, FileNotFoundError):
    """A model, file or folder the user named does not exist or is not installed."""


def exit_for_user_error(e: BaseException, prog: str = "splitinfer.run") -> NoReturn:
    """Print a user error as one line (`<prog>: error: <message>`) and exit with status 2, no traceback.
    The Hydra entry point and its callbacks (search, config checks) end a bad run this way."""
    print(f"{prog}: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
