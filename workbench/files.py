"""Atomic file writes: a reader sees the old file or the new one, never part of one.

At the bottom floor, beside errors.py: run records, MEMORY.md, reports, pid files, shapes
locks and remote transfer lists are all written with it."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from workbench.errors import UserError


class Changed(Exception):
    """atomic_write_text's `unless` said the target changed: nothing was written."""


def atomic_write_text(
    path: Path, text: str, newline: str | None = None, unless: Callable[[], bool] | None = None, follow_link: bool = False,
) -> None:
    """Write `text` to `path` so that readers never see a partial file.

    The file keeps its mode (a new one gets the umask's, as `open` would give it); a read-only
    file, a folder in the way or a read-only filesystem is one UserError. The temporary file
    lives beside the target (a rename is atomic only within one folder) and is removed on any
    failure. A symlink at `path` is replaced by the file (a link in a folder of wb's own,
    runs/reports/x.md -> /etc/passwd, had a run overwrite that file) unless ``follow_link``:
    then it is written through, its target replaced and the link kept (MEMORY.md shared by
    a link, a perf doc or shapes lock a person linked). Links among the folders above are
    followed either way. `unless`: asked just before the rename; True leaves the target as
    it is and raises Changed (MEMORY.md: a hand edit saved since wb read the file)."""
    path = Path(path)
    linked = os.path.islink(path)
    target = Path(os.path.realpath(path)) if follow_link else Path(os.path.realpath(path.parent)) / path.name
    try:
        if not (linked and follow_link):  # a dangling link's target folder is not made (open() would not either)
            target.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o666 & ~current_umask() if linked and not follow_link else _mode_for(target, path)
    except OSError as exc:  # a file where a folder should be, a link loop, ...
        raise UserError(f"cannot write {path}: {blocked_folder(target) or exc.strerror or exc}") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if unless is not None and unless():
            raise Changed(str(path))
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting and
    restoring it would race with threads creating files meanwhile, e.g. sweep lanes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _mode_for(target: Path, shown: Path) -> int:
    """The mode a rewrite of `target` keeps: its own, or the umask's for a new file."""
    try:
        st = target.stat()
    except FileNotFoundError:
        return 0o666 & ~current_umask()
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"cannot write {shown}: it is not a regular file")
    if not st.st_mode & stat.S_IWUSR or not os.access(target, os.W_OK):  # root may write a 0444 file; wb does not
        raise UserError(f"{shown} is read-only (mode {stat.S_IMODE(st.st_mode):04o}): wb does not replace it; make it writable")
    return stat.S_IMODE(st.st_mode)


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder of wb's (a file, a link loop, a link to a device or to
    nothing is in the way), or None: it is a folder, or nothing is there yet."""
    link = os.path.islink(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if not link:
            return None
        what = f"a link to {os.readlink(path)}, which does not exist"
    except OSError as exc:  # a link loop (ELOOP), ...
        what = "a symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
    else:
        if stat.S_ISDIR(st.st_mode):
            return None
        what = f"a link to {os.readlink(path)}" if link else "a file" if stat.S_ISREG(st.st_mode) else "a special file"
    return f"{path} is not a folder ({what})"


def blocked_folder(path: Path) -> str | None:
    """Why the folders above ``path`` cannot all be made: folder_problem of the first one in
    the way (a file where docs/ should be), or None."""
    return next(filter(None, map(folder_problem, reversed(Path(path).parents))), None)


def held_lock(path: Path, timeout: float):
    """The file lock at ``path``, acquired (a filelock.FileLock: release() it), or None when
    another process held it for ``timeout`` seconds. Something else at the path (a folder, a
    link that leads nowhere) is one line naming it, not filelock's OSError."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        return None
    except OSError as exc:
        what = "it is a symbolic link" if os.path.islink(path) else "it is a folder" if os.path.isdir(path) else exc.strerror or str(exc)
        raise UserError(f"cannot take wb's lock {path}: {what}; remove it (wb makes the file again)") from None
    return lock
