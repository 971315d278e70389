"""`wb run STAGE --exported DIR`: a stage's fixtures through an exported package's op.

The run compiles and launches the in-tree kernel as always, then calls the op of the package
`wb export` wrote to DIR (imported from DIR, as pip would install it) on the same inputs. The
op's outputs are what the run judges against the reference, and each must equal the in-tree
kernel's bit for bit: the artifact is what was verified.

    read_manifest(dir, spec)       in the CLI: DIR holds an export of this stage (no torch)
    ExportedOp.load(dir, package)  in the worker: import the package, select the configuration
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import UserError, path_error
from workbench.schemas import SchemaError, read_text

#: an export's manifest.json is a few KiB per configuration
MANIFEST_MAX_BYTES = 16 * 1024 * 1024


def _again(exc: BaseException) -> str:
    """'; export again' unless the package's own message already says so."""
    return "" if "export it again" in str(exc) else "; export again"


def read_manifest(out: Path, spec) -> dict[str, Any]:
    """DIR's manifest, if DIR is an export of ``spec`` whose op module can run fixtures."""
    out = Path(out)
    try:
        is_dir = out.is_dir()
    except OSError as exc:  # a name too long for the OS, ...
        raise path_error("--exported", out, exc) from None
    if not is_dir:
        raise UserError(f"--exported {out}: no such folder (the --out of `wb export {spec.id}`)")
    found = sorted(out.glob("*/manifest.json"))
    if not found:
        raise UserError(f"--exported {out}: not an export (no <package>/manifest.json in it; `wb export {spec.id} --out {out}` writes one)")
    manifests = []
    for path in found:
        try:  # (read_text refuses a FIFO, which would block, and a file of many MiB)
            manifest = json.loads(read_text(path, MANIFEST_MAX_BYTES))
            stage, package = manifest["stage"], manifest["package"]
            if not isinstance(stage, str) or not isinstance(package, str) or not package.isidentifier():
                raise ValueError("stage and package must be a name each")
        except SchemaError as exc:
            raise UserError(f"--exported {out}: {path.parent.name}/{path.name} {exc.problem}; export again") from None
        except RecursionError:
            raise UserError(f"--exported {out}: {path.parent.name}/{path.name} is unreadable (JSON nested too deeply); export again") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--exported {out}: {path.parent.name}/{path.name} is unreadable ({type(exc).__name__}: {exc}); export again") from None
        manifests.append((path, manifest, stage, package))
    mine = [m for m in manifests if m[2] == spec.id]
    if not mine:
        raise UserError(f"--exported {out}: it exports {', '.join(sorted({m[2] for m in manifests}))}, not {spec.id}")
    if len(mine) > 1:
        raise UserError(f"--exported {out}: several packages export {spec.id} ({', '.join(m[0].parent.name for m in mine)}): keep one export of a stage per folder")
    path, manifest, stage, package = mine[0]
    if not (out / package / "__init__.py").is_file() or not (out / package / "_op.py").is_file():
        raise UserError(f"--exported {out}: the package folder {package}/ is incomplete; export again")
    op_module = out / package / "_op.py"
    try:
        defined = top_level_names(op_module)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # (the last two: expressions nested past the parser)
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise UserError(f"--exported {out}: {package}/_op.py cannot be read as Python{where}: {type(exc).__name__}; export again") from None
    if "stage_call" not in defined:
        raise UserError(f"--exported {out}: its op module has no stage_call(op, inputs, params) (ExportSpec), so fixtures cannot run through it")
    return manifest


def top_level_names(path: Path) -> set[str]:
    """The names a Python file defines at its top level (functions, classes, assignments,
    imports), read without running it."""
    import ast

    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@dataclass
class ExportedOp:
    package: Any  # the imported package module
    op: Any  # torch.ops.<namespace>.<op>

    @classmethod
    def load(cls, out: str, package: str) -> "ExportedOp":
        """Import ``package`` from the folder ``out`` (the worker is a fresh process: no other
        copy of the package was imported before)."""
        if package in sys.modules:
            # --exported always runs in a new worker, so --fresh would not help: something imported
            # another module of that name first (an installed copy, a sitecustomize)
            raise UserError(f"--exported: a module named {package!r} was imported in the new worker before the export's "
                            f"package ({getattr(sys.modules[package], '__file__', None) or 'built in'}): uninstall or rename that one")
        sys.path.insert(0, str(Path(out).resolve()))
        try:  # a manifest edited by hand, a lib/ or _op.py of another export: the package's fault, not the kernel's CRASH
            module = importlib.import_module(package)
            namespace, name = module.QUALNAME.split("::")
            import torch

            op = getattr(getattr(torch.ops, namespace), name)  # a QUALNAME its import did not register
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # sys.exit() or its own BaseException too: a broken package
            raise UserError(f"--exported {out}: its package {package} failed to import: {type(exc).__name__}: {exc}{_again(exc)}") from None
        finally:
            sys.path.pop(0)
        return cls(package=module, op=op)

    def select(self, params: dict) -> dict:
        """The exported configuration of these parameters; a one-line refusal if none."""
        try:
            config = self.package.select(self.package._op.exported_key(dict(params)))
        except ValueError as exc:  # ExportError, or a parameter the op cannot export
            raise UserError(f"--exported: {exc}") from None
        except Exception as exc:  # configs in the manifest without the fields wb writes, a select() of another wb
            raise UserError(f"--exported: the package's configurations cannot be read ({type(exc).__name__}: {exc}); export again") from None
        if hasattr(self.package, "load"):  # its shared object now, not at the first fixture: a missing or corrupted one was the kernel's CRASH
            try:
                self.package.load(config)
            except Exception as exc:
                raise UserError(f"--exported: the package's {config.get('library')} cannot be loaded ({type(exc).__name__}: {exc}){_again(exc)}") from None
        return config

    def __call__(self, inputs: dict, params: dict) -> dict:
        return self.package._op.stage_call(self.op, inputs, dict(params))

    def describe(self) -> dict[str, Any]:
        m = getattr(self.package, "MANIFEST", None)
        m = m if isinstance(m, dict) else {}  # a package edited by hand: what it says, not the kernel's CRASH
        return {
            "package": m.get("package") or self.package.__name__, "qualname": self.package.QUALNAME, "commit": m.get("commit"),
            "dirty": m.get("dirty"), "dsl_version": m.get("dsl_version"), "arch": m.get("arch"),
            "path": str(Path(self.package.__file__).resolve().parent.parent),
        }



