"""`wb run STAGE --exported DIR` on the CPU test kernel: the fixtures go through the package's
op, its outputs are judged, and a single bit of difference from the in-tree kernel fails the
fixture. The package here is hand-made in the shape `wb export` writes (manifest.json,
_op.py with stage_call, an __init__ that registers a torch.library op), with a CPU op: the
real TVM-FFI package is checked on a GPU by tests/test_export_gpu.py."""

import hashlib
import json
import os
import shutil
import textwrap
from pathlib import Path
from string import Template

import pytest

from test_run import record_of

INIT = '''
import json
from pathlib import Path

import torch

from . import _op

MANIFEST = json.loads((Path(__file__).parent / "manifest.json").read_text())
QUALNAME = "toy_export::double"
CONFIGS = MANIFEST["configs"]


def select(key):
    for cfg in CONFIGS:
        if cfg["key"] == key:
            return cfg
    raise ValueError(f"{QUALNAME}: configuration not exported: got {key}")


_lib = torch.library.Library("toy_export", "DEF")
_lib.define("double(Tensor x) -> Tensor")
_lib.impl("double", _op.double, "CompositeExplicitAutograd")
'''

OP = '''
import torch

SKEW = {skew}


def exported_key(params):
    return {{"dtype": str(params["dtype"])}}


def double(x):
    y = x * 2
    if SKEW:
        y.view(torch.int16).view(-1)[7] ^= 1  # one bit of one element
    return y


def stage_call(op, inputs, params):
    return {{"y": op(inputs["x"])}}
'''


def _with_op(out, edit):
    """The export at ``out`` with its op module's text edited by ``edit``."""
    op = out / "toy_export" / "_op.py"
    op.write_text(edit(op.read_text()))
    return out


def _with_manifest(out, **fields):
    """The export at ``out`` with ``fields`` overwritten in its manifest."""
    path = out / "toy_export" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return out


def _twice(root):
    """One folder holding two exports of the same stage."""
    out = make_export(root)
    shutil.copytree(out / "toy_export", out / "toy_export2")
    return out


def make_export(root, stage="toy/stage-a", skew=False, dtypes=("bf16",)):
    out = root / "export"
    pkg = out / "toy_export"
    pkg.mkdir(parents=True)
    configs = [{"id": f"c{i}", "key": {"dtype": d}, "verified_by": []} for i, d in enumerate(dtypes)]
    (pkg / "manifest.json").write_text(json.dumps({"stage": stage, "package": "toy_export", "commit": "abc", "configs": configs}))
    (pkg / "__init__.py").write_text(textwrap.dedent(INIT))
    (pkg / "_op.py").write_text(OP.format(skew=skew))
    return out


def test_the_fixtures_run_through_the_exported_op_and_match_the_in_tree_bits(toy_ws, wb):
    out = make_export(toy_ws)
    proc = wb("run", "a", "--exported", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    rec = record_of(toy_ws, proc)
    assert rec["verdict"] == "PASS"
    assert rec["exported"]["qualname"] == "toy_export::double" and rec["exported"]["config"] == "c0"
    assert [c["exported_bit_differences"] for c in rec["results"]] == [{"y": 0}] * 3
    shown = wb("run", "a", "--exported", str(out))  # the table view says it too
    assert "bits equal to the in-tree kernel in 3/3 fixtures" in " ".join(shown.stdout.split())


def test_one_flipped_bit_in_the_exported_op_fails_the_fixture(toy_ws, wb):
    out = make_export(toy_ws, skew=True)
    proc = wb("run", "a", "--exported", str(out), "--fixture", "toy-random", "--seeds", "1", "--json")
    assert proc.returncode == 1
    rec = record_of(toy_ws, proc)
    case = rec["results"][0]
    assert rec["verdict"] == "FAIL" and case["exported_bit_differences"] == {"y": 1}
    assert any("differs from the in-tree kernel's in 1 elements" in r for r in case["outputs"]["y"]["reasons"])


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: root / "nowhere", "no such folder"),
        (lambda root: (root / "empty").mkdir() or root / "empty", "not an export"),
        (lambda root: make_export(root, stage="toy/stage-b"), "it exports toy/stage-b, not toy/stage-a"),
        (lambda root: _with_op(make_export(root), lambda text: text.replace("def stage_call", "# def stage_call\ndef call")),
         "its op module has no stage_call(op, inputs, params)"),  # a comment that names it is not it
        (lambda root: _with_op(make_export(root), lambda text: text + "\ndef broken(:\n"), "_op.py cannot be read as Python (line"),
        (lambda root: _with_manifest(make_export(root), package="../../x"), "manifest.json is unreadable"),
        (lambda root: _with_manifest(make_export(root), stage=["toy/stage-a"]), "manifest.json is unreadable"),
        (lambda root: _twice(root), "several packages export toy/stage-a (toy_export, toy_export2)"),
        (lambda root: _fifo_manifest(make_export(root)), "toy_export/manifest.json is not a regular file; export again"),  # read, it blocked
    ],
)
def test_a_folder_that_is_not_this_stages_export_is_refused_in_one_line(toy_ws, wb, setup, message):
    proc = wb("run", "a", "--exported", str(setup(toy_ws)))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (toy_ws / "runs").exists() or not any((toy_ws / "runs").iterdir())


