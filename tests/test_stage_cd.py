"""Stages C (online softmax over many KV tiles) and D (full FMHA) of stages/fmha.

CPU (this machine has no GPU; CUTE_DSL_ARCH=sm_90a): every configuration compiles to a cubin
for sm_90a; the probed layouts are the ones verified by hand (see the stage modules); the
P hand-over from the QK accumulator to the PV MMA's A operand is proven register by register
from the MMA atoms' TV layouts (and the bug variants' mappings match their torch models);
the fake tensors used to compile have the exact type of the tensors passed at launch; the
torch references and the kernel model agree.

On a GPU, the stages are verified through wb itself: benchmarks/gpu_verify.sh.
"""

import math
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")


def _params(**kw):
    from workbench.kernels.stage import Params

    return Params(kw)


def _compile(stage, p, variants):
    from workbench.compile.probe import capture

    with capture() as records:
        compiled = stage.compile(p, variants, "sm_90a")
    probes = {r["name"]: r["layout"] for r in records}
    return compiled, probes


# --------------------------------------------------------------------------------------
# Compile for sm_90a + probed layouts
# --------------------------------------------------------------------------------------
C_COMPILES = [
    (128, "bf16", {}),
    (128, "fp16", {}),
    (64, "bf16", {}),
    (64, "fp16", {}),
    (128, "bf16", {"softmax": "identity"}),
    (64, "fp16", {"softmax": "identity"}),
    (128, "bf16", {"rescale": "off"}),
    (128, "bf16", {"bug": "kv_tile0"}),
    (128, "bf16", {"bug": "no_rescale"}),
    (128, "bf16", {"bug": "pv_layout"}),
    (128, "bf16", {"bug": "pv_rowmajor"}),
    (64, "bf16", {"bug": "stuck_pipeline"}),
]


def _expected_common(d, consumer_wgs=2):
    """Probes verified by hand (per consumer warpgroup: 64 x 128 S tile, 64 x d O tile)."""
    boxes = d // 64  # TMA boxes per tile: 128-byte swizzle -> 64 elements of d per box
    stages = 2 if d == 128 else 3
    return {
        # S accumulator: ((2 cols, 2 rows +8, 16 column chunks of 8), MMA_M, MMA_N), fp32
        "tSrS": "((2,2,16),1,1):((1,2,4),0,0)",
        # P as the PV A operand: ((2 k, 2 rows +8, 2 k +8), 1, 8 k-blocks of 16)
        "tOrP": "((2,2,2),1,8):((1,2,4),0,8)",
        "tOrO_acc": f"((2,2,{d // 8}),1,1):((1,2,4),0,0)",
        # TMA destinations: (box elements, boxes per tile), (1, stages)
        "tQsQ": f"((4096,{boxes}),(1,{consumer_wgs})):((1,{4096 if boxes > 1 else 0}),(0,{64 * d}))",
        "tKsK": f"((8192,{boxes}),(1,{stages})):((1,{8192 if boxes > 1 else 0}),(0,{128 * d}))",
        "tVsV": f"((8192,{boxes}),(1,{stages})):((1,{8192 if boxes > 1 else 0}),(0,{128 * d}))",
        # epilogue: 64 x d O half of one WG, TMA store source
        "tOsO_tma": f"((4096,{boxes})):((1,{4096 if boxes > 1 else 0}))",
    }


@pytest.mark.parametrize("d,dtype,variants", C_COMPILES, ids=lambda x: str(x))
def test_stage_c_compiles_for_sm90a(d, dtype, variants):
    from stages.fmha.stage_c_online import StageC

    compiled, probes = _compile(StageC(), _params(m=256, n=512, d=d, dtype=dtype), variants)
    assert compiled.fn is not None
    for name, layout in _expected_common(d).items():
        assert probes[name] == layout, (name, probes[name])
    # P view of the S accumulator == the PV A-operand fragment's shape; proven at trace time
    assert probes["tOrP_view_of_S"] == "((2,2,2),1,8):((1,2,4),0,8)"
    assert "verified" in compiled.p_check and "128 threads x 64 registers" in compiled.p_check
    import pickle

    meta = pickle.loads(pickle.dumps({k: v for k, v in vars(compiled).items() if k != "fn"}))
    assert meta["d"] == d
    # the KV tile index is the last (dynamic) mode of the TMA source (loop index j)
    if not probes["tKgK"].startswith("<probe failed"):
        assert probes["tKgK"].endswith(",?):(((1@0,1@1),64@0),128@1)") or probes["tKgK"].endswith("128@1)")


