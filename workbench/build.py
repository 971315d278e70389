"""Compile a stage: trace with probes on, and keep compiled kernels for the next run.

`compile_stage` is the one place stages are compiled (by `wb run`, `wb shapes`,
`wb compile`, `wb bench`). Compiled callables stay in memory for the life of the
process, keyed by everything that can change the generated code, so a warm worker
compiles an unchanged stage once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from workbench.probe import capture
from workbench.registry import StageSpec

_memory_cache: dict[str, tuple[Any, list[dict]]] = {}


@dataclass
class Build:
    compiled: Any
    seconds: float
    cached: bool
    arch: str
    key: str
    shapes: list[dict] = field(default_factory=list)


def cache_key(spec: StageSpec, params: dict, variants: dict, arch: str) -> str:
    return json.dumps(
        [spec.id, spec.source_hash(), sorted(params.items()), sorted(variants.items()), arch, _dsl_version()],
        default=str,
    )


def _dsl_version() -> str:
    try:
        from importlib.metadata import version

        return version("nvidia-cutlass-dsl")
    except Exception:
        return "none"


def compile_stage(spec: StageSpec, stage, params, variants: dict, arch: str | None = None) -> Build:
    """Compile `stage` (an instance loaded from `spec`) for `arch`, or reuse a compiled one."""
    arch = arch or spec.arch
    key = cache_key(spec, dict(params), variants, arch)
    hit = _memory_cache.get(key)
    if hit is not None:
        compiled, shapes = hit
        return Build(compiled, 0.0, True, arch, key, shapes)
    if stage.is_cute:
        os.environ["CUTE_DSL_ARCH"] = arch
    start = time.perf_counter()
    with capture() as probes:
        compiled = stage.compile(params, variants, arch)
    seconds = time.perf_counter() - start
    shapes = [dict(p, stage=spec.id) for p in probes]
    _memory_cache[key] = (compiled, shapes)
    return Build(compiled, seconds, False, arch, key, shapes)
