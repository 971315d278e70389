"""Kernels and their ordered stages, read from stages/<kernel>/kernel.yaml.

kernel.yaml (see stages/fmha/kernel.yaml and README's stage contract; its declared schema,
limits and messages are in workbench.schemas.kernel_yaml):

    kernel: NAME            # defaults to the folder name
    title: ...
    arch: sm_90a            # what stages compile for
    default: true           # bare stage names resolve here when several kernels exist
    parameters: {NAME: {default, choices | min/max/multiple_of, help}}
    tolerance: {factor: 2.0, atol: 1.0e-4}
    timeout: 120
    stages:
      - {letter: a, name: qk, title: ..., module: stage_a_qk.py,
         parameters: {...overrides}, variants: {key: [values, first is default]},
         fixtures: [random, ...], tolerance: {...}, timeout: 60}
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import itertools
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench.files import folder_problem
from workbench.kernels.stage import Stage
from workbench.user_code import import_file
from workbench.schemas import PARAM_TEXT_MAX, SchemaError, fits_param_text, short
from workbench.workspace import Workspace

DEFAULT_TOLERANCE = {"factor": 2.0, "atol": 1e-4}
@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    choices: tuple | None = None
    min: int | None = None
    max: int | None = None
    multiple_of: int | None = None
    help: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(_fmt(c) for c in self.choices)
        parts = []
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        return " ".join(parts) or "any value"

    def coerce(self, raw: Any, where: str) -> Any:
        """Turn a command-line string (or YAML value) into a checked parameter value."""
        value = raw
        sample = self.choices[0] if self.choices else self.default
        if isinstance(raw, str):
            if isinstance(sample, bool):
                low = raw.lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise UserError(f"{where}: {self.name}={raw!r} must be true or false")
                value = low in ("true", "1", "yes", "on")
            elif isinstance(sample, float):
                if not (_FLOAT.fullmatch(raw.strip()) or raw.strip().lower().lstrip("+-") in ("inf", "infinity", "nan")):
                    raise UserError(f"{where}: {self.name}={raw!r} must be a number")
                value = float(raw)
            elif isinstance(sample, int) or self.multiple_of or self.min is not None or self.max is not None:
                if not _INT.fullmatch(raw.strip()):
                    raise UserError(f"{where}: {self.name}={raw!r} must be an integer")
                value = int(raw)
        if isinstance(value, str) and not fits_param_text(value):
            raise UserError(f"{where}: {self.name}={short(value)} must be text of at most {PARAM_TEXT_MAX} characters without control characters")
        if self.choices is not None and value not in self.choices:
            raise UserError(f"{where}: {self.name}={_fmt(value)} is not allowed: must be {self.describe()}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}: {self.name}={raw!r} must be a finite number")
        if self.min is not None and value < self.min:
            raise UserError(f"{where}: {self.name}={value} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise UserError(f"{where}: {self.name}={value} is above the maximum {self.max}")
        if self.multiple_of and isinstance(value, int) and value % self.multiple_of:
            raise UserError(
                f"{where}: {self.name}={value} must be a multiple of {self.multiple_of}"
                f" (the stage's tile); nearest: {_nearest_multiple(value, self.multiple_of)}"
            )
        return value


# what int() and float() take besides: "1_000", "１２８" (full-width), "٣" (Arabic-Indic): the
# value ran as 128 under a label and a record that said "１２８"
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _nearest_multiple(value: int, step: int) -> int:
    return max(step, round(value / step) * step)


def at_default(defaults: dict[str, Any], values: dict[str, Any], key: str) -> bool:
    """Is ``values[key]`` its kernel.yaml default (``defaults``: StageSpec.defaults)? An
    "=other" default is met by other's value. Compared as text: MEMORY's case keys hold text,
    resolved parameters their types, and both print alike."""
    if key not in defaults or key not in values:
        return False
    d = defaults[key]
    if isinstance(d, str) and d.startswith("="):
        return d[1:] in values and str(values[key]) == str(values[d[1:]])
    return str(values[key]) == str(d)


@dataclass
class StageSpec:
    kernel: str
    letter: str
    name: str
    title: str
    module_path: Path
    params: dict[str, ParamSpec]
    variants: dict[str, tuple[str, ...]]
    fixtures: list[str]
    tolerance: dict[str, float]
    timeout: float
    arch: str
    index: int
    size_param: str = "n"  # the parameter the CLI's --n sets (kernel.yaml `size:`)
    wrong_on_purpose: dict[str, tuple[str, ...]] = field(default_factory=dict)  # variant -> values (kernel.yaml)

    @property
    def injections(self) -> list[str]:
        """``variant=value`` words of the values declared wrong on purpose (MEMORY.md counts
        their cases apart, as it does a ``bug`` variant's)."""
        return [f"{k}={v}" for k, values in self.wrong_on_purpose.items() for v in values]

    @property
    def id(self) -> str:
        """Canonical name, e.g. fmha/stage-c."""
        return f"{self.kernel}/stage-{self.letter}"

    @property
    def short(self) -> str:
        return f"stage-{self.letter}"

    @property
    def defaults(self) -> dict[str, Any]:
        """Each parameter's kernel.yaml default, in kernel.yaml's order ("=other" as written)."""
        return {k: p.default for k, p in self.params.items()}

    def resolve_params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with `overrides`, each checked; "=other" defaults copy a value."""
        overrides = dict(overrides or {})
        unknown = [k for k in overrides if k not in self.params]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self.params), n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(
                f"{self.id} has no parameter {unknown[0]!r}{hint}; it takes: {', '.join(self.params)}"
            )
        values: dict[str, Any] = {}
        pending: dict[str, str] = {}
        for name, spec in self.params.items():
            if name in overrides:
                values[name] = spec.coerce(overrides[name], self.id)
            elif isinstance(spec.default, str) and spec.default.startswith("="):
                pending[name] = spec.default[1:]
            else:
                values[name] = spec.default
        while pending:  # in rounds: a default may name another '=' default that resolves first
            ready = {name: source for name, source in pending.items() if source in values}
            if not ready:
                name, source = next(iter(pending.items()))
                if source not in self.params:
                    raise UserError(f"{self.id}: parameter {name} defaults to '={source}', which is not a parameter")
                loop = [name]
                while loop[-1] in pending and pending[loop[-1]] not in loop:
                    loop.append(pending[loop[-1]])
                raise UserError(f"{self.id}: the '=' defaults of {' -> '.join(loop + [pending[loop[-1]]])} name each other: "
                                "give one of them a value (in kernel.yaml or with -p)")
            for name, source in ready.items():
                values[name] = self.params[name].coerce(values[source], self.id)
                del pending[name]
        return values

    def resolve_variants(self, overrides: dict[str, str] | None = None) -> dict[str, str]:
        values = {key: allowed[0] for key, allowed in self.variants.items()}
        for key, value in (overrides or {}).items():
            if key not in self.variants:
                known = ", ".join(self.variants) or "none"
                raise UserError(f"{self.id} has no variant {key!r} (its variants: {known})")
            if value not in self.variants[key]:
                raise UserError(
                    f"{self.id}: variant {key}={value} is not allowed: must be one of {', '.join(self.variants[key])}"
                )
            values[key] = value
        return values

    def source_files(self) -> list[Path]:
        """Files whose change must invalidate compiled kernels: the kernel's folder and shared code."""
        kernel_dir = self.module_path.parent
        stages_dir = kernel_dir.parent
        files = sorted(p for p in kernel_dir.rglob("*.py") if "__pycache__" not in p.parts)
        files += sorted(stages_dir.glob("*.py"))
        files.append(kernel_dir / "kernel.yaml")
        return files

    def source_hash(self) -> str:
        h = hashlib.sha256()
        for path in self.source_files():
            if path.is_file():
                h.update(path.name.encode())
                h.update(path.read_bytes())
        return h.hexdigest()[:16]

    def load(self):
        """Import the stage module and return an instance of its Stage subclass."""
        package = f"stages.{self.kernel}"
        module_name = f"{package}.{self.module_path.stem}"
        if not self.module_path.is_file():  # (a FIFO named .py: its import would wait forever)
            what = "is not a regular file" if self.module_path.exists() else "does not exist"
            raise UserError(f"{self.id}: module {self.module_path} {what}")
        try:
            module = importlib.import_module(module_name)
        except SystemExit as exc:  # a broken module, not a way out of wb or of its worker (which died unexplained)
            raise RuntimeError(f"{self.module_path.name} called sys.exit({exc.code!r}) on import") from exc
        found = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Stage) and obj is not Stage and obj.__module__ == module.__name__
        ]
        if len(found) != 1:
            raise UserError(
                f"{self.module_path}: expected exactly one subclass of workbench.Stage, found {len(found)}"
            )
        for flag in ("needs_gpu", "is_cute"):  # "no" would count as true
            value = getattr(found[0], flag, False)
            if not isinstance(value, bool):
                raise UserError(f"{self.module_path}: {found[0].__name__}.{flag} = {str(value)[:40]!r}: expected True or False")
        stage = found[0]()
        stage.kernel, stage.letter, stage.name = self.kernel, self.letter, self.name
        return stage


