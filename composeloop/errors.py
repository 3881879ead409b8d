"""The exceptions composeloop raises on purpose.

Every error a user can cause by a bad config, bad data or a step whose pieces do not fit is
one of these, with a message that fits on one line and names the key, slot or shapes at
fault. The CLI prints that line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class ComposeloopError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ComposeError(ComposeloopError):
    """The stages given to `compose` do not fit together (names the phase and slot)."""


class ConfigError(ComposeloopError):
    """A configuration value is invalid (names the full key)."""


class DataError(ComposeloopError):
    """A data file or array is missing, malformed or does not fit the model."""


class CheckpointError(ComposeloopError):
    """A checkpoint cannot be written, read, or does not fit the run (names the variables)."""


class NonFiniteLossError(ComposeloopError):
    """Training met a NaN or infinite loss under ``nan_policy=raise`` (names the step)."""


class ClusterError(ComposeloopError):
    """A multi-worker cluster did not come together: names the task that never answered."""
