"""The compile cache trusts nothing it reads back (issue 14, item 7): a meta.json or .link
file of the wrong shape is removed with a warning and rebuilt, an entry deleted under a
warm process is stored again, and a source file the compile executed without importing it
(spec_from_file_location + exec_module, outside the workspace too) is a dependency."""

import importlib.util
import json
import shutil
import warnings

import pytest

from shapes_kit import compile_in_process, load, make_workspace

# find_spec, not import: importing the DSL at collection would fix its arch before conftest sets CUTE_DSL_ARCH
pytestmark = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="nvidia-cutlass-dsl is not installed")


def _forget_memory():
    from workbench.compile import compiler as build

    build._memory_cache.clear()


@pytest.fixture
def tma_ws(tmp_path):
    _forget_memory()
    return make_workspace(tmp_path / "ws")


def _entry(root):
    from workbench.compile.cache import cache_root

    (entry,) = cache_root(load(root)[0]).glob("tmacopy/a/*/meta.json")
    return entry.parent


def _entry_for(root, build):
    from workbench.compile.cache import cache_root

    (entry,) = cache_root(load(root)[0]).glob(f"tmacopy/a/{build.key}")
    return entry


def _rewrite_meta(entry, change):
    meta = json.loads((entry / "meta.json").read_text())
    change(meta)
    (entry / "meta.json").write_text(json.dumps(meta))


