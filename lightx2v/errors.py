"""Errors meant for people.

Every error the library raises on bad input is a `LightX2VError` (a `ValueError`), whose
message is one line naming what is wrong and what is expected. The CLI prints that line and
exits with a non-zero code, without a traceback.
"""


class LightX2VError(ValueError):
    """Bad input: the message says what is wrong and what was expected."""


class CheckpointError(LightX2VError):
    """A model folder or file is missing, of an unknown layout, or does not fit the model."""


class InputError(LightX2VError):
    """A generation request (prompt, size, frames, paths ...) is invalid."""
