"""What the trace shows without probes (issue 14, items 14 and 11): tiled-copy partitions
(`thr_copy.partition_S/partition_D`) are captured like TMA partitions, and a failed trace
still shows the ops traced before the failure, with only tensors and layouts among the
shapes involved. A tiny sm_90a kernel, compiled in-process with fake tensors."""

import importlib.util

import pytest

from shapes_kit import compile_in_process

# find_spec, not import: importing the DSL at collection would fix its arch before conftest sets CUTE_DSL_ARCH
pytestmark = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="nvidia-cutlass-dsl is not installed")

KERNEL_YAML = """\
kernel: tcopy
title: tiled copy test kernel
arch: sm_90a
parameters:
  m: {default: 128}
stages:
  - letter: a
    name: copy
    module: stage_a_copy.py
    variants: {bug: [none, local_tile]}
    fixtures: [random]
"""

STAGE = '''\
import cutlass
import cutlass.cute as cute

from workbench.compile.probe import probe
from workbench.kernels.stage import Stage, TensorSpec


def make_kernel(bug):
    @cute.kernel
    def kernel(mX: cute.Tensor, mY: cute.Tensor):
        tidx, _, _ = cute.arch.thread_idx()
        bm, _, _ = cute.arch.block_idx()
        probe("mY", mY)
        gX = cute.local_tile(mX, (64, 64), (bm, 0))
        first_row = gX[0, None]
        if cutlass.const_expr(bug == "local_tile"):
            gY = cute.local_tile(mY, (64, 64, 2), (bm, 0))
        else:
            gY = cute.local_tile(mY, (64, 64), (bm, 0))
        atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), mX.element_type)
        tiled_copy = cute.make_tiled_copy_tv(atom, cute.make_layout((32, 4), stride=(4, 1)), cute.make_layout((1, 8)))
        thr_copy = tiled_copy.get_slice(tidx)
        tXgX = thr_copy.partition_S(gX)
        tYgY = thr_copy.partition_D(gY)
        tXrX = cute.make_fragment_like(tXgX)
        tXrX_copy = thr_copy.retile(tXrX)
        probe("tXgX", tXgX)
        probe("tYgY", tYgY)
        probe("tXrX_copy", tXrX_copy)
        cute.copy(tiled_copy, tXgX, tXrX)
        cute.copy(tiled_copy, tXrX, tYgY)

    @cute.jit
    def host(mX: cute.Tensor, mY: cute.Tensor, stream):
        kernel(mX, mY).launch(grid=[2, 1, 1], block=[128, 1, 1], stream=stream)

    return host


class CopyStage(Stage):
    def inputs(self, p):
        return {"x": TensorSpec((p.m, 64), "bf16")}

    def outputs(self, p):
        return {"y": TensorSpec((p.m, 64), "bf16")}

    def compile(self, p, variants, arch):
        from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream

        x = make_fake_compact_tensor(cutlass.BFloat16, (p.m, 64), stride_order=(1, 0), assumed_align=16)
        y = make_fake_compact_tensor(cutlass.BFloat16, (p.m, 64), stride_order=(1, 0), assumed_align=16)
        return cute.compile[cute.GPUArch(arch)](make_kernel(variants["bug"]), x, y, make_fake_stream())
'''


@pytest.fixture
def copy_ws(tmp_path):
    from workbench.compile import compiler as build

    build._memory_cache.clear()
    root = tmp_path / "ws"
    (root / "stages" / "tcopy").mkdir(parents=True)
    (root / "fixtures").mkdir()
    (root / "wb.yaml").write_text("default_kernel: tcopy\n")
    (root / "stages" / "tcopy" / "kernel.yaml").write_text(KERNEL_YAML)
    (root / "stages" / "tcopy" / "stage_a_copy.py").write_text(STAGE)
    return root


