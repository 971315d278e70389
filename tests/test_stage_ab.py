"""FMHA stages A (S = Q K^T scale) and B (P = softmax(S)): compile on the CPU, check shapes.

CPU tests (no GPU needed; CUTE_DSL_ARCH is not needed either, the arch is a compile option):
  * every (d, dtype[, softmax]) config really compiles for sm_90a, and the probe records
    (captured with workbench.compile.probe.capture) have the mode counts and shapes worked out by hand
    (TMA boxes of 64 x 128 elements, d/64 of them per tile; accumulator ((2,2,16),1,1); ...);
  * the accumulator ownership the row reductions rely on, from the tiled MMA's layout;
  * the TMA transaction bytes, shared-memory size and the PTX (TMA count, expect_tx bytes,
    wgmma shape) of one config per stage;
  * the torch references.
On a GPU, the stages are verified through wb itself: benchmarks/gpu_verify.sh.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from workbench.compile.probe import capture
from workbench.kernels.stage import Params

ARCH = "sm_90a"
A_CONFIGS = [(d, dt) for d in (64, 128) for dt in ("bf16", "fp16")]
B_CONFIGS = [(d, dt, sm) for d in (64, 128) for dt in ("bf16", "fp16") for sm in ("exp", "identity")]

_compiled: dict = {}


def _compile(letter: str, d: int, dtype: str, softmax: str | None = None):
    """Compile once per config (module cache); returns (stage, compiled, probes, seconds)."""
    key = (letter, d, dtype, softmax)
    if key not in _compiled:
        if letter == "a":
            from stages.fmha.stage_a_qk import StageA as S
        else:
            from stages.fmha.stage_b_softmax import StageB as S
        stage = S()
        variants = {"softmax": softmax} if softmax else {}
        t0 = time.perf_counter()
        with capture() as rec:
            compiled = stage.compile(Params({"m": 256, "n": 512, "d": d, "dtype": dtype}), variants, ARCH)
        secs = time.perf_counter() - t0
        _compiled[key] = (stage, compiled, {r["name"]: r for r in rec}, secs)
    return _compiled[key]


def _shape(rec) -> str:
    return rec["layout"].split(":")[0]


def _stride(rec) -> str:
    return rec["layout"].split(":", 1)[1]


def _common_probe_checks(probes, d):
    boxes = d // 64  # the TMA box is 64 elements (128 bytes, the swizzle width) x 128 rows
    # Q tile: ((TMA box (64 d-elements, 128 rows)), boxes along d); smem side 8192 elems a box
    assert _shape(probes["gQ"]) == f"(128,{d})"
    assert _shape(probes["tQgQ"]) == f"(((64,128),{boxes}))"
    assert _shape(probes["tQsQ"]) == f"((8192,{boxes}))"
    # WGMMA operands of one warpgroup: (MMA, MMA_M|N, MMA_K) smem descriptors, d/16 k-blocks
    k_mode = "4" if d == 64 else "(4,2)"
    assert _shape(probes["tSrQ"]) == f"(1,1,{k_mode})"
    # accumulator: ((2 cols, 2 rows 8 apart, 16 column blocks of 8), MMA_M=1, MMA_N=1): 64 fp32
    assert probes["tSrS"]["layout"] == "((2,2,16),1,1):((1,2,4),0,0)"


@pytest.mark.parametrize("d,dtype", A_CONFIGS)
def test_stage_a_compiles_with_expected_shapes(d, dtype):
    stage, compiled, probes, secs = _compile("a", d, dtype)
    assert compiled is not None
    _common_probe_checks(probes, d)
    assert _shape(probes["tKgK"]) == f"(((64,128),{d // 64}))"
    assert _shape(probes["tKsK"]) == f"((8192,{d // 64}))"
    assert _shape(probes["tSrK"]) == _shape(probes["tSrQ"])
    # S store: the accumulator's own partition of the 128 x 128 gmem tile, dynamic row stride
    assert _shape(probes["tSgS"]) == "((2,2,16),1,1)"
    assert re.fullmatch(r"\(\(1,\?\{i64 div=\d+\},8\),0,0\)", _stride(probes["tSgS"]))
    # transaction bytes = Q tile + K tile
    assert stage.kernel_obj.tx_bytes == 2 * 128 * d * 2
    print(f"stage a d={d} {dtype}: compiled in {secs:.2f}s")


@pytest.mark.parametrize("d,dtype,softmax", B_CONFIGS)
def test_stage_b_compiles_with_expected_shapes(d, dtype, softmax):
    stage, compiled, probes, secs = _compile("b", d, dtype, softmax)
    assert compiled is not None
    _common_probe_checks(probes, d)
    # K: (128, d, T) tiles, dynamic T; smem (.., (1, 2 stages))
    assert re.fullmatch(rf"\(\(\(64,128\),{d // 64}\),\?\)", _shape(probes["tKgK"]))
    assert _shape(probes["tKsK"]) == f"((8192,{d // 64}),(1,2))"
    k_mode = "4" if d == 64 else "(4,2)"
    assert _shape(probes["tSrK"]) == f"(1,1,{k_mode},(1,2))"
    assert re.fullmatch(r"\(\(2,2,16\),1,1,\?\)", _shape(probes["tSgP"]))
    assert _shape(probes["tSrP"]) == "((2,2,16),1,1)"
    # (rows, cols) view of the accumulator: 2 rows (+0, +8), 32 columns per thread
    assert probes["tSrS_rows"]["layout"] == "((2,1),(2,16,1)):((2,0),(1,4,0))"
    assert stage.kernel_obj.q_bytes == 128 * d * 2
    assert stage.kernel_obj.k_bytes == 128 * d * 2
    print(f"stage b d={d} {dtype} softmax={softmax}: compiled in {secs:.2f}s")


@pytest.mark.parametrize("letter", ["a", "b"])
def test_shared_memory_fits(letter):
    import cutlass.memory

    cap = cutlass.memory.get_smem_capacity_in_bytes("sm_90")
    stage, *_ = _compile(letter, 128, "bf16", None if letter == "a" else "exp")
    size = stage.kernel_obj.shared_storage.size_in_bytes()
    expected = 128 * 128 * 2 * (2 if letter == "a" else 3)  # Q + K (B: Q + 2 K stages)
    assert expected <= size <= cap, (size, cap)


def test_accumulator_rows_are_owned_by_quads():
    """The claim behind the row reductions: in the (rows, cols) view of the accumulator each
    thread's row r is one tile row, held by exactly the 4 lanes 4q..4q+3 of one warp, and
    all threads together hold each of the 128 x 128 elements exactly once."""
    import cutlass
    import cutlass.cute as cute

    from stages.fmha import common, host

    out = {}

    @cute.jit
    def analyse():
        tiled_mma = common.make_qk_tiled_mma(cutlass.BFloat16, 128, 2)
        out["own"] = common.accumulator_rows(tiled_mma, (128, 128), 256)

    host.compile_for(ARCH, analyse)
    owners: dict[int, set] = {}
    seen: dict[tuple, int] = {}
    for t, rows in out["own"].items():
        assert len(rows) == 2
        for r in rows:
            assert len(r) == 32
            tile_rows = {x for x, _ in r}
            assert len(tile_rows) == 1, (t, tile_rows)
            owners.setdefault(r[0][0], set()).add(t)
            for xy in r:
                seen[xy] = seen.get(xy, 0) + 1
        # this thread's two rows are 8 apart
        assert rows[1][0][0] - rows[0][0][0] == 8
    assert len(seen) == 128 * 128 and set(seen.values()) == {1}
    assert sorted(owners) == list(range(128))
    for row, threads in owners.items():
        threads = sorted(threads)
        assert len(threads) == 4
        assert threads[0] % 4 == 0 and threads == list(range(threads[0], threads[0] + 4)), (row, threads)
        # warpgroup w owns rows [64 w, 64 w + 64)
        assert threads[0] // 128 == row // 64


def _ptx(letter, d, dtype, softmax="exp"):
    import cutlass
    from cutlass import Float32

    from stages.fmha import common, host

    el = common.cute_dtype(dtype)
    q = host.fake_tensor(el, 2)
    k = host.fake_tensor(el, 2)
    if letter == "a":
        from stages.fmha.stage_a_qk import FmhaQK

        obj, out = FmhaQK(el, d), host.fake_tensor(Float32, 2)
    else:
        from stages.fmha.stage_b_softmax import FmhaSoftmax

        obj, out = FmhaSoftmax(el, d, softmax), host.fake_tensor(el, 2)
    c = host.compile_for(ARCH, obj, q, k, out, Float32(1 / math.sqrt(d)), host.fake_stream(), keep_ptx=True)
    assert cutlass is not None
    return c.__ptx__


def test_stage_a_ptx(tmp_path, monkeypatch):
    from cutlass.cutlass_dsl import CuTeDSL

    # the DSL's default folder for kept files (the working directory at its import): none land there
    dump_default = Path(CuTeDSL._get_dsl().envar.dump_dir)
    before = set(dump_default.glob("cutlass___*"))
    monkeypatch.chdir(tmp_path)
    ptx = _ptx("a", 128, "bf16")
    assert not list(tmp_path.iterdir()) and set(dump_default.glob("cutlass___*")) == before
    assert ptx.count("cp.async.bulk.tensor.2d") == 4  # Q and K, two 64-wide boxes each
    assert re.findall(r"mov.b32\s+%r\d+, (\d+);\s+mbarrier.arrive.expect_tx", ptx) == ["65536"]
    assert ptx.count("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == 8  # d/16
    assert ptx.count("wgmma.commit_group") == 1 and ptx.count("wgmma.wait_group.sync.aligned \t0") == 1
    # 64 fp32 per thread. With a dynamic row stride of unknown divisibility (the launch type)
    # the compiler cannot prove 8-byte alignment, so each value is its own store.
    assert ptx.count("st.global.v2.b32") * 2 + ptx.count("st.global.b32") == 64
    # TMA box rows come from the block index (shl by 7 of ctaid.x / ctaid.y)
    assert "%ctaid.x" in ptx and "%ctaid.y" in ptx


def test_stage_b_ptx():
    ptx = _ptx("b", 64, "fp16", "exp")
    expect = re.findall(r"mov.b32\s+%r\d+, (\d+);\s+mbarrier.arrive.expect_tx", ptx)
    assert expect and set(expect) == {str(128 * 64 * 2)}
    assert ptx.count("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16") == 2 * 4  # 2 passes
    assert ptx.count("ex2.approx") == 2 * 64 + 2  # pass 1 + rescale (2 rows), pass 2
    assert ptx.count("shfl.sync.bfly") == 8  # max (2 rows x 2) + final sum (2 rows x 2)
    assert ptx.count("rcp.approx") == 2
    ident = _ptx("b", 64, "fp16", "identity")
    assert "ex2.approx" not in ident and "shfl.sync.bfly" not in ident
    assert ident.count("wgmma.mma_async") == 4


# --------------------------------------------------------------------------------------
# CPU checks of the references
# --------------------------------------------------------------------------------------
def test_references_cpu():
    import torch

    from stages.fmha import reference

    g = torch.Generator().manual_seed(0)
    q = torch.randn(256, 64, generator=g).to(torch.bfloat16)
    k = torch.randn(384, 64, generator=g).to(torch.bfloat16)
    s = reference.scores(q, k, torch.float32)
    assert s.dtype == torch.float32 and s.shape == (256, 384)
    torch.testing.assert_close(s, (q.float() @ k.float().T) / 8)
    p = reference.softmax_probs(q, k, torch.float32)
    torch.testing.assert_close(p.sum(1), torch.ones(256))
    torch.testing.assert_close(p, torch.softmax(s, 1))
    assert reference.softmax_probs(q, k, torch.bfloat16).dtype == torch.bfloat16
    torch.testing.assert_close(reference.softmax_probs(q, k, torch.float32, softmax="identity"), s)
    v = torch.randn(384, 32, generator=g)
    o, lse = reference.attention(q, k, v, torch.float32)
    torch.testing.assert_close(o, torch.softmax(s, 1) @ v)
    torch.testing.assert_close(lse, torch.logsumexp(s, 1))
