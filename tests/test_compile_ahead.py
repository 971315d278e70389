"""A local sweep compiles its configurations on every core before its lanes start
(workbench.run.compile_ahead): a lane's worker compiled its cases one by one, and on a 16-core
GPU machine that was 65 % of four sweeps' time (docs/perf-notes.md, round 12)."""

import os
from pathlib import Path

from conftest import REPO
from workbench.kernels.registry import load_kernels, resolve_stage
from workbench.kernels.stage_source import UNKNOWN, class_literal
from workbench.remote import sweep as sweeps
from workbench.run import compile_ahead
from workbench.workspace import Workspace


def _cases(ws, stage, axes, variant_axes=None):
    spec = resolve_stage(ws, stage, load_kernels(ws))
    return spec, sweeps.plan(spec, axes, variant_axes or {})


def test_one_target_per_configuration_the_code_depends_on_with_the_fixtures_variants():
    """n is no compile parameter of stage D (its compile_params, read from the source): four
    lengths of two masks are two configurations, and each also compiles as the
    identity-softmax fixture asks (softmax=identity)."""
    ws = Workspace(REPO)
    spec, cases = _cases(ws, "fmha/d", {"n": ["17", "1000", "4096", "8192"], "causal": ["false", "true"]})
    assert len(cases) == 8
    targets = compile_ahead.targets(ws, spec, cases, [], None)
    seen = sorted((t.params["causal"], t.variants["softmax"]) for t in targets)
    assert seen == [(False, "exp"), (False, "identity"), (True, "exp"), (True, "identity")]
    assert all(t.arch == spec.arch for t in targets)
    # -f random alone: no fixture asks for another variant
    assert len(compile_ahead.targets(ws, spec, cases, ["random"], None)) == 2
    # a swept variant is its own configuration
    spec, cases = _cases(ws, "fmha/d", {"n": ["17", "1000"]}, {"lazy_rescale": ["off", "on"]})
    assert len(compile_ahead.targets(ws, spec, cases, ["random"], "sm_90a")) == 2


def test_class_literals_come_from_the_source_and_a_computed_one_is_unknown(tmp_path):
    assert class_literal(REPO / "stages/fmha/stage_a_qk.py", "compile_params") == ("d", "dtype")
    assert class_literal(REPO / "tests/data/toy_ws/stages/toy/stage_a.py", "is_cute", True) is False
    module = tmp_path / "stage_x.py"
    module.write_text("from workbench import Stage\nNAMES = ('d',)\nclass X(Stage):\n    compile_params = NAMES\n")
    assert class_literal(module, "compile_params") is UNKNOWN  # then every parameter counts
    module.write_text("class X(Stage):\n    pass\n")
    assert class_literal(module, "compile_params") is None
    # a subclass that sets it otherwise was not read (only classes naming Stage as a base were)
    module.write_text("class X(Stage):\n    compile_params = ('d',)\nclass Y(X):\n    compile_params = ('d', 'n')\n")
    assert class_literal(module, "compile_params") is UNKNOWN
    module.write_text("class X(Stage):\n    compile_params = ('d',)\nclass Y(X):\n    compile_params = ('d',)\n")
    assert class_literal(module, "compile_params") == ("d",)


def test_a_cpu_stage_or_a_single_configuration_is_not_compiled_ahead(toy_ws, monkeypatch):
    """The toy stages are plain PyTorch on the CPU: nothing to compile, no workers started; nor
    with one configuration, or one core to compile on."""
    ws = Workspace(toy_ws)
    spec, cases = _cases(ws, "a", {"n": ["128", "256"]})
    assert compile_ahead.compile_ahead(ws, spec, cases, [], None) is None
    repo = Workspace(REPO)
    fmha_d, two = _cases(repo, "fmha/d", {"causal": ["false", "true"]})
    assert compile_ahead.worthwhile(fmha_d) and not compile_ahead.worthwhile(spec)
    _, same = _cases(repo, "fmha/d", {"n": ["1000", "4096"]})
    assert compile_ahead.compile_ahead(repo, fmha_d, same, ["random"], None) is None  # one configuration
    monkeypatch.setenv("WB_COMPILE_JOBS", "1")
    assert compile_ahead.compile_ahead(repo, fmha_d, two, ["random"], None) is None  # one core


