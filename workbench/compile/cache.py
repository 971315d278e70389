"""Compiled kernels on disk, shared across processes: a second `wb run` of an unchanged
stage, or `wb shapes` after a `wb run`, skips the compile.

`cute.compile` never caches (it forces no_cache), so wb keeps its own cache under
`$WB_HOME/cache` when WB_HOME is set, else `<workspace>/.wb/cache`:

    <root>/<kernel>/<letter>/<key>/meta.json     key material, probe records, resources,
                                                 dependency hashes, file checksums
                                   compiled.pkl  the stage's compiled object, with every
                                                 JitCompiledFunction replaced by a reference
                                   fn0.o ...     each JitCompiledFunction as an object file
                                                 (JitCompiledFunction.dump_to_object)

Key: stage id, the stage module's own hash, kernel.yaml's hash, parameters, variants,
arch, DSL version, wb version, Python version, the compile-affecting CUTE_DSL_* variables
and wb's compile options. Validity: meta.json lists every source file behind the compile,
each with its sha256 (see `dependencies`): what sys.modules shows, every file the traced
IR's locations name, code the stage executed without importing it (exec_module of a file
from another checkout), files read during the compile, and the kernel folder's data files;
an entry whose files changed is a miss, so editing the stage or anything it runs
invalidates it, and editing an unrelated stage does not. meta.json and the .link files
are checked against workbench.schemas.cache_meta and every stored file against its
checksum; an entry that fails either is deleted with a warning and rebuilt, never trusted.

Reloading: `cutlass.cute.runtime.load_module(fn0.o)[prefix]` gives a JitCompiledFunction
called exactly like the one `cute.compile` returned (same signature, same arguments).
The rest of the stage's compiled object (a dataclass, dict or tuple around the functions)
is pickled; an object that does not pickle is not cached (probes and resources still are).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from workbench import __version__, settings
from workbench.kernels.registry import StageSpec
from workbench.schemas import SchemaError, load_json
from workbench.workspace import Workspace
import workbench

CACHE_FORMAT = 1
WB_OPTIONS = {"lineinfo": True, "remarks": "ptx"}  # what compile_stage adds to every compile

# CUTE_DSL_* variables that do not change the generated code (everything else is keyed).
_ENV_IGNORED = {
    "ARCH",  # keyed explicitly (wb passes the arch)
    "LINEINFO",  # wb forces line info on
    "DUMP_DIR", "KEEP", "KEEP_IR", "KEEP_PTX", "KEEP_CUBIN", "KEEP_SASS", "LOG_LEVEL", "LOG_TO_CONSOLE",
    "LOG_TO_FILE", "CACHE_DIR", "NO_CACHE", "DISABLE_FILE_CACHING", "JIT_TIME_PROFILING", "SHOW_STACKTRACE",
    "FILTER_STACKTRACE", "PRINT_IR", "PRINT_AFTER_PREPROCESSOR", "JIT_CACHE_MAX_ELEMS", "WARNINGS_IGNORE",
}
_DATA_SKIP = {"shapes.lock.yaml"}


class CacheCorrupt(Exception):
    pass


def cache_root(ws: Workspace) -> Path:
    home = settings.wb_home()
    return home / "cache" if home else ws.state_dir / "cache"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def dsl_version() -> str:
    try:
        from importlib.metadata import version

        return version("nvidia-cutlass-dsl")
    except Exception:
        return "none"


def _compile_env() -> dict[str, str]:
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("CUTE_DSL_") and k[len("CUTE_DSL_") :] not in _ENV_IGNORED
    }


_WB_CODE: str | None = None


def _wb_code() -> str:
    """Hash of wb's own modules that shape what a cache entry holds (records, resources)."""
    global _WB_CODE
    if _WB_CODE is None:
        here = Path(__file__).parent
        h = hashlib.sha256()
        for name in ("probe.py", "trace.py", "layouts.py", "resources.py", "compiler.py", "cache.py"):
            path = here / name
            if path.is_file():
                h.update(path.read_bytes())
        _WB_CODE = h.hexdigest()[:16]
    return _WB_CODE


@dataclass
class Key:
    digest: str
    material: dict[str, Any]


