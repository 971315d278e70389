"""Where a run came from: git state, stage source hashes, host."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any
from workbench import __version__
from workbench.errors import UserError
from workbench.schemas import COMMIT_PATTERN, CONTROL_CHARS, LINE_MAX, short


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode(errors="replace") if done.returncode == 0 else None


def git_state(root: Path) -> dict[str, Any]:
    """Commit, dirty flag and a hash of the uncommitted diff (tracked and untracked files).

    WB_GIT_COMMIT (with WB_GIT_DIRTY, WB_GIT_DIFF_HASH), when set, wins: a tree shipped to a
    GPU box may carry no .git, or an older .git under newer files, and the sender knows what
    it sent."""
    commit = None if os.environ.get("WB_GIT_COMMIT") else _git(root, "rev-parse", "HEAD")
    if commit is None:
        dirty = os.environ.get("WB_GIT_DIRTY")
        return {
            "commit": _checked_env("WB_GIT_COMMIT", COMMIT_PATTERN, "a commit id: letters, digits and ._+-, at most 64"),
            "dirty": None if dirty is None else dirty == "1",
            "diff_hash": _checked_env("WB_GIT_DIFF_HASH", f"^[^{CONTROL_CHARS}]{{1,{LINE_MAX}}}$", f"one line of at most {LINE_MAX} characters"),
        }
    status = _git(root, "status", "--porcelain", "--untracked-files=normal") or ""
    diff = _git(root, "diff", "HEAD") or ""
    untracked = [line[3:] for line in status.splitlines() if line.startswith("?? ")]
    h = hashlib.sha256(diff.encode())
    for name in sorted(untracked):
        path = root / name
        if path.is_file():
            h.update(name.encode())
            h.update(path.read_bytes())
    dirty = bool(status.strip())
    return {"commit": commit.strip(), "dirty": dirty, "diff_hash": h.hexdigest()[:16] if dirty else None}


def _checked_env(name: str, pattern: str, what: str) -> str | None:
    """Variable ``name`` (None when unset or empty), refused in one line unless it is what
    the run record keeps: a record its own reader refuses is a lost run."""
    value = os.environ.get(name) or None
    if value is not None and not re.match(pattern, value):
        raise UserError(f"{name}={short(value)} must be {what}")
    return value


def file_hashes(paths: list[Path], root: Path) -> dict[str, str]:
    out = {}
    for path in paths:
        if path.is_file():
            try:
                name = str(path.relative_to(root))
            except ValueError:
                name = str(path)
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def host() -> str:
    return socket.gethostname()


def record_provenance(ws, spec, git: dict[str, Any], env: dict[str, Any], arch: str) -> dict[str, Any]:
    """The provenance block of a record: what was sent (git, stage sources), what ran it."""
    return {
        **git,
        "sources": file_hashes(spec.source_files(), ws.root),
        "wb": __version__,
        "dsl": env.get("dsl"),
        "torch": env.get("torch"),
        "python": env.get("python"),
        "gpu": env.get("gpu"),
        "gpu_uuid": env.get("gpu_uuid"),  # which card, among several
        "cuda_visible_devices": env.get("cuda_visible_devices"),
        "compute_capability": env.get("compute_capability"),
        "driver": env.get("driver"),
        "cuda_runtime": env.get("cuda_runtime"),
        "arch": arch,
        "host": host(),
    }


def card_label(prov: dict[str, Any]) -> str:
    """The card a record ran on, named among several when the record says which: "NVIDIA H200
    GPU-8f3c1a2b (CUDA_VISIBLE_DEVICES=1)"; "cpu" without one."""
    label = prov.get("gpu") or "cpu"
    uuid = prov.get("gpu_uuid")
    if uuid:
        label += f" {str(uuid)[:12]}"
    if prov.get("gpu") and prov.get("cuda_visible_devices") not in (None, ""):
        label += f" (CUDA_VISIBLE_DEVICES={prov['cuda_visible_devices']})"
    return label


def short_commit(prov: dict[str, Any], width: int = 10) -> str:
    """abc1234567 or abc1234567+dirty; empty when unknown."""
    commit = (prov.get("commit") or "")[:width]
    return commit + ("+dirty" if commit and prov.get("dirty") else "")