def _fifo_manifest(out):
    path = out / "toy_export" / "manifest.json"
    path.unlink()
    os.mkfifo(path)
    return out


def _replace(out, old, new):
    path = out / "toy_export" / "__init__.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return out


def _without(out, key):
    path = out / "toy_export" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest[key]
    path.write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("damage, message", [
    (lambda out: _without(out, "configs"), "its package toy_export failed to import: KeyError: 'configs'; export again"),
    (lambda out: [(out / "toy_export" / "__init__.py").write_text("import sys\nsys.exit(3)\n"), out][1],
     "its package toy_export failed to import: SystemExit: 3"),
    (lambda out: _with_manifest(out, configs=[{"id": "c0"}]), "the package's configurations cannot be read (KeyError: 'key')"),
    # an op its import never registered, and a select() that fails otherwise: both were CRASH records of the stage
    (lambda out: _replace(out, 'QUALNAME = "toy_export::double"', 'QUALNAME = "nons::nope"'),
     "its package toy_export failed to import: AttributeError: "),
    (lambda out: _replace(out, "def select(key):\n", "def select(key):\n    raise RuntimeError('sel')\n"),
     "the package's configurations cannot be read (RuntimeError: sel)"),
    # a stage_call that returns no dict of tensors: "CRASH: 'NoneType' object has no attribute 'values'"
    (lambda out: _with_op(out, lambda t: t.replace('return {"y": op(inputs["x"])}', "return None")),
     "--exported: the op's stage_call returned NoneType, not a dict of output tensors"),
])
def test_a_package_that_fails_to_load_is_one_line_not_the_kernels_crash(toy_ws, wb, damage, message):
    """A manifest edited by hand (or a package that breaks on import) made the run a CRASH
    record of the stage, and MEMORY.md showed the kernel crashing. It is the export's fault:
    one line, exit 2, no run recorded."""
    proc = wb("run", "a", "--exported", str(damage(make_export(toy_ws))))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert not list((toy_ws / "runs").glob("2*"))