def make_key(spec: StageSpec, params: dict, variants: dict, arch: str) -> Key:
    module = spec.module_path
    kernel_yaml = module.parent / "kernel.yaml"
    material = {
        "format": CACHE_FORMAT,
        "stage": spec.id,
        "module": sha256_file(module) if module.is_file() else None,
        "kernel_yaml": sha256_file(kernel_yaml) if kernel_yaml.is_file() else None,
        "params": sorted((str(k), repr(v)) for k, v in dict(params).items()),
        "variants": sorted((str(k), str(v)) for k, v in dict(variants).items()),
        "arch": arch,
        "dsl": dsl_version(),
        "wb": __version__,
        "wb_code": _wb_code(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "env": _compile_env(),
        "options": WB_OPTIONS,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]
    return Key(digest, material)


def entry_dir(ws: Workspace, spec: StageSpec, key: Key) -> Path:
    return cache_root(ws) / spec.kernel / spec.letter / key.digest


# --------------------------------------------------------------------------------------
# Dependencies: every source file behind a compile
# --------------------------------------------------------------------------------------
# A stage may run code that never shows in sys.modules (importlib's spec_from_file_location
# + exec_module, exec, runpy: wrapping someone else's kernel file). A Python audit hook,
# installed once per process (build.py does it on import, before any stage module loads),
# records every such file with the files on the stack when it ran; inside `watching()` it
# also records every source compiled and every file opened for reading.
_AUDITED = frozenset({"exec", "compile", "open"})
_SYSTEM_DIRS = ("/proc/", "/sys/", "/dev/")
_hook_installed = False
_library: tuple[str, ...] = ()
_ran_under: dict[str, set[str]] = {}  # executed file -> files on the stack when it ran


class _Window:
    def __init__(self, ignore: tuple[str, ...]):
        self.files: set[str] = set()
        self.ignore = ignore

    def add(self, name: Any) -> None:
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        elif isinstance(name, os.PathLike):
            name = os.fspath(name)
        if isinstance(name, str) and name and not name.startswith("<") and not name.startswith(self.ignore):
            self.files.add(name)


_window: _Window | None = None


def _library_prefixes() -> tuple[str, ...]:
    """Folders whose files are not the user's: the interpreter, site-packages, the DSL, wb."""
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(Path(workbench.__file__).parent)}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            roots.add(sysconfig.get_paths()[name])
    with contextlib.suppress(ImportError, ValueError):
        dsl = importlib.util.find_spec("cutlass")  # finds, does not import
        if dsl is not None and dsl.origin:
            package = Path(dsl.origin).parent
            roots.add(str(package.parent.parent if package.parent.name == "dsl_packages" else package))  # nvidia_cutlass_dsl/
    roots |= {os.path.realpath(r) for r in roots}
    return tuple(r.rstrip(os.sep) + os.sep for r in roots if r.strip(os.sep)) + _SYSTEM_DIRS


def watch_sources() -> None:
    """Install the audit hook (once per process; hooks cannot be removed)."""
    global _hook_installed, _library
    if _hook_installed:
        return
    _library = _library_prefixes()
    sys.addaudithook(_audit)
    _hook_installed = True


def _audit(event: str, args: tuple) -> None:
    if event not in _AUDITED:
        return
    try:
        if event == "exec":
            _executed(getattr(args[0], "co_filename", None))
        elif _window is not None and event == "compile":
            _window.add(args[1])
        elif _window is not None and isinstance(args[1], str) and not set(args[1]) & set("wax+"):
            _window.add(args[0])  # open(path, mode) for reading
    except Exception:  # an audit hook must never break the code it watches
        pass


def _executed(filename: str | None) -> None:
    if not filename or filename.startswith("<") or filename.startswith(_library):
        return
    stack, frame = set(), sys._getframe(2)
    while frame is not None and len(stack) < 256:
        stack.add(frame.f_code.co_filename)
        frame = frame.f_back
    _ran_under.setdefault(filename, set()).update(stack)
    if _window is not None:
        _window.add(filename)


@contextlib.contextmanager
def watching(ignore: Iterable[Path] = ()) -> Iterator[set[str]]:
    """The source files executed, compiled or read inside this block (none under `ignore`)."""
    global _window
    watch_sources()
    saved = _window
    _window = _Window(tuple(str(path) + os.sep for p in ignore for path in (Path(p).absolute(), Path(p).resolve())))
    files = _window.files
    try:
        yield files
    finally:
        _window = saved
        if saved is not None:
            saved.files |= files


