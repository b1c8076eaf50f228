"""The one exception every codec raises."""


class CodecError(ValueError):
    """A tensor cannot be encoded, or an encoded tensor cannot be decoded faithfully.

    Subclasses ValueError so callers that only know "bad value" still catch it. The message names the
    bad value, what was expected, and what to do.
    """
