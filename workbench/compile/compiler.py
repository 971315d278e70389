"""Compile a stage: trace with probes on, and keep compiled kernels for the next run.

`compile_stage` is the one place stages are compiled (by `wb run`, `wb shapes`,
`wb compile`, `wb bench`). Three levels, fastest first:

  * memory: compiled callables stay in this process (a warm worker compiles an unchanged
    stage once);
  * disk: workbench.compile.cache, shared by every process of the workspace (a second
    `wb run` in a new worker reloads the kernel instead of compiling it; `wb shapes`
    reads the probe records without importing the DSL);
  * cold: `stage.compile(...)` inside `capture()` (probes) and `trace.tracing()` (ops,
    shared memory, TMA atoms, line info, ptxas's resource report), then stored.

A trace failure raises workbench.compile.trace_errors.KernelTraceError (readable, with the probes
captured before it); a failed resource check (shared memory over capacity, a TMA tensor
that breaks the 16-byte rules) raises KernelCheckError when `strict` (wb run), or is
reported in `Build.resources["checks"]` (wb shapes, wb compile).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.compile import cache as compile_cache, resources as res
from workbench.compile.probe import capture, with_keys
from workbench.compile.trace import tracing
from workbench.compile.trace_errors import readable
from workbench.errors import UserError
from workbench.kernels.registry import StageSpec
from workbench.workspace import Workspace

compile_cache.watch_sources()  # before any stage module loads: see what stages execute without importing it

# key digest -> (compiled, shapes, resources, deps, cold seconds)
_memory_cache: dict[str, tuple[Any, list[dict], dict | None, dict, float]] = {}


class KernelCheckError(Exception):
    """The kernel compiled but cannot work on the target (checks the DSL does not make)."""

    def __init__(self, message: str, checks: list[dict], shapes: list[dict]):
        super().__init__(message)
        self.checks = checks
        self.shapes = shapes
        self.location = next((c.get("location") for c in checks if c.get("location")), None)


@dataclass
class Build:
    compiled: Any
    seconds: float  # time spent here: cold compile, or loading from the cache
    cached: bool
    arch: str
    key: str
    shapes: list[dict] = field(default_factory=list)
    resources: dict | None = None
    cache: str = "cold"  # "memory" | "disk" | "cold" | "off"
    cold_seconds: float = 0.0  # what the cold compile of this kernel took
    cache_note: str | None = None  # why the kernel itself was not cached, if it was not
    output: str = ""  # what the stage printed while tracing (print() at trace time)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path (wb compile)


def cache_key(spec: StageSpec, params: dict, variants: dict, arch: str) -> str:
    return compile_cache.make_key(spec, dict(params), dict(variants), arch).digest


def compile_params(stage, params) -> dict:
    """The parameters that change the generated code: all, unless the stage names them
    (`compile_params`), so one compile with dynamic extents serves every n."""
    names = getattr(stage, "compile_params", None)
    return {k: v for k, v in dict(params).items() if names is None or k in names}


def workspace_of(spec: StageSpec) -> Workspace:
    """The workspace a stage belongs to (stages/<kernel>/<module>.py)."""
    return Workspace(spec.module_path.resolve().parents[2])


def _checks_error(checks: list[dict]) -> str | None:
    errors = [c for c in checks if c.get("level") == "error"]
    if not errors:
        return None
    lines = []
    for c in errors:
        where = f"{c['location']}: " if c.get("location") else ""
        lines.append(f"{where}{c['message']}")
        if c.get("source"):
            lines.append(f"    {c['source']}")
    return "\n".join(lines)


def compile_stage(
    spec: StageSpec,
    stage,
    params,
    variants: dict,
    arch: str | None = None,
    *,
    ws: Workspace | None = None,
    use_cache: bool = True,
    need_kernel: bool = True,
    strict: bool = True,
    keep: tuple[str, ...] = (),
    artifact_dir: Path | None = None,
) -> Build:
    """Compile `stage` (an instance loaded from `spec`) for `arch`, or reuse a compiled one.

    need_kernel=False (wb shapes) accepts a cache entry whose kernel object could not be
    saved; keep/artifact_dir (wb compile) force a fresh compile that writes the artifacts.
    """
    arch = arch or spec.arch
    ws = ws or workspace_of(spec)
    key = compile_cache.make_key(spec, compile_params(stage, params), dict(variants), arch)
    target = _Target(ws, spec, stage, params, variants, arch, key)

    if use_cache and not (keep or artifact_dir):
        build = _from_memory(target, need_kernel) or (_from_disk(target, need_kernel) if stage.is_cute else None)
        if build is not None:
            _raise_checks(build.resources, build.shapes, strict)
            return build

    if not stage.is_cute:
        start = time.perf_counter()
        with capture(spec.id) as probes:
            compiled = stage.compile(params, variants, arch)
        seconds = time.perf_counter() - start
        shapes = with_keys(list(probes))
        _memory_cache[key.digest] = (compiled, shapes, None, {}, seconds)
        return Build(compiled, seconds, False, arch, key.digest, shapes, None, "off", seconds)

    build, traced = _cold(target, keep, artifact_dir)
    if use_cache:
        deps = compile_cache.dependencies(ws, spec, traced)
        build.cache_note = _store(target, build.compiled, build.shapes, build.resources, deps, build.seconds)
        _memory_cache[key.digest] = (build.compiled, build.shapes, build.resources, deps, build.seconds)
    _raise_checks(build.resources, build.shapes, strict)
    return build


@dataclass
class _Target:
    ws: Workspace
    spec: StageSpec
    stage: Any
    params: Any
    variants: dict
    arch: str
    key: Any  # compile_cache.Key


def _from_memory(t: _Target, need_kernel: bool) -> Build | None:
    """This process's build of the key, when its sources are unchanged. A disk entry that
    went away meanwhile (removed by hand or by another process) is written again."""
    hit = _memory_cache.get(t.key.digest)
    if hit is None or not compile_cache.deps_valid(t.ws, hit[3]) or (hit[0] is None and need_kernel):
        return None
    compiled, shapes, resources, deps, cold = hit
    if t.stage.is_cute and not (compile_cache.entry_dir(t.ws, t.spec, t.key) / "meta.json").is_file():
        _store(t, compiled, shapes, resources, deps, cold)
    return Build(compiled, 0.0, True, t.arch, t.key.digest, shapes, resources, "memory", cold)


def _from_disk(t: _Target, need_kernel: bool) -> Build | None:
    start = time.perf_counter()
    entry = compile_cache.lookup(t.ws, t.spec, t.key, need_kernel=need_kernel)
    if entry is None:
        return None
    compiled = None
    try:
        if need_kernel:
            compiled = compile_cache.load_compiled(entry)
    except Exception as exc:
        warnings.warn(f"could not reload the cached kernel of {t.spec.id} ({type(exc).__name__}: {exc}); recompiling")
        compile_cache.remove(t.ws, t.spec, t.key)
        return None
    seconds = time.perf_counter() - start
    _link(t)
    if compiled is not None:
        _memory_cache[t.key.digest] = (compiled, entry.shapes, entry.resources, entry.meta["deps"], entry.seconds)
    return Build(
        compiled, seconds, True, t.arch, t.key.digest, entry.shapes, entry.resources, "disk",
        entry.seconds, entry.meta.get("kernel_note"),
    )


def _link(t: _Target) -> None:
    """Let wb shapes find an entry keyed on the stage's compile_params by all parameters."""
    if compile_params(t.stage, t.params) != dict(t.params):
        with contextlib.suppress(OSError):
            compile_cache.link(t.ws, t.spec, compile_cache.make_key(t.spec, dict(t.params), dict(t.variants), t.arch), t.key)


