"""Helpers for the shapes / compile / cache tests: a temporary workspace holding the TMA copy
test kernel (tests/shapes_data/tmacopy), and in-process compiles of its stage."""

from __future__ import annotations

import shutil
from pathlib import Path

DATA = Path(__file__).parent / "shapes_data"


def make_workspace(root: Path, kernels=("tmacopy",)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "wb.yaml").write_text(f"default_kernel: {kernels[0]}\n")
    for name in kernels:
        shutil.copytree(DATA / name, root / "stages" / name)
    (root / "fixtures").mkdir(exist_ok=True)
    shutil.copy(DATA / "fixtures" / "tmacopy.py", root / "fixtures" / "tmacopy.py")
    return root


def load(root: Path, stage: str = "a"):
    """(workspace, spec, stage instance) with fresh imports of the workspace's stage modules."""
    from workbench.kernels.registry import forget_stage_modules, resolve_stage
    from workbench.workspace import find_workspace

    ws = find_workspace(root)
    ws.activate()
    forget_stage_modules()
    spec = resolve_stage(ws, stage)
    return ws, spec, spec.load()


def compile_in_process(root: Path, params=None, variants=None, stage="a", **kwargs):
    from workbench.compile.compiler import compile_stage
    from workbench.kernels.stage import Params

    ws, spec, instance = load(root, stage)
    kwargs.setdefault("strict", False)
    return compile_stage(
        spec, instance, Params(spec.resolve_params(params or {})), spec.resolve_variants(variants or {}), None, ws=ws, **kwargs
    )


def by_name(records, name, kind=None):
    found = [r for r in records if r["name"] == name and (kind is None or r.get("kind") == kind)]
    assert found, f"no record {name!r} in {[r['name'] for r in records]}"
    return found[0]
