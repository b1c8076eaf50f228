"""The one base class for user errors.

Anything raised as a `UserError` is bad input: the CLI and `python -m splitinfer.run` print its message
as one line and exit with status 2. Every other exception is a bug and keeps its traceback.

The subclasses also derive from the built-in exception a caller would expect (`ValueError`,
`FileNotFoundError`), so `except ValueError` keeps working in library code.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from a user: the message names the bad value, what is allowed and what to do."""


class ConfigError(UserError, ValueError):
    """A bad argument, option or config value."""


class NotFoundError(UserError, FileNotFoundError):
    """A model, file or folder the user named does not exist or is not installed."""
