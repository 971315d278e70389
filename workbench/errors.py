"""Errors that are the user's to fix: shown as one line, exit code 2, no traceback."""


class UserError(Exception):
    """A mistake in the command line, the workspace or a kernel's files."""

    exit_code = 2


class NoGpuError(UserError):
    """The command needs a CUDA GPU and this machine has none."""
