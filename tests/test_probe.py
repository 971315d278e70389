"""Probe records and automatic capture on a real TMA kernel compiled for sm_90a, no GPU."""

import importlib.util

import pytest

from shapes_kit import by_name, compile_in_process, make_workspace
from workbench.compile.layouts import describe_layout, describe_type
from workbench.compile.probe import capture, probe

# find_spec, not import: importing the DSL at collection would fix its arch before conftest sets CUTE_DSL_ARCH
pytestmark = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="nvidia-cutlass-dsl is not installed")


def test_layout_strings_read_like_cute_does():
    d = describe_layout("(((64,64),1),?{i64},4,2):(((1@0,1@1),0),64@1,64@0,1@2)")
    assert d["rank"] == 4 and d["depth"] == 3
    assert d["modes"] == ["((64,64),1)", "?{i64}", "4", "2"]
    assert d["dynamic"] == ["1"] and d["size"] is None
    assert describe_layout("(64,64):(64,1)")["size"] == 4096
    assert describe_layout("S<3,4,3> o 0 o ((8,16),(64,2)):((64,512),(1,8192))")["modes"] == ["(8,16)", "(64,2)"]
    assert describe_layout("8320:1") == {"shape": "8320", "rank": 1, "depth": 0, "modes": ["8320"], "dynamic": [], "size": 8320}
    t = describe_type('!cute.memref<bf16, smem, align<1024>, S<3,4,3>, "((8192,2)):((1,8192))">')
    assert t["type"] == "tensor<ptr<bf16, smem, align<1024>, S<3,4,3>> o ((8192,2)):((1,8192))>"
    assert (t["memspace"], t["dtype"], t["align"], t["swizzle"]) == ("smem", "bf16", 1024, "S<3,4,3>")
    c = describe_type('!cute.coord_tensor<"(0,?{div=128})", "(((64,128),2)):(((1@0,1@1),64@0))">')
    assert c["memspace"] == "coord" and c["layout"] == "(((64,128),2)):(((1@0,1@1),64@0))"


def test_probe_outside_capture_is_free_and_returns_its_argument():
    value = object()
    assert probe("x", value) is value
    with capture("k/stage-a") as records:
        assert probe("t", (64, 64)) == (64, 64)
    assert records[0]["name"] == "t" and records[0]["stage"] == "k/stage-a"
    assert records[0]["location"].endswith(f"test_probe.py:{records[0]['location'].rsplit(':', 1)[1]}")
    assert "probe(\"t\"" in records[0]["source"]


@pytest.fixture
def tma_ws(tmp_path):
    return make_workspace(tmp_path / "ws")


def test_probes_inside_a_kernel_record_layout_modes_space_and_line(tma_ws):
    build = compile_in_process(tma_ws, variants={"probes": "some"})
    probes = [r for r in build.shapes if r["kind"] == "probe"]
    assert [r["name"] for r in probes] == ["sX", "tXgX"]
    sx, txgx = probes
    assert sx["layout"] == "(64,64):(64,1)" and sx["rank"] == 2 and sx["memspace"] == "smem" and sx["dtype"] == "bf16"
    assert sx["stage"] == "tmacopy/stage-a"
    # the TMA partition of the tiled (m, n, l) tensor: atom, m tiles (dynamic), n tiles, batch
    assert txgx["layout"] == "(((64,64),1),?{i64},4,2):(((1@0,1@1),0),64@1,64@0,1@2)"
    assert txgx["rank"] == 4 and txgx["depth"] == 3 and txgx["dynamic"] == ["1"] and txgx["memspace"] == "coord"
    path, line = txgx["location"].rsplit(":", 1)
    assert path.endswith("stages/tmacopy/stage_a_copy.py")
    assert open(path).read().splitlines()[int(line) - 1].strip() == 'probe("tXgX", tXgX)' == txgx["source"]
    # the probe and the automatically captured op agree on the layout, as the DSL prints it
    op = by_name(build.shapes, "tXgX", kind="op")
    assert op["layout"] == txgx["layout"] and op["op"] == "cute_nvgpu.atom.tma_partition"