def test_the_configurations_compiled_ahead_are_what_a_case_loads(fmha_ws, monkeypatch):
    """Two configurations compiled ahead by two workers; a case of another length then takes
    its build from the disk cache, the long kernel with it."""
    from workbench.compile.compiler import compile_stage

    monkeypatch.setenv("WB_COMPILE_JOBS", "2")
    monkeypatch.delenv("WB_WORKER_PRELOAD", raising=False)
    ws = Workspace(Path(fmha_ws))
    spec, cases = _cases(ws, "fmha/d", {"n": ["1000", "4096"], "d": ["64"], "causal": ["false", "true"]})
    notes = []
    done = compile_ahead.compile_ahead(ws, spec, cases, ["random"], None, on_note=notes.append)
    assert done["configurations"] == 2 and done["failed"] == 0 and done["compiled"] + done["cached"] == 2, done
    assert notes[0].startswith("compiling 2 configuration(s) ahead on 2 core(s)") and "compiled ahead in" in notes[1]
    assert "WB_WORKER_PRELOAD" not in os.environ  # the lanes' workers, started next, preload torch as before
    stage = spec.load()
    for causal in ("false", "true"):
        params = spec.resolve_params({"n": "8192", "d": "64", "causal": causal})
        build = compile_stage(spec, stage, params, spec.resolve_variants({}), None, ws=ws)
        assert build.cached and build.cache == "disk", (causal, build.cache)
        assert build.compiled.fn_long is not None  # d = 64 builds its long kernel (192-row causal, round-robin non-causal)


def test_a_failing_compile_ahead_is_a_note_and_the_sweep_goes_on(toy_ws, monkeypatch):
    """Whatever goes wrong compiling ahead (here: it raises), the sweep says so in a note and its
    cases run as before, compiling for themselves."""
    def broken(*args, **kwargs):
        raise RuntimeError("no room left on the cache's disk\nsecond line")

    monkeypatch.setattr(compile_ahead, "_compile_ahead", broken)
    ws = Workspace(toy_ws)
    spec, cases = _cases(ws, "a", {"n": ["128"]})
    events = []
    done = sweeps._compile_ahead(ws, spec, cases, sweeps.RunOptions(), events.append)
    assert [e.text for e in events] == ["compile ahead skipped: no room left on the cache's disk"]
    assert done == {"skipped": "no room left on the cache's disk"}  # what wb sweep --json shows


def test_wb_bench_compiles_its_cases_ahead_without_the_fixtures_variants(monkeypatch):
    """wb bench times the stage's own build on random inputs: its cases' configurations are
    compiled ahead, none with a fixture's variant; what happens shows as progress."""
    from workbench.run import bench

    ws = Workspace(REPO)
    spec, cases = _cases(ws, "fmha/d", {"n": ["4096", "8192"], "causal": ["false", "true"]})
    assert len(compile_ahead.targets(ws, spec, cases, None, None)) == 2  # no softmax=identity
    seen = {}

    def fake(ws_, spec_, cases_, fixtures, arch, on_note):
        seen.update(cases=[dict(c.params) for c in cases_], fixtures=fixtures)
        on_note("compiling 2 configuration(s) ahead on 2 core(s)")

    monkeypatch.setattr(compile_ahead, "compile_ahead", fake)
    events = []
    resolved = [{"params": c.params} for c in cases]
    bench._compile_ahead(ws, spec, resolved, {"softmax": "exp"}, events.append)
    assert seen == {"cases": [c.params for c in cases], "fixtures": None}
    assert events == [{"type": "progress", "phase": "compile ahead", "text": "compiling 2 configuration(s) ahead on 2 core(s)"}]