def _store(t: _Target, compiled, shapes, resources, deps, seconds) -> str | None:
    """Write the disk entry; returns why the kernel itself was not cached, if it was not."""
    try:
        entry = compile_cache.store(
            t.ws, t.spec, t.key, compiled, shapes=shapes, resources=resources, deps=deps, seconds=seconds, arch=t.arch
        )
        _link(t)
        return entry.meta.get("kernel_note")
    except Exception as exc:  # a full disk must not fail the compile
        return f"not cached: {type(exc).__name__}: {exc}"


def _cold(t: _Target, keep: tuple[str, ...], artifact_dir: Path | None) -> tuple[Build, set[str]]:
    """Trace and compile; the build and the source files the compile ran or read."""
    dump_dir = Path(artifact_dir) if artifact_dir else Path(tempfile.mkdtemp(prefix="wb-compile-"))
    dump_dir.mkdir(parents=True, exist_ok=True)
    keep_set = tuple(dict.fromkeys(("cubin",) + tuple(k for k in keep if k in ("ptx", "cubin"))))
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with (
            capture(t.spec.id) as probes,
            tracing(t.spec.id, t.arch, keep=keep_set, dump_dir=str(dump_dir)) as state,
            compile_cache.watching(ignore=[dump_dir]) as seen,
        ):
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    compiled = t.stage.compile(t.params, t.variants, t.arch)
            except UserError:
                raise
            except Exception as exc:
                _echo(out.getvalue(), err.getvalue())
                raise readable(exc, shapes=with_keys(list(probes)), root=t.ws.root) from exc
        seconds = time.perf_counter() - start
        shapes = with_keys(list(probes))
        cubins = [p.read_bytes() for p in sorted(dump_dir.glob("*.cubin"))]
        resources = res.summarize(
            t.arch,
            [vars(k) for k in state.kernels],
            [vars(a) for a in state.tma_atoms],
            ptxas_text=err.getvalue(),
            cubins=cubins,
        )
        if state.hook_error:
            resources["capture_error"] = state.hook_error
        artifacts = {}
        if artifact_dir:
            artifacts = {p.name: str(p) for p in sorted(dump_dir.iterdir()) if p.is_file()}
    finally:
        if not artifact_dir:
            shutil.rmtree(dump_dir, ignore_errors=True)
    output = _user_output(out.getvalue(), err.getvalue())
    _echo(output, "")
    build = Build(compiled, seconds, False, t.arch, t.key.digest, shapes, resources, "cold", seconds, None, output, artifacts)
    return build, state.files | seen


def _raise_checks(resources: dict | None, shapes: list[dict], strict: bool) -> None:
    if not strict or not resources:
        return
    message = _checks_error(resources.get("checks", []))
    if message:
        raise KernelCheckError(message, [c for c in resources["checks"] if c.get("level") == "error"], shapes)


def _user_output(stdout: str, stderr: str) -> str:
    """What the stage printed at trace time, without ptxas's report (which wb parses)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr)
    kept = []
    skipping = False
    for line in text.splitlines():
        if "remark[ptxas info]" in line or line.startswith("ptxas"):
            skipping = True
            continue
        if skipping and re.match(r"^\s*(-->|>?\s*\d*\s*\||in function\b|$)", line):
            continue
        skipping = False
        kept.append(line)
    rest = "\n".join(kept).strip()
    return (stdout + (("\n" + rest) if rest else "")).strip()


def _echo(stdout: str, stderr: str) -> None:
    if stdout:
        sys.stdout.write(stdout if stdout.endswith("\n") else stdout + "\n")
    if stderr:
        sys.stderr.write(stderr if stderr.endswith("\n") else stderr + "\n")