def test_a_package_whose_manifest_was_emptied_by_hand_still_runs_and_says_its_name(toy_ws, wb):
    """MANIFEST = {} after the package's import: the record's description read MANIFEST["package"]
    and the run was the kernel's CRASH ('package'); the manifest only describes the op."""
    out = make_export(toy_ws)
    init = out / "toy_export" / "__init__.py"
    init.write_text(init.read_text() + "\nMANIFEST = {}\n")
    proc = wb("run", "a", "--exported", str(out), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert record_of(toy_ws, proc)["exported"]["package"] == "toy_export"


MISSING_LIBRARY = """

def load(cfg):  # the runtime's loader (runtime.py.tmpl), as tvm_ffi fails on a lib/<id>.so that is gone
    raise RuntimeError(f"Failed to load dynamic shared library {cfg['library']}: cannot open shared object file")
"""


def test_a_shared_object_that_does_not_load_is_one_line_before_any_fixture(toy_ws, wb):
    """The package's lib/<id>.so was first loaded by the first fixture's call: a missing one
    was a CRASH record of the stage. The configuration's object is loaded when it is selected."""
    out = make_export(toy_ws)
    configs = [{"id": "c0", "key": {"dtype": "bf16"}, "library": "lib/c0.so", "verified_by": []}]
    _with_manifest(out, configs=configs)
    init = out / "toy_export" / "__init__.py"
    init.write_text(init.read_text() + MISSING_LIBRARY)
    proc = wb("run", "a", "--exported", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "--exported: the package's lib/c0.so cannot be loaded (RuntimeError: Failed to load dynamic shared library" in proc.stderr
    assert not list((toy_ws / "runs").glob("2*"))


RUNTIME_OP = '''
import torch

OP, SCHEMA = "double", "(Tensor x) -> Tensor"


def exported_key(params):
    return {"dtype": str(params["dtype"])}


def call_key(x):
    return {"dtype": "bf16"}


def check(x, fake):
    return []


def fake(x):
    return torch.empty_like(x)


def launch(fn, x):
    return fn(x)


def stage_call(op, inputs, params):
    return {"y": op(inputs["x"])}
'''


def test_a_truncated_shared_object_is_one_line_not_the_workers_bus_error(toy_ws, wb):
    """With the runtime `wb export` writes (runtime.py.tmpl): tvm_ffi.load_module of a truncated
    lib/<id>.so killed the worker with SIGBUS, an unexplained CRASH of the stage. The manifest
    records the library's size and sha256, the package refuses it before loading, and the run
    is one line, exit 2, nothing recorded."""
    import tvm_ffi.libinfo

    from workbench.export.build import PACKAGE_DIR

    out = toy_ws / "export"
    pkg = out / "toy_export"
    (pkg / "lib").mkdir(parents=True)
    whole = Path(tvm_ffi.libinfo.find_libtvm_ffi()).read_bytes()  # any real shared object will do
    (pkg / "lib" / "c0.so").write_bytes(whole[:4096])  # dlopen maps past its end: SIGBUS
    config = {
        "id": "c0", "key": {"dtype": "bf16"}, "library": "lib/c0.so", "library_size": len(whole),
        "library_sha256": hashlib.sha256(whole).hexdigest(), "symbol": "double", "pieces": None, "verified_by": ["r"],
    }
    manifest = {
        "schema": 1, "namespace": "toy_export", "op": "double", "distribution": "toy-export", "package": "toy_export",
        "stage": "toy/stage-a", "commit": "abc", "dsl_version": "4.8.1", "configs": [config],
    }
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    (pkg / "_op.py").write_text(RUNTIME_OP)
    values = {"package": "toy_export", "qualname": "toy_export::double", "opname": "double", "stage": "toy/stage-a"}
    (pkg / "__init__.py").write_text(Template((PACKAGE_DIR / "runtime.py.tmpl").read_text()).safe_substitute(values))
    proc = wb("run", "a", "--exported", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stdout + proc.stderr
    assert "--exported: the package's lib/c0.so cannot be loaded (ImportError: toy_export::double: " in proc.stderr, proc.stderr
    assert f"c0.so does not match what was exported (4096 bytes, exported {len(whole)})" in proc.stderr, proc.stderr
    assert proc.stderr.count("export it again") == 1 and "; export again" not in proc.stderr, proc.stderr  # the advice once
    assert not list((toy_ws / "runs").glob("2*"))


def test_a_configuration_that_was_not_exported_is_refused_in_one_line(toy_ws, wb):
    out = make_export(toy_ws, dtypes=("fp16",))
    proc = wb("run", "a", "--exported", str(out))
    assert proc.returncode == 2 and "configuration not exported" in proc.stderr and "Traceback" not in proc.stderr


def test_a_module_of_the_packages_name_imported_first_is_named_and_fresh_is_not_advised(tmp_path, monkeypatch):
    """--exported always takes a new worker, yet the refusal of a package name already in
    sys.modules advised "run with --fresh", which changes nothing. It now names the module
    imported first (where it came from) and what to do about it."""
    import sys
    import types

    from workbench.errors import UserError
    from workbench.export.exported import ExportedOp

    squatter = types.ModuleType("toy_export_pkg")
    squatter.__file__ = "/site-packages/toy_export_pkg/__init__.py"
    monkeypatch.setitem(sys.modules, "toy_export_pkg", squatter)
    with pytest.raises(UserError) as info:
        ExportedOp.load(str(tmp_path), "toy_export_pkg")
    message = str(info.value)
    assert "--fresh" not in message and "/site-packages/toy_export_pkg/__init__.py" in message, message
    assert "\n" not in message