DAMAGE = {
    "checksums is a number": lambda m: m.update(checksums=5),
    "shapes is a string": lambda m: m.update(shapes="x"),
    "a record without a name": lambda m: m["shapes"][0].pop("name"),
    "deps is a list": lambda m: m.update(deps=["stages/tmacopy/stage_a_copy.py"]),
    "resources.checks is a number": lambda m: m["resources"].update(checks=5),
    "a kernel file outside the entry": lambda m: m["kernel"]["functions"][0].update(file="../../../../x.o"),
    "another key's entry": lambda m: m.update(key="0" * 24),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_meta_of_the_wrong_shape_is_removed_with_a_warning_and_rebuilt(tma_ws, damage):
    """Valid JSON with wrong types used to give a traceback on every run (checksums: 5) or
    wrong records (shapes: "x") until the cache was cleared by hand."""
    assert compile_in_process(tma_ws).cache == "cold"
    _rewrite_meta(_entry(tma_ws), DAMAGE[damage])
    _forget_memory()
    with pytest.warns(UserWarning, match="corrupt"):
        again = compile_in_process(tma_ws)
    assert again.cache == "cold" and isinstance(again.shapes, list) and again.shapes
    _forget_memory()
    assert compile_in_process(tma_ws).cache == "disk"


@pytest.mark.parametrize("damage", ["long", "path", "types"])
def test_a_link_of_the_wrong_shape_is_removed_with_a_warning(tma_ws, damage):
    """A .link file (all parameters -> the entry of the compile parameters) is checked
    like meta.json: a key that is no key (too long for a file name: an OSError before; a
    path into another entry: that entry was served) is removed with a warning."""
    from workbench.compile import cache as compile_cache

    digest = _entry_for(tma_ws, compile_in_process(tma_ws)).name
    key = {"long": "a" * 5000, "path": f"../a/{digest}", "types": ["a"]}[damage]
    ws, spec, _ = load(tma_ws)
    alias = compile_cache.make_key(spec, {"all": "parameters"}, {}, "sm_90a")
    link = compile_cache.entry_dir(ws, spec, alias).with_suffix(".link")
    link.write_text(json.dumps({"key": key, "material": {}}))
    with pytest.warns(UserWarning, match="corrupt"):
        assert compile_cache.lookup_alias(ws, spec, alias) is None
    assert not link.exists()


def test_an_entry_deleted_under_a_warm_process_is_stored_again(tma_ws):
    """A memory hit whose disk entry is gone writes it again: before, a warm worker never
    stored that stage again, and every new process compiled it cold."""
    assert compile_in_process(tma_ws).cache == "cold"
    entry = _entry(tma_ws)
    shutil.rmtree(entry)
    assert compile_in_process(tma_ws).cache == "memory"
    assert (entry / "meta.json").is_file()
    _forget_memory()
    assert compile_in_process(tma_ws).cache == "disk"


HELPER = '''\
"""Decides the tile and probes the smem tile from its own line."""
from workbench.compile.probe import probe

TILE = {tile}


def mark(tensor):
    probe("helper_sX", tensor)
'''

LOAD_HELPER = '''\
import importlib.util as _ilu


def _helper():
    spec = _ilu.spec_from_file_location("tile_helper_not_in_sys_modules", {path!r})
    module = _ilu.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


'''


def _stage_using_a_helper_file(root, helper, when):
    """The tmacopy stage, its tile and a probe taken from `helper`, loaded at import or in compile()."""
    stage_file = root / "stages" / "tmacopy" / "stage_a_copy.py"
    text = stage_file.read_text()
    text = text.replace("TILE = (64, 64)\n", LOAD_HELPER.format(path=str(helper)) + "TILE = (64, 64)\n")
    if when == "import":
        text = text.replace("TILE = (64, 64)\n", "_h = _helper()\nTILE = _h.TILE\n")
        mark = "_h.mark(sX)"
    else:
        text = text.replace(
            "        kernel = TmaCopy(",
            "        global TILE, _h\n        _h = _helper()\n        TILE = _h.TILE\n        kernel = TmaCopy(",
        )
    text = text.replace("        mbar = storage.mbar.data_ptr()\n", "        mbar = storage.mbar.data_ptr()\n        _h.mark(sX)\n")
    stage_file.write_text(text)


def _helper_probe(build):
    (record,) = [r for r in build.shapes if r["name"] == "helper_sX"]
    return record


@pytest.mark.parametrize("when", ["import", "compile"])
def test_a_helper_file_executed_without_import_is_a_dependency(tma_ws, tmp_path, when):
    """A stage that loads a file from another folder with spec_from_file_location +
    exec_module (not in sys.modules): editing that file is a miss, in memory and on disk,
    and the next compile shows the helper's new tile and the probe's new line."""
    helper = tmp_path / "elsewhere" / "tiles.py"
    helper.parent.mkdir()
    helper.write_text(HELPER.format(tile="(64, 64)"))
    _stage_using_a_helper_file(tma_ws, helper, when)
    first = compile_in_process(tma_ws)
    old = _helper_probe(first)
    probe_line = HELPER.splitlines().index('    probe("helper_sX", tensor)') + 1
    assert old["location"] == f"{helper}:{probe_line}"
    _forget_memory()
    assert compile_in_process(tma_ws).cache == "disk"

    helper.write_text("# one more line\n" + HELPER.format(tile="(64, 128)"))
    second = compile_in_process(tma_ws)  # the memory cache holds the old build: it must not answer
    assert second.cache == "cold"
    new = _helper_probe(second)
    assert int(new["location"].rsplit(":", 1)[1]) == int(old["location"].rsplit(":", 1)[1]) + 1
    assert new["source"] == 'probe("helper_sX", tensor)'
    assert new["layout"] != old["layout"] and new["modes"][1] == "128"
    meta = json.loads((_entry_for(tma_ws, second) / "meta.json").read_text())
    assert meta["deps"][str(helper.resolve())]  # outside the workspace: an absolute key
    _forget_memory()
    assert compile_in_process(tma_ws).cache == "disk"


def test_the_trace_names_every_source_file_in_its_locations(tma_ws):
    """The files named by the traced IR's location info are dependencies too."""
    from workbench.compile.trace import TraceState, scan_text

    text = '''#loc1 = loc("/a/stage.py":10:4)
#loc2 = loc("tX = f(x)"(#loc1))
#loc3 = loc(callsite("/b/other.py":3:1 at "/c/third.py":7:2))
"builtin.module"() ({
  %0 = "cute.make_coord"() : () -> !cute.coord<"(_,0)"> loc("/d/inline.py":1:1)
}) : () -> () loc(#loc2)
'''
    state = TraceState()
    scan_text(state, text)
    assert state.files == {"/a/stage.py", "/b/other.py", "/c/third.py", "/d/inline.py"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build = compile_in_process(tma_ws)
    meta = json.loads((_entry_for(tma_ws, build) / "meta.json").read_text())
    assert "stages/tmacopy/stage_a_copy.py" in meta["deps"]


def test_an_entry_replaced_while_it_is_read_is_not_called_corrupt_or_deleted(tmp_path, monkeypatch):
    """store() deleted the old entry file by file before renaming the new one in: a process
    reading it then found fn0.o missing, called the entry corrupt and deleted whatever was at
    the path, the new entry included (9 false warnings in 8 s of two processes). Now the old
    entry leaves by one rename, and a reader whose entry changed under it just misses."""
    from types import SimpleNamespace

    from workbench.compile import cache
    from workbench.workspace import Workspace

    (tmp_path / "wb.yaml").write_text("")
    ws = Workspace(tmp_path)
    spec = SimpleNamespace(kernel="k", letter="a", id="stage-a")
    key = cache.Key("0" * 24, {"n": 1})
    store = lambda seconds: cache.store(ws, spec, key, None, shapes=[], resources=None, deps={}, seconds=seconds, arch="sm_90a")  # noqa: E731
    store(1.0)
    real_read = cache._read_entry

    def read_while_another_process_stores(path):
        real_read(path)  # read the old entry, then the other store lands before the check
        store(2.0)
        raise cache.CacheCorrupt("fn0.o missing")

    monkeypatch.setattr(cache, "_read_entry", read_while_another_process_stores)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "corrupt ... rebuilding it" warning fails the test
        assert cache.lookup(ws, spec, key) is None
    monkeypatch.setattr(cache, "_read_entry", real_read)
    assert cache.lookup(ws, spec, key).seconds == 2.0
    assert [p.name for p in cache.entry_dir(ws, spec, key).parent.iterdir()] == [key.digest]  # no .old-/.tmp- left


def test_what_a_killed_store_left_is_pruned_by_the_next_store_once_old(tmp_path):
    """A store killed with SIGKILL leaves its .tmp- folder (a whole kernel's objects) or the
    entry it moved aside (.old-), and a link's temp file; nothing removed them, so the cache
    grew by an entry per kill. The next store in that stage's folder prunes those older than an
    hour and keeps recent ones (a store in progress in another process)."""
    import os
    import time
    from types import SimpleNamespace

    from workbench.compile import cache
    from workbench.workspace import Workspace

    (tmp_path / "wb.yaml").write_text("")
    ws = Workspace(tmp_path)
    spec = SimpleNamespace(kernel="k", letter="a", id="stage-a")
    folder = cache.entry_dir(ws, spec, cache.Key("0" * 24, {})).parent
    folder.mkdir(parents=True)
    stale = [folder / ".tmp-abc", folder / ".old-0123-99-ff", folder / ("1" * 24 + ".link.4242.tmp")]
    fresh = folder / ".tmp-fresh"
    for path in [*stale[:2], fresh]:
        path.mkdir()
        (path / "fn0.o").write_bytes(b"x" * 10)
    stale[2].write_text("{}")
    hour_ago = time.time() - cache.LEFTOVER_AGE_S - 60
    for path in stale:
        os.utime(path, (hour_ago, hour_ago))
    key = cache.Key("0" * 24, {"n": 1})
    cache.store(ws, spec, key, None, shapes=[], resources=None, deps={}, seconds=1.0, arch="sm_90a")
    assert sorted(p.name for p in folder.iterdir()) == sorted([".tmp-fresh", key.digest])