def _ran() -> dict[str, set[str]]:
    """_ran_under with real paths."""
    return {os.path.realpath(name): {os.path.realpath(s) for s in stack} for name, stack in list(_ran_under.items())}


def _with_what_they_ran(files: set[str], ran: dict[str, set[str]]) -> set[str]:
    """`files` plus every file executed while one of them was on the stack, transitively."""
    files = set(files)
    grew = True
    while grew:
        grew = False
        for name, stack in ran.items():
            if name not in files and stack & files:
                files.add(name)
                grew = True
    return files


def _module_files(root: Path, skip: tuple[str, ...], ran: dict[str, set[str]]) -> set[str]:
    """Files of sys.modules in the workspace, and those outside it that workspace code
    imported (a module stays imported: a later compile may use it without running it again)."""
    prefix = str(root) + os.sep
    files = set()
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if not isinstance(filename, str):
            continue
        real = os.path.realpath(filename)
        if real.startswith(prefix) or any(s.startswith(prefix) and not s.startswith(skip) for s in ran.get(real, ())):
            files.add(real)
    return files


def dependencies(ws: Workspace, spec: StageSpec, traced: Iterable[str] = ()) -> dict[str, str]:
    """sha256 of every source file behind the compile just made, in the process that made it:
    the workspace's modules in sys.modules and the modules workspace code imported from
    elsewhere, `traced` (the files the IR's locations name and those `watching()` saw),
    everything executed on their behalf, and the kernel folder's data files; not the
    interpreter's, site-packages', the DSL's or wb's own files, nor the workspace's fixtures,
    runs, tests and state. Keys are relative to the workspace, or absolute for a file
    outside it (a kernel file from another checkout)."""
    root = ws.root.resolve()
    skipped = (Path(workbench.__file__).parent, ws.fixtures_dir, ws.runs_dir, ws.state_dir, root / "tests")
    skip = tuple(str(p.resolve()) + os.sep for p in skipped)
    ran = _ran()
    seeds = _module_files(root, skip, ran) | {os.path.realpath(f) for f in traced} | {str(spec.module_path.resolve())}
    files = _with_what_they_ran(seeds, ran)
    kernel_dir = spec.module_path.parent.resolve()
    for path in kernel_dir.rglob("*"):
        if path.suffix not in (".py", ".pyc") and path.name not in _DATA_SKIP and "__pycache__" not in path.parts:
            files.add(str(path))
    library = _library or _library_prefixes()
    deps = {}
    for name in sorted(files):
        path = Path(name)
        inside = path.is_relative_to(root)
        if name.startswith(skip) or (not inside and name.startswith(library)) or not path.is_file():
            continue
        if any(part in ("site-packages", "dist-packages", ".venv", "venv", "__pycache__") for part in path.parts):
            continue
        with contextlib.suppress(OSError):
            deps[str(path.relative_to(root)) if inside else name] = sha256_file(path)
    return deps


def deps_valid(ws: Workspace, deps: dict[str, str]) -> bool:
    root = ws.root.resolve()
    for name, digest in deps.items():
        path = Path(name) if os.path.isabs(name) else root / name
        try:
            if not path.is_file() or sha256_file(path) != digest:
                return False
        except OSError:
            return False
    return True

# --------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------
@dataclass
class Entry:
    path: Path
    meta: dict[str, Any]

    @property
    def shapes(self) -> list[dict]:
        return self.meta.get("shapes", [])

    @property
    def resources(self) -> dict | None:
        return self.meta.get("resources")

    @property
    def has_kernel(self) -> bool:
        return bool(self.meta.get("kernel"))

    @property
    def seconds(self) -> float:
        return float(self.meta.get("seconds") or 0.0)