def test_probes_cost_nothing_in_the_generated_code(tma_ws):
    with_probes = compile_in_process(tma_ws, variants={"probes": "some"}, use_cache=False, keep=("ptx",), artifact_dir=tma_ws / "a1")
    without = compile_in_process(tma_ws, use_cache=False, keep=("ptx",), artifact_dir=tma_ws / "a2")
    ptx = [next(iter(d.glob("*.ptx"))).read_text() for d in (tma_ws / "a1", tma_ws / "a2")]
    strip = lambda text: [l for l in text.splitlines() if not l.lstrip().startswith((".loc", ".file", "//"))]  # noqa: E731
    body = [strip(t[t.index(".visible .entry"):]) for t in ptx]
    assert len(body[0]) == len(body[1])
    assert with_probes.resources["kernels"][0]["registers"] == without.resources["kernels"][0]["registers"]


def test_automatic_capture_without_probes(tma_ws):
    build = compile_in_process(tma_ws)
    assert not [r for r in build.shapes if r["kind"] == "probe"]
    ops = {r["name"]: r for r in build.shapes}
    assert ops["gX"]["op"] == "cute.local_tile" and ops["gX"]["rank"] == 5
    assert ops["tXgX"]["op"] == "cute_nvgpu.atom.tma_partition" and ops["tXgX"]["rank"] == 4
    assert ops["tXsX"]["memspace"] == "smem"
    # tXgX[None, bm, None, bl]: the (None, 0, None, 0)-style slice keeps 2 modes
    row = ops["tXgX_row"]
    assert row["op"] == "cute.slice" and row["rank"] == 2 and row["modes"] == ["((64,64),1)", "4"]
    assert ops["tYgY"]["op"] == "cute.local_partition" and ops["tYgY"]["layout"] == "(8,4):(2048,16)"
    assert ops["tma_x"]["layout"] == "(?{i64 div=64},256,2):(1@1,1@0,1@2)"
    for r in build.shapes:  # every op record points at the user's line that made it
        path, line = r["location"].rsplit(":", 1)
        assert path.endswith("stage_a_copy.py")
        assert open(path).read().splitlines()[int(line) - 1].strip().startswith(r["source"][:20])
    # ops built inside library calls on the user's line (autovec_copy's divides) are left out
    assert not [r for r in build.shapes if r["op"] == "cute.logical_divide"]


def test_too_few_slice_coordinates_report_the_line_and_the_shapes(tma_ws):
    from workbench.compile.trace_errors import KernelTraceError

    with pytest.raises(KernelTraceError) as info:
        compile_in_process(tma_ws, variants={"slice": "short", "probes": "some"})
    err = info.value
    path, line = err.location.rsplit(":", 1)
    assert path.endswith("stage_a_copy.py") and err.source == "tXgX_row = tXgX[None, bm]"
    text = str(err)
    assert text.splitlines()[0] == f"stages/tmacopy/stage_a_copy.py:{line}: slice with 2 coordinates of a tensor with 4 modes"
    assert "(((64,64),1),?{i64},4,2)" in text and "(_,?)" in text and "weakly congruent" in text
    assert "Traceback" not in text
    # the probes captured before the failure come with the error, and the ops traced before it
    assert [r["name"] for r in err.shapes if r["kind"] == "probe"] == ["sX", "tXgX"]
    assert by_name(err.shapes, "tXgX", kind="op")["layout"] == by_name(err.shapes, "tXgX", kind="probe")["layout"]


def test_other_archs_compile_too(tma_ws):
    from shapes_kit import load
    from workbench.compile.compiler import compile_stage
    from workbench.kernels.stage import Params

    ws, spec, stage = load(tma_ws)
    build = compile_stage(spec, stage, Params(spec.resolve_params({})), spec.resolve_variants({}), "sm_100a", ws=ws, strict=False)
    assert build.arch == "sm_100a" and by_name(build.shapes, "tXgX")["rank"] == 4
