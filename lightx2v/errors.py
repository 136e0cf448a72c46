"""Errors meant for people.

Every error the library raises on bad input or on a request that cannot run is a
`LightX2VError` (a `ValueError`), whose message is one line naming what is wrong and what is
expected. The CLI prints that line and exits with the class's `exit_code`, without a traceback
(docs/cli.md lists every code):

    2   LightX2VError / InputError / CheckpointError   bad input: a flag, a file, a folder, a request
    3   ResourceError      the request does not fit: memory (estimated before the run, or an
                           out-of-memory during it), disk
    4   HubError           the Hugging Face Hub could not be reached, timed out, or refused
    5   NonFiniteError     the computation produced NaN or infinity (the message names the step)

`field`, when set, is the request field the error is about (`num_inference_steps`): the CLI names
its own flag (`--steps`) instead.
"""

from __future__ import annotations

from typing import Optional


class LightX2VError(ValueError):
    """Bad input: the message says what is wrong and what was expected."""

    exit_code = 2

    def __init__(self, message: str = "", *, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


class CheckpointError(LightX2VError):
    """A model folder or file is missing, of an unknown layout, or does not fit the model."""


class InputError(LightX2VError):
    """A generation request (prompt, size, frames, paths ...) is invalid."""


class ResourceError(LightX2VError):
    """The request cannot run in this device's memory (or the disk's space); the message says what to lower."""

    exit_code = 3


class HubError(CheckpointError):
    """The Hugging Face Hub could not be reached, did not answer in time, or refused the request."""

    exit_code = 4


class NonFiniteError(LightX2VError):
    """The computation produced NaN or infinity; the message names the step."""

    exit_code = 5


class GenerationCancelled(Exception):
    """The per-step callback asked to stop; nothing was written.

    Not a `ValueError` (nor a LightX2VError): a cancel is not bad input (a server must not answer 400).
    Defined here, with no torch import, so that the CLI can catch it without importing torch;
    lightx2v.pipelines.base re-exports it."""