def _read_entry(path: Path) -> Entry:
    from workbench.schemas.cache_meta import MAX_META_BYTES, CacheMeta  # lazy: pydantic loads when a file is read, not at start-up

    try:
        meta, model = load_json(path / "meta.json", CacheMeta, MAX_META_BYTES, source="meta.json")
    except SchemaError as exc:
        raise CacheCorrupt(exc.problem) from None
    if model.format != CACHE_FORMAT:
        raise CacheCorrupt(f"meta.json has format {model.format}, not {CACHE_FORMAT}")
    if model.key != path.name:
        raise CacheCorrupt(f"meta.json is the entry of key {model.key}")
    for name, digest in model.checksums.items():
        if (path / name).exists() and not (path / name).is_file():
            raise CacheCorrupt(f"{name} is not a regular file")
        try:
            if sha256_file(path / name) != digest:
                raise CacheCorrupt(f"{name}: checksum mismatch")
        except FileNotFoundError:
            raise CacheCorrupt(f"{name} missing") from None
        except OSError as exc:
            raise CacheCorrupt(f"{name} unreadable: {exc.strerror or exc}") from None
    return Entry(path, meta)


def _same_inode(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _discard(path: Path, problem: str) -> None:
    warnings.warn(f"compile cache entry {path} is corrupt ({problem}): rebuilding it")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def lookup(ws: Workspace, spec: StageSpec, key: Key, need_kernel: bool = False) -> Entry | None:
    """The valid entry for `key`, or None. Corrupt entries are removed (and a warning given)."""
    path = entry_dir(ws, spec, key)
    if not path.is_dir():
        return None
    try:
        inode = path.stat().st_ino
        entry = _read_entry(path)
    except FileNotFoundError:
        return None
    except CacheCorrupt as exc:
        if _same_inode(path, inode):
            _discard(path, str(exc))
        # else another process replaced the entry while it was read (store): not corrupt
        return None
    if not deps_valid(ws, entry.meta["deps"]):
        return None
    if need_kernel and not entry.has_kernel:
        return None
    return entry


def link(ws: Workspace, spec: StageSpec, alias: Key, key: Key) -> None:
    """Record that `alias` (a key over all parameters) compiles to the entry `key` (a key
    over the stage's compile_params): wb shapes can then find it without importing the stage."""
    if alias.digest == key.digest:
        return
    path = entry_dir(ws, spec, alias).with_suffix(".link")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key.digest, "material": key.material}))
    os.replace(tmp, path)


def lookup_alias(ws: Workspace, spec: StageSpec, alias: Key, need_kernel: bool = False) -> Entry | None:
    """lookup() through a link written by link(); None when there is none or it is stale.
    A link that is not what link() writes is removed with a warning."""
    from workbench.schemas.cache_meta import MAX_LINK_BYTES, CacheLink  # lazy: pydantic loads when a file is read, not at start-up

    path = entry_dir(ws, spec, alias).with_suffix(".link")
    try:
        _, target = load_json(path, CacheLink, MAX_LINK_BYTES, source=path.name)
    except FileNotFoundError:
        return None
    except SchemaError as exc:
        _discard(path, exc.problem)
        return None
    return lookup(ws, spec, Key(target.key, target.material), need_kernel=need_kernel)


def remove(ws: Workspace, spec: StageSpec, key: Key) -> None:
    shutil.rmtree(entry_dir(ws, spec, key), ignore_errors=True)


#: a store's temporary folder (.tmp-*), an entry it moved aside (.old-*) or a link's temp file
#: (*.tmp) older than this was left by a process killed mid-store (a store takes seconds)
LEFTOVER_AGE_S = 3600.0


def prune_leftovers(folder: Path) -> None:
    """Remove what stores killed with SIGKILL left in ``folder`` (a whole entry's size each).
    Recent ones may belong to a store in progress: kept."""
    now = time.time()
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            name = path.name
            if not (name.startswith((".tmp-", ".old-")) or (name.endswith(".tmp") and ".link." in name)):
                continue
            try:
                if now - path.lstat().st_mtime < LEFTOVER_AGE_S:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:
                continue