D_COMPILES = [
    (128, "bf16", False, 4, 4, {}),
    (128, "bf16", True, 8, 2, {}),
    (128, "fp16", True, 2, 1, {}),
    (64, "fp16", False, 6, 2, {}),
    (64, "fp16", True, 4, 4, {}),
    (64, "bf16", False, 4, 4, {}),
    (128, "bf16", True, 4, 2, {"softmax": "identity"}),
]


@pytest.mark.parametrize("d,dtype,causal,heads,kv_heads,variants", D_COMPILES, ids=lambda x: str(x))
def test_stage_d_compiles_for_sm90a(d, dtype, causal, heads, kv_heads, variants):
    from stages.fmha.stage_d_fmha import StageD

    p = _params(m=1000, n=17, d=d, dtype=dtype, batch=2, heads=heads, kv_heads=kv_heads, causal=causal)
    compiled, probes = _compile(StageD(), p, variants)
    consumer_wgs = 3 if d == 64 and not causal else 2  # d=64 non-causal: 192-row Q tiles
    for name, layout in _expected_common(d, consumer_wgs).items():
        assert probes[name] == layout, (name, probes[name])
    assert "verified" in compiled.p_check
    assert (compiled.heads, compiled.kv_heads, compiled.causal) == (heads, kv_heads, causal)


def test_compile_time_and_smem_budget():
    """One compile serves every m, n (dynamic); report the time; smem fits 227 KiB."""
    import time

    from stages.fmha.stage_c_online import FmhaOnline
    import cutlass

    t0 = time.perf_counter()
    from stages.fmha.stage_c_online import StageC

    compiled = StageC().compile(_params(m=128, n=128, d=128, dtype="bf16"), {}, "sm_90a")
    elapsed = time.perf_counter() - t0
    print(f"\nstage C d=128 bf16 compile: {elapsed:.2f} s (cute.compile {compiled.compile_s:.2f} s)")
    for d in (64, 128):
        k = FmhaOnline(cutlass.BFloat16, d)
        stages = k.kv_stages
        smem = 2 * (2 * 64 * d) + 2 * stages * (128 * d * 2) + 2 * 64 * d * 2  # Q, K+V ring, O
        assert smem + 1024 <= 227 * 1024, (d, smem)


# --------------------------------------------------------------------------------------
# P hand-over: proven from the TV layouts; bug variants match their torch models
# --------------------------------------------------------------------------------------
def _p_maps():
    """(pairs for none / chunk / rowmajor) computed by the helpers inside a traced function."""
    import cutlass
    import cutlass.cute as cute

    from stages.fmha import common
    from stages.fmha import softmax as sm
    from stages.fmha.fmha_base import make_pv_tiled_mma

    out = {}

    @cute.jit
    def trace():
        qk = common.make_qk_tiled_mma(cutlass.BFloat16, 128, 1)
        pv = make_pv_tiled_mma(cutlass.BFloat16, 128)
        acc_shape = qk.get_slice(0).partition_shape_C((64, 128))
        p_shape = pv.get_slice(0).partition_shape_A((64, 128))
        for bug in sm.P_BUGS:
            out[bug] = sm.p_source_map(qk, pv, acc_shape, p_shape, bug)[0]
        out["check"] = sm.check_p_operand_mapping(qk, pv, acc_shape, p_shape)

    # Name the arch: a compile for another arch earlier in the process (wb shapes --arch
    # sm_100a tests) changes the DSL's default.
    cute.compile[cute.GPUArch("sm_90a")](trace)
    return out


