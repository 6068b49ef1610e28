"""Errors that name what is wrong and say what to do instead."""


class HypercloneError(Exception):
    """Base class: every error the library raises on bad input."""


class PlanError(HypercloneError):
    """A growth or strategy that cannot be planned (or not exactly)."""


class CertificateError(PlanError):
    """The plan would not preserve the function; names the tensor, dim and rule."""


class CheckpointError(HypercloneError):
    """A checkpoint folder that cannot be read or does not match its config."""


class ConfigError(HypercloneError):
    """A config.json that is missing, invalid or of an unsupported family."""
