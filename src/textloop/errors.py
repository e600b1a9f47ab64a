"""The error hierarchy. Every error a user can cause is a ``TextloopError``.

The CLI maps ``TextloopError`` to a one-line message and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class TextloopError(Exception):
    """Base class of every error caused by input: config, data, model, checkpoint."""

    exit_code = 2


class ConfigError(TextloopError):
    """A config file, a ``--set`` override or a flag is invalid."""


class DataError(TextloopError):
    """A data file is missing, unreadable, or holds rows textloop cannot use."""


class ModelError(TextloopError):
    """A model reference cannot be resolved or loaded."""


class CheckpointError(TextloopError):
    """A checkpoint or run directory is missing, incomplete or belongs to another run."""


class RunDirError(TextloopError):
    """The output directory already holds a different run."""


class ExportError(TextloopError):
    """An export cannot be written, or the exported model disagrees with the original."""


class RegistryError(TextloopError):
    """A registry name, version or stage is unknown, or a registered file fails its hash check."""


class OutputError(TextloopError):
    """An output path cannot be written: its folder is missing or is a file, or it is a folder
    where a file belongs; or it holds something textloop must not replace."""