def test_p_operand_mapping_and_bug_models():
    import torch

    from stages.fmha.stage_c_online import p_bug_permute

    maps = _p_maps()
    assert "verified" in maps["check"]
    assert len(maps["none"]) == 128 * 64
    assert all(want == got for want, got in maps["none"]), "correct view must be the identity"
    # every (row, k) of the 64 x 128 tile is covered exactly once
    assert len({want for want, _ in maps["none"]}) == 64 * 128
    # each bug variant's register mapping == the torch model used by the diagnosis
    rows, cols = torch.arange(64)[:, None].expand(64, 128), torch.arange(128)[None, :].expand(64, 128)
    code = rows * 1000 + cols
    for variant, mode in (("pv_layout", "chunk"), ("pv_rowmajor", "rowmajor")):
        seen = p_bug_permute(code, variant)
        wrong = 0
        for (wm, wk), (gm, gk) in maps[mode]:
            assert int(seen[wm, wk]) == gm * 1000 + gk, (variant, (wm, wk), (gm, gk), int(seen[wm, wk]))
            wrong += (wm, wk) != (gm, gk)
        assert wrong > 0, f"{variant} must move some P elements"


def test_p_mapping_check_rejects_a_wrong_view(monkeypatch):
    from stages.fmha import softmax as sm

    real = sm.p_operand_layout
    monkeypatch.setattr(sm, "p_operand_layout", lambda acc, bug="none": real(acc, "chunk"))
    sm._maps.clear()
    with pytest.raises(Exception, match="expects P"):
        _p_maps()
    monkeypatch.undo()
    sm._maps.clear()


def test_p_mapping_check_rejects_a_wrong_row_map(monkeypatch):
    """The rounded row sum adds operand register i to the row ``p_rows`` names: the check
    catches a map with two registers' rows swapped (row r and r + 8 of one thread)."""
    from stages.fmha import softmax as sm

    real = sm.p_rows

    def swapped(acc_shape, operand):
        rows = list(real(acc_shape, operand))
        rows[2], rows[3] = rows[2] ^ 1, rows[3] ^ 1  # one packed word moved to the other row
        return tuple(rows)

    monkeypatch.setattr(sm, "p_rows", swapped)
    sm._maps.clear()
    with pytest.raises(Exception, match="p_rows says"):
        _p_maps()
    monkeypatch.undo()
    sm._maps.clear()


# --------------------------------------------------------------------------------------
# Fake tensors for compile == the tensors passed at launch
# --------------------------------------------------------------------------------------
def test_fake_tensor_types_match_launch_tensors():
    import cutlass
    import torch
    from cutlass._mlir import ir

    from stages.fmha.host import fake_tensor, to_cute

    with ir.Context(), ir.Location.unknown():
        for shape, tdt, cdt in [
            ((256, 128), torch.bfloat16, cutlass.BFloat16),
            ((384,), torch.float32, cutlass.Float32),
            ((2, 17, 6, 64), torch.float16, cutlass.Float16),
            ((1, 1, 1, 128), torch.bfloat16, cutlass.BFloat16),
            ((2, 4, 1000), torch.float32, cutlass.Float32),
        ]:
            fake = str(fake_tensor(cdt, len(shape)).mlir_type)
            real = str(to_cute(torch.zeros(shape, dtype=tdt)).mlir_type)
            # CPU tensors are "generic"; CUDA tensors are gmem like the fake ones
            assert fake.replace("gmem", "*") == real.replace("generic", "*").replace("gmem", "*"), (shape, fake, real)