def _line_of(text, root):
    (number,) = [i + 1 for i, line in enumerate(STAGE.splitlines()) if line.strip().startswith(text)]
    return f"{(root / 'stages' / 'tcopy' / 'stage_a_copy.py').resolve()}:{number}"


def _by(records, name, kind):
    found = [r for r in records if r["name"] == name and r["kind"] == kind]
    assert found, f"no {kind} {name!r} among {[(r['name'], r['kind']) for r in records]}"
    return found[0]


def test_tiled_copy_partitions_are_captured_with_their_names_and_layouts(copy_ws):
    """partition_S / partition_D of a ThrCopy (and its retile) show as ops at their lines,
    with the layout the probe of the same value prints."""
    build = compile_in_process(copy_ws)
    for name, op, line in [
        ("tXgX", "cute.tiled.copy.partition_S", "tXgX = thr_copy.partition_S(gX)"),
        ("tYgY", "cute.tiled.copy.partition_D", "tYgY = thr_copy.partition_D(gY)"),
        ("tXrX_copy", "cute.tiled.copy.retile", "tXrX_copy = thr_copy.retile(tXrX)"),
    ]:
        captured = _by(build.shapes, name, "op")
        assert captured["op"] == op and captured["source"] == line
        assert captured["location"] == _line_of(line, copy_ws)
        assert captured["layout"] == _by(build.shapes, name, "probe")["layout"] and captured["rank"] >= 2


def _failed_trace(root):
    from workbench.compile.trace_errors import KernelTraceError

    with pytest.raises(KernelTraceError) as info:
        compile_in_process(root, variants={"bug": "local_tile"})
    return info.value


def test_a_failed_trace_carries_and_prints_the_ops_traced_before_it(copy_ws):
    """The trace-finalize hook never runs on a failed trace: the ops come from the module
    under construction, so the op table up to the failure is there (records and message)."""
    error = _failed_trace(copy_ws)
    assert error.location == _line_of("gY = cute.local_tile(mY, (64, 64, 2), (bm, 0))", copy_ws)
    g_x = _by(error.shapes, "gX", "op")
    row = _by(error.shapes, "first_row", "op")
    assert (g_x["op"], row["op"]) == ("cute.local_tile", "cute.slice")
    assert g_x["location"] == _line_of("gX = cute.local_tile(mX, (64, 64), (bm, 0))", copy_ws)
    assert [r["name"] for r in error.shapes if r["kind"] == "probe"] == ["mY"]
    message = str(error)
    for record in (g_x, row):
        assert f"{record['name']} " in message and record["layout"] in message
    assert not [r for r in error.shapes if r["kind"] == "op" and r["location"] == error.location]


def test_the_shapes_involved_are_tensors_and_layouts_never_classes(copy_ws):
    """The local_tile error printed `_Tensor: <property object at 0x...>` (a class among the
    DSL frame's locals); it shows the tensor that was tiled, by the name the user's line
    gives it, with its layout."""
    error = _failed_trace(copy_ws)
    assert "object at 0x" not in str(error) and "_Tensor" not in str(error)
    assert error.involved, str(error)
    from workbench.compile.layouts import describe_layout

    for item in error.involved:
        assert describe_layout(item["layout"])["rank"] >= 1 and " object " not in item["layout"]
    assert ("mY", _by(error.shapes, "mY", "probe")["layout"]) in [(i["name"], i["layout"]) for i in error.involved]


def test_shapes_from_the_message_are_layouts_only():
    """With no tensor among the call's arguments, the involved shapes come from the DSL's
    message: its layouts, not the coordinates or tiles it quotes."""
    from workbench.compile.trace_errors import readable

    layout = "(4,8):(8,1)"
    try:
        raise ValueError(f'error: bad call with !cute.coord<"(_,?)">, #cute.tile<"[4:1]"> and !cute.layout<"{layout}">')
    except ValueError as exc:
        error = readable(exc)
    assert [i["layout"] for i in error.involved] == [layout]
