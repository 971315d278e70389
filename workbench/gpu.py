"""Is there a GPU to run on? Answered in microseconds, before any worker starts.

`import torch` alone costs seconds, and a worker costs more: `wb run` on a machine with no
GPU used to take 6 s to say so. Any trace of the NVIDIA driver (`/dev/nvidia*`,
`/proc/driver/nvidia`, `/dev/dxg` under WSL) means a GPU may be there, and the worker asks
CUDA itself; with none, or CUDA_VISIBLE_DEVICES set to nothing, there is none.

Whether a stage needs one is its class attribute `needs_gpu` (default True): read from the
stage module's source without importing it (importing imports the DSL).
"""

from __future__ import annotations

import ast
import glob
import os
from pathlib import Path


def reachable() -> bool:
    """False when no NVIDIA GPU can possibly be used by this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    # any sign of the driver: device nodes (bare metal, containers), its /proc folder
    # (virtual machines may name the nodes otherwise), WSL's /dev/dxg
    return bool(glob.glob("/dev/nvidia*") or os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/dxg"))


def stage_needs_gpu(module_path: Path) -> bool | None:
    """What the stage class's `needs_gpu` says, read from the source: True/False when every
    class deriving directly from Stage and every explicit setting agree, None when it cannot
    be told without importing (a computed value, settings that differ, a module that does
    not parse, no class deriving from Stage here)."""
    try:
        tree = ast.parse(Path(module_path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    answers = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        setting = _needs_gpu_in(node)
        if setting is _COMPUTED:
            return None
        if setting is not None:
            answers.add(setting)
        elif node.bases and all(base_name(b) == "Stage" for b in node.bases):
            answers.add(True)  # Stage's default
    return answers.pop() if len(answers) == 1 else None


def base_name(node: ast.expr) -> str | None:
    """The name a class base is written with (``Stage`` or ``workbench.Stage``: Stage)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


_COMPUTED = object()


def _needs_gpu_in(cls: ast.ClassDef):
    """The class body's literal `needs_gpu`, None when it sets none, _COMPUTED when it is not a literal."""
    for stmt in cls.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "needs_gpu" for t in targets):
            value = getattr(stmt, "value", None)
            # a literal other than True/False ("no") is the import's to refuse (StageSpec.load)
            return value.value if isinstance(value, ast.Constant) and isinstance(value.value, bool) else _COMPUTED
    return None
