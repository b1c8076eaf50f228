"""The one exception every codec raises."""


class CodecError(ValueError):
    """A tensor cannot be encoded, or an encoded tensor cannot be decoded faithfully.

    Subclasses ValueError so callers that only know "bad value" still catch it. The message names the
    bad value, what was expected, and what to do.
    """


class CodecFormatError(CodecError):
    """The message is in a wire format this peer does not speak (another splitinfer version or coder).

    Kept apart from corrupted data so a server can answer `bad_codec` (agree on a codec) rather than
    `bad_tensor` (resend the data)."""
