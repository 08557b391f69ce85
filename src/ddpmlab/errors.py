"""The error types ddpmlab raises for bad input.

Every error a user can cause (a bad config key, an unreadable image, a checkpoint that does not
match) is a subclass of :class:`DDPMLabError`, whose message names the file, key or value at
fault. The CLI prints such errors as one line and exits with status 2; anything else is a bug.
"""

from __future__ import annotations


class DDPMLabError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(DDPMLabError, ValueError):
    """An unknown key, a wrong type or an out-of-range value in a configuration."""


class DataError(DDPMLabError, ValueError):
    """A data set that cannot be read: missing, empty, corrupt or inconsistent."""


class CheckpointError(DDPMLabError, ValueError):
    """A run directory or checkpoint that is missing, partial, unsafe or does not match."""