def store(
    ws: Workspace,
    spec: StageSpec,
    key: Key,
    compiled: Any,
    *,
    shapes: list[dict],
    resources: dict | None,
    deps: dict[str, str],
    seconds: float,
    arch: str,
) -> Entry:
    """Write an entry atomically (a temp folder renamed into place)."""
    final = entry_dir(ws, spec, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    prune_leftovers(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        kernel_info, note = None, None
        if compiled is not None:
            try:
                # a fresh prefix per store: one process may load a rebuilt entry again, and
                # JIT-linking the same symbols twice aborts the process
                kernel_info = _dump_compiled(compiled, tmp, prefix=f"wb_{key.digest[:12]}_{os.urandom(4).hex()}")
            except _NotCacheable as exc:
                note = str(exc)
        checksums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {
            "format": CACHE_FORMAT,
            "key": key.digest,
            "material": key.material,
            "stage": spec.id,
            "arch": arch,
            "created": time.time(),
            "seconds": seconds,
            "shapes": shapes,
            "resources": resources,
            "deps": deps,
            "kernel": kernel_info,
            "kernel_note": note,
            "checksums": checksums,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, default=str))
        # The old entry leaves by a rename, never file by file: a process reading it then sees
        # it whole, or gone, or the new one whole (a half-deleted one read as corrupt, and that
        # reader deleted whatever entry was there by then, this one included)
        old = final.with_name(f".old-{final.name}-{os.getpid()}-{os.urandom(4).hex()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, old)
        try:
            os.replace(tmp, final)
        except OSError:  # another process stored it meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        return Entry(final, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------
# Saving and reloading compiled kernels
# --------------------------------------------------------------------------------------
class _NotCacheable(Exception):
    pass


_runtime_loaded = False


def ensure_dsl_runtime() -> None:
    """Make the DSL's runtime library globally visible: exporting (dump_to_object) and
    reloading (load_module) JIT-link host code against its symbols."""
    global _runtime_loaded
    if _runtime_loaded:
        return
    from cutlass.runtime import find_runtime_libraries

    for lib in find_runtime_libraries(enable_tvm_ffi=False):
        if Path(lib).exists():
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    import cutlass.cute.export  # noqa: F401  (registers the export/load providers)

    _runtime_loaded = True


def _jit_class():
    from cutlass.base_dsl.jit_executor import JitCompiledFunction

    return JitCompiledFunction


def _dump_compiled(compiled: Any, folder: Path, prefix: str) -> dict:
    jit = _jit_class()
    functions: list[Any] = []

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, jit):
                functions.append(obj)
                return ("wb-jit", len(functions) - 1)
            return None

    buffer = io.BytesIO()
    try:
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(compiled)
    except Exception as exc:
        raise _NotCacheable(
            f"the stage's compiled object ({type(compiled).__name__}) does not pickle: {type(exc).__name__}: {exc}"
        ) from None
    if not functions:
        raise _NotCacheable(f"the stage's compiled object ({type(compiled).__name__}) holds no JitCompiledFunction")
    ensure_dsl_runtime()
    objects = []
    for i, fn in enumerate(functions):
        name = f"fn{i}.o"
        try:
            (folder / name).write_bytes(fn.dump_to_object(f"{prefix}_{i}"))
        except Exception as exc:
            raise _NotCacheable(f"dump_to_object failed: {type(exc).__name__}: {str(exc).strip()[:300]}") from None
        objects.append({"file": name, "prefix": f"{prefix}_{i}"})
    (folder / "compiled.pkl").write_bytes(buffer.getvalue())
    return {"pickle": "compiled.pkl", "functions": objects}


_loaded: dict[str, Any] = {}
_modules: list[Any] = []


def load_compiled(entry: Entry) -> Any:
    """Rebuild the stage's compiled object from an entry (needs the DSL; no GPU needed)."""
    info = entry.meta.get("kernel")
    if not info:
        raise CacheCorrupt("entry has no kernel")
    ensure_dsl_runtime()
    from cutlass.cute.runtime import load_module

    loaded = []
    for item in info["functions"]:
        fn = _loaded.get(item["prefix"])  # never JIT-link the same symbols twice in a process
        if fn is None:
            module = load_module(str(entry.path / item["file"]))
            fn = module[item["prefix"]]
            _loaded[item["prefix"]] = fn
            _modules.append(module)  # keep the execution engines alive
        loaded.append(fn)

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            tag, index = pid
            if tag != "wb-jit":
                raise pickle.UnpicklingError(f"unknown reference {pid!r}")
            return loaded[index]

    return _Unpickler(io.BytesIO((entry.path / info["pickle"]).read_bytes())).load()


def clear(ws: Workspace) -> int:
    """Remove every entry; returns how many were removed."""
    root = cache_root(ws)
    count = sum(1 for _ in root.glob("*/*/*/meta.json")) if root.is_dir() else 0
    shutil.rmtree(root, ignore_errors=True)
    return count
