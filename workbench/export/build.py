"""`wb export`: a stage's compile-time configurations -> an installable torch-op package.

For each configuration (the cartesian product of the values given): the stage's own
``compile`` runs under ``cute_host.export_mode()`` (a TVM-FFI function for the arch, no GPU),
its object file is written with ``export_to_c`` and linked into lib/<id>.so against
libcute_dsl_runtime and libtvm_ffi. Then the package: manifest.json, the stage's op module
(``_op.py``), the generic runtime (``__init__.py``, package/runtime.py.tmpl) and a
pyproject.toml. docs/export.md tells the whole road.

A configuration with no passing GPU run on the current sources (verified.py) is refused,
unless ``allow_unverified``: then it is exported with ``verified_by: []`` and the package
warns at import.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Callable

from workbench.errors import UserError, path_error
from workbench.files import current_umask
from workbench.user_code import import_file

PACKAGE_DIR = Path(__file__).parent / "package"
MANIFEST_SCHEMA = 1
SCHEMA_KEYS = (
    "schema", "namespace", "op", "schema_text", "distribution", "package", "kernel", "stage", "commit", "dirty",
    "diff_hash", "dsl_version", "tvm_ffi_version", "arch", "variants", "created", "configs",
)
CONFIG_KEYS = (
    "id", "key", "params", "library", "library_size", "library_sha256", "symbol", "pieces", "verified_by", "compile_s",
)


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    unverified: list[dict] = field(default_factory=list)


def expand(values: dict[str, list[str]]) -> list[dict[str, str]]:
    """-p k=v1,v2 ... -> the cartesian product, one dict per configuration (given order);
    over settings.MAX_CASES is refused before it is built (each configuration is a compile)."""
    from workbench.settings import check_case_count

    check_case_count([len(v) for v in values.values()], "--param's product")
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def parse_lists(items: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        vals = [v.strip() for v in value.split(",")]
        if not sep or not key.strip() or not all(vals):
            raise UserError(f"--param {item!r} must look like key=value or key=v1,v2")
        if key.strip() in out:
            raise UserError(f"--param {key.strip()} is given twice: list its values once, comma-separated (key=v1,v2)")
        out[key.strip()] = vals
    return out


def load_op_module(spec, stage):
    """The stage's export op module (ExportSpec.op_module), imported from its file."""
    export = getattr(stage, "export", None)
    if export is None:
        raise UserError(f"{spec.id} cannot be exported: its Stage class sets no `export` (workbench.kernels.stage.ExportSpec)")
    path = spec.module_path.parent / export.op_module
    if not path.is_file():
        raise UserError(f"{spec.id}: export op module {path} does not exist")
    module = import_file(f"_wb_export_op_{spec.kernel}_{spec.letter}", path, "the export op module")
    missing = [n for n in ("OP", "SCHEMA", "exported_key", "call_key", "check", "fake", "launch") if not hasattr(module, n)]
    if missing:
        raise UserError(f"{path}: the export op module lacks {', '.join(missing)} (see workbench.kernels.stage.ExportSpec)")
    return export, path, module


def _tvm_function(compiled):
    """The TVM-FFI function inside what a stage's compile returned (itself, or its .fn)."""
    for obj in (compiled, getattr(compiled, "fn", None)):
        if obj is not None and hasattr(obj, "export_to_c") and "TVMFFI" in type(obj).__name__:
            return obj
    raise UserError(
        f"the stage's compile returned {type(compiled).__name__}, not a TVM-FFI function: "
        "compile with workbench.kernels.cute_host.compile_for and fake_stream (export_mode switches them)"
    )


def link_flags() -> list[str]:
    from cutlass.cute.export.aot_config import get_libdir
    import tvm_ffi.libinfo

    runtime_dir = get_libdir()
    if not runtime_dir:
        raise UserError("libcute_dsl_runtime.so not found: install nvidia-cutlass-dsl with its libs-cu12 or -cu13 wheel")
    tvm_dir = str(Path(tvm_ffi.libinfo.find_libtvm_ffi()).parent)
    return [f"-L{runtime_dir}", "-lcute_dsl_runtime", f"-L{tvm_dir}", "-ltvm_ffi"]


def find_cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("g++") or shutil.which("clang")
    if cc is None:
        raise UserError("wb export links each object into a shared library: no C compiler (cc, gcc, clang) on PATH")
    return cc


def check_tools() -> None:
    """What an export needs besides the DSL, checked before anything is compiled."""
    if importlib.util.find_spec("tvm_ffi") is None:
        raise UserError("wb export needs apache-tvm-ffi (pip install 'cute-wb[export]', or apache-tvm-ffi>=0.1.11)")
    find_cc()