# --------------------------------------------------------------------------------------
# References and the kernel model
# --------------------------------------------------------------------------------------
def _qkv(m, n, d, seed=0, dtype=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.bfloat16
    return [torch.randn(s, d, generator=g).to(dtype) for s in (m, n, n)]


def test_reference_matches_sdpa_and_top_left_causal():
    import torch
    import torch.nn.functional as F

    from stages.fmha.reference import attention as attention_ref

    q, k, v = _qkv(100, 300, 64)
    for causal in (False, True):
        o, lse = attention_ref(q, k, v, torch.float32, causal=causal)
        o_sdpa = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        assert float((o - o_sdpa).abs().max()) < 1e-5
        s = (q.float() @ k.float().T) / 8.0
        if causal:  # top-left: row i sees keys 0..i (torch SDPA is_causal)
            s = s.masked_fill(torch.ones(100, 300, dtype=torch.bool).tril().logical_not(), float("-inf"))
        assert float((lse - torch.logsumexp(s, -1)).abs().max()) < 1e-5
    o_low, _ = attention_ref(q, k, v, torch.bfloat16)
    assert o_low.dtype == torch.bfloat16
    o_id, lse_id = attention_ref(q, k, v, torch.float32, softmax="identity")
    assert float((o_id - ((q.float() @ k.float().T) / 8.0) @ v.float()).abs().max()) < 1e-3
    assert float(lse_id.abs().max()) == 0.0


def test_fmha_reference_gqa_and_layout():
    import torch

    from stages.fmha.reference import attention as attention_ref
    from stages.fmha.reference import attention_bshd as fmha_ref

    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 37, 6, 64, generator=g)
    k = torch.randn(2, 53, 2, 64, generator=g)
    v = torch.randn(2, 53, 2, 64, generator=g)
    o, lse = fmha_ref(q, k, v, torch.float32, causal=True)
    assert o.shape == q.shape and lse.shape == (2, 6, 37)
    for b, h in ((0, 0), (1, 5), (1, 2)):
        o1, l1 = attention_ref(q[b, :, h], k[b, :, h // 3], v[b, :, h // 3], torch.float32, causal=True)
        assert float((o[b, :, h] - o1).abs().max()) < 1e-5 and float((lse[b, h] - l1).abs().max()) < 1e-5


def test_kernel_model_and_bug_mutants():
    import torch

    from stages.fmha.reference import attention as attention_ref
    from stages.fmha.stage_c_online import emulate_online

    q, k, v = _qkv(128, 512, 128, seed=3)
    o_ref, lse_ref = attention_ref(q, k, v, torch.float32)
    o, lse = emulate_online(q, k, v)
    assert float((o - o_ref).abs().max()) < 2e-2 and float((lse - lse_ref).abs().max()) < 1e-4
    # kv_tile0: attention over tile 0 (softmax is blind to the repetition), LSE + ln(tiles)
    o0, lse0 = emulate_online(q, k, v, bug="kv_tile0")
    o_t0, lse_t0 = attention_ref(q, k[:128], v[:128], torch.float32)
    assert float((o0 - o_t0).abs().max()) < 2e-2
    assert float((lse0 - lse_t0 - math.log(4)).abs().max()) < 1e-4
    # every bug variant is visible at 4 tiles, none at 1 tile except the P layout ones
    for bug in ("kv_tile0", "no_rescale", "pv_layout", "pv_rowmajor"):
        ob, _ = emulate_online(q, k, v, bug=bug)
        assert float((ob - o_ref).abs().max()) > 0.1, bug
        o1, _ = emulate_online(q, k[:128], v[:128], bug=bug)
        r1, _ = attention_ref(q, k[:128], v[:128], torch.float32)
        assert (float((o1 - r1).abs().max()) > 0.1) == bug.startswith("pv_"), bug
    o_off, _ = emulate_online(q, k, v, rescale=False)
    assert float((o_off - o_ref).abs().max()) > 0.1


def test_stage_c_variants_come_from_kernel_yaml():
    """Stage C declares no choice list of its own: what it is not given comes from
    kernel.yaml's defaults, a value kernel.yaml does not list is refused by the registry's
    rule (a UserError, one line for the user), and the values reach the kernel."""
    from stages.fmha.stage_c_online import StageC
    from workbench.errors import UserError

    p = _params(m=128, n=128, d=128, dtype="bf16")
    k = StageC().make_kernel(p, {})
    assert (k.is_exp, k.rescale, k.bug) == (True, True, "none")
    k = StageC().make_kernel(p, {"rescale": "off", "bug": "kv_tile0", "softmax": "identity"})
    assert (k.is_exp, k.rescale, k.bug) == (False, False, "kv_tile0")
    with pytest.raises(UserError, match="bug=nonsense"):
        StageC().make_kernel(p, {"bug": "nonsense"})