@dataclass
class BenchSpec:
    """kernel.yaml's `bench:` section (every key optional; docs/architecture.md, "Kernel hooks")."""

    stage: str | None = None  # the stage letter `wb bench KERNEL` times
    peers: list[str] = field(default_factory=list)  # peers timed when --peers is not given
    # peers that do other work of the same FLOPs (e.g. a dense matmul): shown, never "the best peer"
    yardsticks: list[str] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=lambda: [{}])  # cases when no --sweep
    sweep: list[dict[str, Any]] = field(default_factory=list)  # `--sweep`'s cases
    columns: list[str] = field(default_factory=list)  # perf doc columns (default: the sweep's keys)
    case_keys: list[str] = field(default_factory=list)  # order of a case's name (default: the stage's)
    # parameters a case's name leaves out while at their default (added after cases were recorded)
    quiet: list[str] = field(default_factory=list)
    column: str = "n"  # the parameter whose values are MEMORY.md's speed columns
    perf_doc: str = ""  # default docs/perf-<kernel>.md
    title: str = ""
    note: str = ""


@dataclass
class KernelSpec:
    name: str
    title: str
    arch: str
    default: bool
    dir: Path
    stages: list[StageSpec] = field(default_factory=list)
    bench: BenchSpec = field(default_factory=BenchSpec)

    def stage(self, letter: str) -> StageSpec | None:
        return next((s for s in self.stages if s.letter == letter), None)