def link(objs: list[Path], so: Path, flags: list[str]) -> None:
    done = subprocess.run([find_cc(), "-shared", "-o", str(so), *map(str, objs), *flags], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"linking {so.name} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def _config_id(key: dict, variants: dict) -> str:
    text = json.dumps({"key": key, "variants": variants}, sort_keys=True)
    return "c" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(key: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in key.items())


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def plan(spec, stage, op, overrides: list[dict[str, str]], variants: dict[str, str]) -> list[dict]:
    """Resolve each configuration; drop duplicates (same key). Raises UserError for a parameter
    that is not compile-time or a configuration the op module cannot export."""
    names = stage.compile_params
    configs, seen = [], set()
    for given in overrides:
        if names is not None:
            runtime = [k for k in given if k not in names]
            if runtime:
                raise UserError(
                    f"{spec.id}: {runtime[0]} is not a compile-time parameter (exported: {', '.join(names)}); "
                    "runtime sizes need no export"
                )
        params = spec.resolve_params(given)
        compile_params = {k: _jsonable(v) for k, v in params.items() if names is None or k in names}
        try:
            key = op.exported_key(compile_params)
        except (ValueError, KeyError) as exc:
            raise UserError(f"{spec.id}: cannot export {' '.join(f'{k}={v}' for k, v in given.items()) or 'the defaults'}: {exc}") from None
        cid = _config_id(key, variants)
        if cid in seen:
            continue
        seen.add(cid)
        configs.append({"id": cid, "key": key, "params": compile_params, "_all": params})
    return configs


def export_stage(
    ws,
    spec,
    given: dict[str, list[str]],
    variants: dict[str, str],
    arch: str,
    out: Path,
    *,
    allow_unverified: bool = False,
    force: bool = False,
    cwd: Path | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> ExportResult:
    """Export the cartesian product ``given`` of ``spec``'s compile-time parameters, in this
    process (`wb export` runs it in a worker: workbench.export.job). ``cwd``: the folder the
    user is in (--out may not be it), default this process's."""
    with _stage_imports(ws):
        try:
            return _export(ws, spec, given, variants, arch, out, allow_unverified, force, cwd, on_event)
        except SystemExit as exc:  # the stage's code runs in this process: its exit is not the export's success
            raise UserError(f"{spec.id}: the stage's code called sys.exit({exc.code!r}) during the export; nothing was exported") from None


@contextlib.contextmanager
def _stage_imports(ws):
    """Import ``stages.*`` from ``ws`` for the export, then put sys.path and the stage modules
    back as they were (wb export runs in the CLI's process, not in a worker)."""
    import sys

    from workbench.kernels.registry import forget_stage_modules

    path = list(sys.path)
    saved = {n: m for n, m in sys.modules.items() if n == "stages" or n.startswith("stages.")}
    ws.activate()
    if sys.path[0] != str(ws.root):
        sys.path.insert(0, str(ws.root))
    forget_stage_modules()
    try:
        yield
    finally:
        forget_stage_modules()
        sys.modules.update(saved)
        sys.path[:] = path


def refuse_injected_bugs(spec, variants: dict[str, str]) -> None:
    """An export ships kernels as they should be: a variant that injects a bug on purpose (a
    ``bug``/``*_bug`` variant or kernel.yaml's ``wrong_on_purpose``) is refused, verified or not
    (a bug that hides on the fixtures of the verifying run would ship as verified)."""
    from workbench.records.memory import injected_words

    bugs = injected_words(variants, spec.injections)
    if bugs:
        raise UserError(f"{' '.join('-V ' + w for w in bugs)} injects a bug on purpose (kernel.yaml): "
                        "an export ships the kernel as it should be; leave it out")


def _export(ws, spec, given, variants, arch, out, allow_unverified, force, cwd, on_event) -> ExportResult:
    from workbench.export.verified import current_sources, load_records, passing_runs

    emit = on_event or (lambda event: None)
    check_tools()
    out = Path(out)
    check_out(ws, out, force, cwd)
    try:
        stage = spec.load()
    except UserError:
        raise
    except Exception as exc:  # wb runs it in its own process: a broken stage module is a traceback here
        raise UserError(f"{spec.module_path}: the stage module failed to import: {type(exc).__name__}: {exc}") from None
    export, op_path, op = load_op_module(spec, stage)
    variants = spec.resolve_variants(variants)
    refuse_injected_bugs(spec, variants)
    configs = plan(spec, stage, op, expand(given), variants)

    sources = current_sources(ws, spec)
    records = load_records(ws.runs_dir)
    unverified = []
    for cfg in configs:
        cfg["verified_by"] = passing_runs(records, spec, cfg["params"], variants, sources)
        if not cfg["verified_by"]:
            unverified.append(cfg)
    if unverified and not allow_unverified:
        first = unverified[0]["key"]
        raise UserError(
            f"{spec.id}: {len(unverified)} of {len(configs)} configuration(s) have no passing GPU run on the current "
            f"sources (first: {' '.join(f'{k}={v}' for k, v in first.items())}): `wb run` them on a GPU first, "
            "or pass --allow-unverified (the package then warns at import)"
        )

    # built beside --out and moved there at the end: a failed export leaves nothing behind,
    # not even the folders made to hold it
    made = missing_folders_above(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would leave the package unreadable to others
    except OSError as exc:
        raise path_error("--out", out, exc, then="the package is built beside it, so its folder must be writable") from None
    # the supervisor of a worker killed from here on removes exactly this (workbench.run.export_job)
    emit({"event": "staging", "path": str(staging)})
    try:
        manifest = _build(ws, spec, stage, export, op_path, op, configs, variants, arch, staging, emit)
        check_out(ws, out, force, cwd)  # again: what another process put at --out during the compile
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(made)
        raise
    return ExportResult(out=out, manifest=manifest, unverified=unverified)


def missing_folders_above(out: Path) -> list[Path]:
    """The folders above ``out`` that do not exist yet, deepest first: an export makes them,
    and a failed one removes them again (remove_empty_folders)."""
    return [p for p in out.absolute().parents if not p.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; one another process filled stays
        with contextlib.suppress(OSError):
            folder.rmdir()


#: what an earlier export's folder may hold besides its packages (folders with a manifest.json):
#: its pyproject.toml and what building or installing it from there leaves
_EXPORT_LEFTOVERS = ("pyproject.toml", "build", "dist", "__pycache__")


def check_out(ws, out: Path, force: bool, cwd: Path | None = None) -> None:
    """Refuse an --out that is not empty, unless --force and it holds an earlier export and
    nothing else; never the workspace, a folder holding it, or the current folder (``cwd``)."""
    where = out.resolve()
    for inside, what in ((ws.root.resolve(), "the workspace"), ((cwd or Path.cwd()).resolve(), "the current folder")):
        if where == inside or where in inside.parents:
            raise UserError(f"--out {out} is {what} or holds it: choose a folder of its own for the export")
    # wb's own folders: .py files under stages/KERNEL/ change the kernel's source hash (the
    # compile cache and the runs that verify the export go stale); runs/ and .wb/ are wb's to write
    for owned in (ws.stages_dir, ws.runs_dir, ws.root / ".wb"):
        if owned.resolve() in (where, *where.parents):
            raise UserError(f"--out {out} is inside {owned.relative_to(ws.root)}/, which wb keeps: "
                            "choose a folder of its own for the export (e.g. dist/)")
    try:
        exists = out.exists() or out.is_symlink()
    except OSError as exc:  # a name too long for the OS, ...
        raise path_error("--out", out, exc) from None
    if not exists:
        # what will hold it: a file on the way would fail the mkdir after minutes of compiling
        above = next((p for p in out.absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise UserError(f"--out {out}: {above} is not a folder, so the export cannot go under it")
        return
    if out.is_symlink():  # --force replaces what is in --out: never through a link
        raise UserError(f"--out {out} is a symbolic link: wb does not write an export through one, choose a folder of its own")
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder: choose another path")
    entries = sorted(out.iterdir())
    if not entries:
        return
    if not force:
        raise UserError(f"--out {out} exists and is not empty (pass --force to replace an earlier export)")
    foreign = [e.name for e in entries if not (
        (e.is_dir() and not e.is_symlink() and _is_export_manifest(e / "manifest.json"))
        or e.name in _EXPORT_LEFTOVERS or e.name.endswith(".egg-info")
    )]
    if foreign or not _written_by_wb_export(out / "pyproject.toml"):
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "") if foreign else "its pyproject.toml is not wb's"
        raise UserError(f"--out {out} is not an earlier wb export ({shown}): refusing to replace it; remove it yourself or choose another folder")


def _is_export_manifest(path: Path) -> bool:
    """Whether ``path`` is the manifest.json of a wb export (not any file of that name: a web
    app's manifest.json made --force delete the folder around it); read as `wb run --exported`
    reads one (exported.read_manifest)."""
    from workbench.export.exported import MANIFEST_MAX_BYTES
    from workbench.schemas import read_text

    try:
        if path.is_symlink():
            return False
        data = json.loads(read_text(path, MANIFEST_MAX_BYTES))
    except (UserError, OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and {"schema", "stage", "package", "configs"} <= data.keys()


def _written_by_wb_export(path: Path) -> bool:
    """Whether ``path`` is the pyproject.toml an export writes: its first line starts as the
    template's does (up to the template's first $ field)."""
    header = (PACKAGE_DIR / "pyproject.toml.tmpl").read_text(encoding="utf-8").splitlines()[0].partition("$")[0]
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(header)
    except OSError:
        return False


def _build(ws, spec, stage, export, op_path, op, configs, variants, arch, out: Path, emit) -> dict:
    from importlib.metadata import version

    from workbench.kernels.cute_host import export_mode
    from workbench.kernels.stage import Params
    from workbench.records.provenance import git_state

    package = export.namespace
    pkg_dir = out / package
    (pkg_dir / "lib").mkdir(parents=True)

    flags = link_flags()
    with tempfile.TemporaryDirectory() as tmp:
        for i, cfg in enumerate(configs):
            emit({"event": "compile", "index": i, "total": len(configs), "key": cfg["key"]})
            t0 = time.perf_counter()
            try:
                with export_mode():
                    compiled = stage.compile(Params(cfg.pop("_all")), variants, arch)
            except UserError:
                raise
            except Exception as exc:  # a trace or compile error: `wb compile` shows it in full
                text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
                first = (text.splitlines() or [type(exc).__name__])[0]
                given = " ".join(f"-p {k}={v}" for k, v in cfg["params"].items())
                raise UserError(
                    f"{spec.id}: compile failed for [{_describe(cfg['key'])}]: {first} "
                    f"(wb compile {spec.id} --arch {arch} {given} shows it in full)"
                ) from None
            symbol = f"{package}_{op.OP}_{cfg['id']}"
            objs, pieces = [], None
            if getattr(op, "PIECES", None):  # several kernels per configuration: one symbol each, one .so
                pieces = {}
                for name in op.PIECES:
                    part = getattr(compiled, name, None)
                    if part is None:  # a piece this configuration's variants do not build
                        continue
                    objs.append(Path(tmp) / f"{cfg['id']}_{name}.o")
                    _tvm_function(part).export_to_c(str(objs[-1]), f"{symbol}_{name}", export_only_tvm_ffi_symbols=True)
                    info = op.piece_info(name, part, compiled) if hasattr(op, "piece_info") else {}
                    pieces[name] = {"symbol": f"{symbol}_{name}", "info": {k: _jsonable(v) for k, v in info.items()}}
            else:
                objs.append(Path(tmp) / f"{cfg['id']}.o")
                _tvm_function(compiled).export_to_c(str(objs[0]), symbol, export_only_tvm_ffi_symbols=True)
            so = pkg_dir / "lib" / f"{cfg['id']}.so"
            link(objs, so, flags)
            # the package checks these before it loads the object: a truncated .so kills dlopen's caller (SIGBUS)
            cfg.update(library=f"lib/{cfg['id']}.so", library_size=so.stat().st_size, library_sha256=_sha256(so),
                       symbol=None if pieces else symbol, pieces=pieces,
                       compile_s=round(time.perf_counter() - t0, 2))
            emit({"event": "compiled", "index": i, "total": len(configs), "key": cfg["key"], "seconds": cfg["compile_s"]})

    git = git_state(ws.root)
    dsl_version = version("nvidia-cutlass-dsl")
    distribution = package.replace("_", "-")
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "namespace": package,
        "op": op.OP,
        "schema_text": op.SCHEMA,
        "distribution": distribution,
        "package": package,
        "kernel": spec.kernel,
        "stage": spec.id,
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
        "diff_hash": git.get("diff_hash"),
        "dsl_version": dsl_version,
        "tvm_ffi_version": version("apache-tvm-ffi"),
        "arch": arch,
        "variants": variants,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "configs": [{k: cfg[k] for k in CONFIG_KEYS} for cfg in configs],
    }
    (pkg_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.copyfile(op_path, pkg_dir / "_op.py")
    values = {
        "package": package,
        "qualname": f"{package}::{op.OP}",
        "opname": op.OP,
        "stage": spec.id,
        "commit": (git.get("commit") or "unknown")[:10] + ("+dirty" if git.get("dirty") else ""),
        "distribution": distribution,
        "version": "0.0.0+g" + (git.get("commit") or "0")[:10] + (".dirty" if git.get("dirty") else ""),
        "arch": arch,
        "dsl_version": dsl_version,
    }
    (pkg_dir / "__init__.py").write_text(Template((PACKAGE_DIR / "runtime.py.tmpl").read_text()).substitute(values))
    (out / "pyproject.toml").write_text(Template((PACKAGE_DIR / "pyproject.toml.tmpl").read_text()).substitute(values))
    return manifest
