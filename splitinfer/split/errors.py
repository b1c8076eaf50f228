"""The error a step that does not fit a session raises, apart from `server.py` so that the batched path
(`batch.py`), which `ServerHalf` calls, can raise it without importing the server half back."""

from __future__ import annotations

from splitinfer.errors import ConfigError


class StepError(ConfigError):
    """A step that does not fit the session's state (wrong start position, too many tokens)."""
