"""Errors that are the user's to fix: shown as one line, exit code 2, no traceback."""


class UserError(Exception):
    """A mistake in the command line, the workspace or a kernel's files."""

    exit_code = 2


class NoGpuError(UserError):
    """The command needs a CUDA GPU and this machine has none."""


def path_error(what: str, path: object, exc: OSError, then: str = "") -> UserError:
    """A path the user gave that the OS will not look at (a name too long for it, a folder
    on the way that may not be entered) as one line: `what`, the path (cut when over 100
    characters), the OS's reason and, when given, what follows from it (`then`)."""
    shown = str(path)
    if len(shown) > 100:
        shown = f"{shown[:100]}... ({len(shown)} characters)"
    return UserError(f"{what} {shown}: {exc.strerror or exc}{f'; {then}' if then else ''}".lstrip())
