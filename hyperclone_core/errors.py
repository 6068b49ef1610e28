"""Errors that name what is wrong and say what to do instead.

Each class carries the exit code the ``hyperclone`` command returns for it, so a
script can tell a bad option from a bad checkpoint from a full disk without
parsing messages (the table is in ``hyperclone --help`` and the README)."""

EXIT_ERROR = 1         # a library error of no more specific class
EXIT_USAGE = 2         # a bad option, or options that cannot be planned
EXIT_INPUT = 3         # an unreadable, corrupt or inconsistent checkpoint / config / data file
EXIT_OUTPUT = 4        # the destination cannot be written (exists, not ours, disk full, ...)
EXIT_VERIFICATION = 5  # the clone does not compute the source's function within tolerance
EXIT_DIVERGED = 6      # training stopped on a non-finite loss (the newest valid checkpoint is named)
EXIT_INTERNAL = 70     # a bug: an exception nobody expected (rerun with --debug and report it)
EXIT_INTERRUPTED = 130  # Ctrl-C


class HypercloneError(Exception):
    """Base class: every error the library raises on bad input."""

    exit_code = EXIT_ERROR


class UsageError(HypercloneError):
    """A command-line option that is malformed, out of range or unavailable here."""

    exit_code = EXIT_USAGE


class PlanError(HypercloneError):
    """A growth or strategy that cannot be planned (or not exactly)."""

    exit_code = EXIT_USAGE


class CertificateError(PlanError):
    """The plan would not preserve the function; names the tensor, dim and rule."""


class CheckpointError(HypercloneError):
    """A checkpoint folder that cannot be read or does not match its config."""

    exit_code = EXIT_INPUT


class ConfigError(HypercloneError):
    """A config.json that is missing, invalid or of an unsupported family."""

    exit_code = EXIT_INPUT


class OptionError(UsageError, ConfigError):
    """An option value a run cannot use (out of range, not for this backend, past this
    machine): a usage error (exit 2) that ``except ConfigError`` still catches, as the
    trainer's checks raised ConfigError before they were usage errors."""


class OutputError(HypercloneError):
    """A destination that may not or cannot be written; nothing of the user's was touched."""

    exit_code = EXIT_OUTPUT


class VerificationError(HypercloneError):
    """The logits of two checkpoints differ by more than the tolerance (or are not finite)."""

    exit_code = EXIT_VERIFICATION