def forget_stage_modules() -> None:
    """Drop imported stage modules so the next load sees edited sources (warm worker)."""
    for name in [n for n in sys.modules if n == "stages" or n.startswith("stages.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def load_kernel(kernel_yaml: Path) -> KernelSpec:
    """The kernel declared in `kernel_yaml`, checked (workbench.schemas.kernel_yaml)."""
    from workbench.schemas.kernel_yaml import load  # lazy: pydantic loads when a file is read, not at start-up

    data = load(kernel_yaml)
    folder = kernel_yaml.parent.name
    name = data.kernel or folder
    if name != folder:
        raise SchemaError(str(kernel_yaml), f"kernel: expected the folder's name {folder!r} (stage modules import as stages.<folder>)")
    tolerance = {**DEFAULT_TOLERANCE, **_given(data.tolerance)}
    kernel = KernelSpec(name=name, title=data.title or name, arch=data.arch, default=data.default, dir=kernel_yaml.parent,
                        bench=_bench_spec(name, data.bench))
    for i, stage in enumerate(data.stages):
        kernel.stages.append(
            StageSpec(
                kernel=name,
                letter=stage.letter,
                name=stage.name or f"stage-{stage.letter}",
                title=stage.title,
                module_path=kernel_yaml.parent / stage.module,
                params={k: _param_spec(k, p, str(kernel_yaml), stage.letter) for k, p in stage.params.items()},
                variants={k: tuple(v) for k, v in stage.variants.items()},
                fixtures=list(stage.fixtures),
                tolerance={**tolerance, **_given(stage.tolerance)},
                timeout=float(stage.timeout or data.timeout),
                arch=stage.arch or data.arch,
                index=i,
                size_param=stage.size or data.size,
                wrong_on_purpose={k: tuple(v) for k, v in stage.wrong_on_purpose.items()},
            )
        )
    kernel.stages.sort(key=lambda s: s.letter)
    return kernel


def _bench_spec(kernel: str, bench: Any) -> BenchSpec:
    if bench is None:
        return BenchSpec(perf_doc=f"docs/perf-{kernel}.md")
    sweep = bench.sweep
    if isinstance(sweep, dict):  # axes: their product, the first axis slowest
        keys = list(sweep)
        sweep = [dict(zip(keys, combo)) for combo in itertools.product(*sweep.values())]
    return BenchSpec(
        stage=bench.stage, peers=list(bench.peers), yardsticks=list(bench.yardsticks), cases=[dict(c) for c in bench.cases], sweep=[dict(c) for c in sweep],
        columns=list(bench.columns), case_keys=list(bench.case_keys), quiet=list(bench.quiet), column=bench.column, perf_doc=bench.perf_doc or f"docs/perf-{kernel}.md",
        title=bench.title or "", note=bench.note,
    )


def _given(model: Any) -> dict[str, Any]:
    return {k: v for k, v in model.model_dump().items() if v is not None} if model is not None else {}


def _param_spec(name: str, param: Any, source: str, letter: str) -> ParamSpec:
    """A parameter of kernel.yaml, its default held to its own rules (a default the stage's
    own checks would refuse reached the kernel: `default: abc` for an integer was a CRASH)."""
    spec = ParamSpec(
        name=name,
        default=param.default,
        choices=tuple(param.choices) if param.choices is not None else None,
        min=param.min,
        max=param.max,
        multiple_of=param.multiple_of,
        help=param.help or "",
    )
    copied = isinstance(param.default, str) and param.default.startswith("=")  # "=n": n's value, checked then
    if param.default is not None and not copied:
        try:
            spec = replace(spec, default=spec.coerce(param.default, "default"))
        except UserError as exc:
            problem = str(exc).removeprefix("default: ")
            raise SchemaError(source, f"parameters.{name}.default (stage {letter}): expected a value its own rules allow; {problem}") from None
    return spec


class Kernels(dict):
    """Name -> KernelSpec of the workspace's kernels, and ``broken``: folder -> why its
    kernel.yaml was refused. One kernel's broken kernel.yaml (a typo right after `wb new
    kernel`) stopped wb for every kernel; now only asking for that kernel is its error."""

    def __init__(self):
        super().__init__()
        self.broken: dict[str, str] = {}


_warned: set[str] = set()


def load_kernels(ws: Workspace) -> Kernels:
    kernels = Kernels()
    problem = folder_problem(ws.stages_dir)
    if problem and problem not in _warned:  # else "no kernels yet", as if it were empty
        _warned.add(problem)
        warnings.warn(f"{problem}: the kernels live in its subfolders; move it away")
    if ws.stages_dir.is_dir():
        # lexists, not glob: glob skips a kernel.yaml that is a dangling or looping link, and the
        # kernel vanished without a word ("no kernels yet", "unknown kernel")
        candidates = [sub / "kernel.yaml" for sub in ws.stages_dir.iterdir() if os.path.lexists(sub / "kernel.yaml")]
        for kernel_yaml in sorted(candidates):
            if kernel_yaml.parent.name.startswith("."):  # hidden: e.g. a `wb new kernel` cut off by SIGKILL
                continue
            try:
                spec = load_kernel(kernel_yaml)
            except UserError as exc:
                kernels.broken[kernel_yaml.parent.name] = str(exc)
                continue
            kernels[spec.name] = spec
    return kernels


def warn_broken(kernels: dict) -> None:
    """A warning per broken kernel.yaml, once per process, where a command goes on with the
    other kernels (asking for the broken one is its error instead)."""
    for folder, why in getattr(kernels, "broken", {}).items():
        if why not in _warned:  # commands load the kernels several times
            _warned.add(why)
            warnings.warn(f"{why} (kernel {folder} is left out until this is fixed)")


def refuse_broken(kernels: dict) -> None:
    """A UserError naming the first broken kernel.yaml, if any (wb list, which shows them all)."""
    broken = getattr(kernels, "broken", {})
    if broken:
        first = next(iter(broken.values()))
        raise UserError(first + (f" (and {len(broken) - 1} more broken kernel.yaml)" if len(broken) > 1 else ""))


def default_kernel(ws: Workspace, kernels: dict[str, KernelSpec]) -> KernelSpec | None:
    configured = ws.config.get("default_kernel")
    if configured is not None and not isinstance(configured, str):  # a list or mapping was a TypeError traceback
        raise UserError(f"default_kernel in the workspace config: expected the name of a kernel in stages/, got {short(configured)}")
    if configured:
        if configured in getattr(kernels, "broken", {}):
            raise UserError(kernels.broken[configured])
        if configured not in kernels:
            raise UserError(f"default_kernel {configured!r} in the workspace config names no kernel in stages/")
        return kernels[configured]
    if len(kernels) == 1:
        return next(iter(kernels.values()))
    marked = [k for k in kernels.values() if k.default]
    return marked[0] if len(marked) == 1 else None


def get_kernel(ws: Workspace, name: str, kernels: dict[str, KernelSpec] | None = None) -> KernelSpec:
    kernels = load_kernels(ws) if kernels is None else kernels
    if name in kernels:
        return kernels[name]
    if name in getattr(kernels, "broken", {}):
        raise UserError(kernels.broken[name])
    close = difflib.get_close_matches(name, list(kernels), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    known = ", ".join(kernels) or "none: `wb new kernel NAME` makes one"
    raise UserError(f"unknown kernel {name!r}{hint}; kernels: {known}")


_STAGE_RE = re.compile(r"^(?:(?P<kernel>[A-Za-z_][\w]*)/)?(?:stage-)?(?P<stage>[A-Za-z][\w-]*)$")


def resolve_stage(ws: Workspace, text: str, kernels: dict[str, KernelSpec] | None = None) -> StageSpec:
    """`stage-c`, `c`, `fmha/stage-c`, `fmha/c` or a stage's name (`online`) -> its StageSpec."""
    kernels = load_kernels(ws) if kernels is None else kernels
    match = _STAGE_RE.match(text.strip())
    if not match:
        raise UserError(f"{short(text)} is not a stage: write stage-c, c or KERNEL/stage-c")
    if match["kernel"]:
        kernel = get_kernel(ws, match["kernel"], kernels)
    else:
        kernel = default_kernel(ws, kernels)
        if kernel is None:
            if not kernels:
                raise UserError("this workspace has no kernels yet: `wb new kernel NAME` makes one")
            raise UserError(
                f"several kernels ({', '.join(kernels)}): write KERNEL/{text}, or set default_kernel in the workspace config"
            )
    wanted = match["stage"].lower()
    for stage in kernel.stages:
        if wanted in (stage.letter, stage.name.lower()):
            warn_broken(kernels)
            return stage
    names = [s.short for s in kernel.stages] + [s.name for s in kernel.stages]
    close = difflib.get_close_matches(wanted, names + [s.letter for s in kernel.stages], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    listed = ", ".join(f"{s.short} ({s.name})" for s in kernel.stages)
    raise UserError(f"kernel {kernel.name} has no stage {short(text)}{hint}; its stages: {listed}")


def kernel_module(kernel_dir: Path, stem: str):
    """stages/<kernel>/<stem>.py imported from its file (host side), or None when absent."""
    path = kernel_dir / f"{stem}.py"
    if not path.is_file():
        return None
    root = str(kernel_dir.resolve().parent.parent)  # the workspace: `from stages.<kernel> import ...` works
    if root not in sys.path:
        sys.path.insert(0, root)
    return import_file(f"wb_{stem}_{kernel_dir.name}", path, f"the kernel's {stem} module")


def load_peers(kernel_dir: Path):
    """The kernel's peers module (stages/<kernel>/peers.py, imported in the worker: `wb bench`,
    `wb profile --peers`), or None."""
    if not (kernel_dir / "peers.py").exists():
        return None
    return importlib.import_module(f"stages.{kernel_dir.name}.peers")
