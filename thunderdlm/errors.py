"""User-facing errors.

Every problem a user can cause (a config typo, a missing file, a tokenizer that does not match a
checkpoint, a prompt longer than the context, an empty corpus, a NaN loss) is raised as a
subclass of :class:`ThunderError` whose message names the field or file and says what to do.
The CLI prints these as one clean line instead of a traceback.
"""
from __future__ import annotations


class ThunderError(Exception):
    """Base class of every error thunderdlm raises on purpose."""


class ConfigError(ThunderError, ValueError):
    """A config field is unknown, of the wrong type or out of range."""


class DataError(ThunderError):
    """A corpus, data folder or token bin is missing, empty or malformed."""


class TokenizerError(ThunderError, ValueError):
    """Text cannot be encoded, or a tokenizer does not match what it is used with."""


class CheckpointError(ThunderError):
    """A run folder or checkpoint is missing, truncated or inconsistent."""


class TrainingError(ThunderError):
    """Training cannot continue (e.g. the loss stayed non-finite)."""


class SamplingError(ThunderError, ValueError):
    """A sampling request is impossible (prompt longer than the context, bad template...)."""


class ModelLoadError(ThunderError):
    """A pretrained model folder or GGUF file is missing, incomplete or of an unsupported family."""
