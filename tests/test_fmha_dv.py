"""Stage D with dv != d (V's and O's head dim, FlashAttention-3's hdim_v; e.g. 192/128 as
DeepSeek's MLA prefill uses), on the CPU: the stage's tensors and FLOP count, every fixture and
the reference against a dense softmax(QKᵀ/sqrt(d))V whose V is narrower than Q, the kernel's
refusals, an sm_90a compile without spills whose PV accumulator and V/O boxes have dv's width,
and the export's op module with a narrower V. The kernel itself ran on an H200 (docs/fmha.md)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_cases as A  # noqa: E402

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from stages.fmha import geometry as G  # noqa: E402
from stages.fmha.stage_d_fmha import StageD  # noqa: E402
from workbench.errors import UserError  # noqa: E402
from workbench.kernels.stage import Params  # noqa: E402

FIXTURES = ["random", "identity-softmax", "ones-v", "single", "onehot-p", "iota", "softcap-logits", "window-edges"]


def params(**kw):
    base = dict(m=90, n=170, d=192, dv=128, dtype="bf16", batch=1, heads=2, kv_heads=1, causal=False)
    base.update(kw)
    return Params(base)


def test_the_stage_s_tensors_and_flops_take_dv():
    p = params()
    st = StageD()
    ins, outs = st.inputs(p), st.outputs(p)
    assert ins["q"].shape == (1, 90, 2, 192) and ins["k"].shape == (1, 170, 1, 192) and ins["v"].shape == (1, 170, 1, 128)
    assert outs["o"].shape == (1, 90, 2, 128) and outs["lse"].shape == (1, 2, 90)
    # QK^T costs 2·d and PV 2·dv per (query, key) pair: 4·d when dv = d
    assert st.flops(p) == pytest.approx(2 * (192 + 128) * 1 * 2 * 90 * 170)
    assert st.flops(params(dv=192)) == pytest.approx(4 * 192 * 1 * 2 * 90 * 170)
    varlen = params(varlen=True, seqlens="30:60", seqlens_k="")
    assert st.inputs(varlen)["v"].shape == (90, 1, 128) and st.outputs(varlen)["o"].shape == (90, 2, 128)


@pytest.mark.parametrize("causal", [False, True])
def test_every_fixture_and_the_reference_work_with_a_narrower_v(causal):
    from workbench.kernels.fixtures import get_fixture

    fixtures, _ = A.load()
    p = params(causal=causal)
    stage = StageD()
    ins = stage.inputs(p)
    for name in FIXTURES:
        fx = get_fixture(fixtures, name, ins)
        variants = dict(fx.variants)
        x = fx.make(ins, p, 0, "cpu")
        assert x["v"].shape == (1, 170, 1, 128), name
        ref = stage.reference(x, p, variants, torch.float32)
        assert ref["o"].shape == (1, 90, 2, 128) and torch.isfinite(ref["o"]).all(), name
        q = x["q"].float().permute(0, 2, 1, 3)
        k = x["k"].float().permute(0, 2, 1, 3).repeat_interleave(2, 1)
        v = x["v"].float().permute(0, 2, 1, 3).repeat_interleave(2, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(192)  # the scale is Q's head dim
        mask = torch.ones(90, 170, dtype=torch.bool).tril() if causal else torch.ones(90, 170, dtype=torch.bool)
        if variants.get("softmax") == "identity":
            o = s.masked_fill(~mask, 0.0) @ v
        else:
            o = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
        torch.testing.assert_close(ref["o"].permute(0, 2, 1, 3), o, atol=2e-4, rtol=2e-4)


def test_dv_wider_than_d_or_off_the_list_is_one_line():
    for dv in (256, 100):
        with pytest.raises(UserError, match="at most d=192|dv=100"):
            StageD().make_kernel(params(dv=dv), {})
    # the geometry counts V's and O's tiles at dv: 192/128 takes FA3's 128-key tiles, which fit
    # only with O staged in Q, as d = dv = 192's 112-key tiles do
    assert G.kv_tile(192, 128) == 128 and G.kv_tile(192) == G.kv_tile(192, 192) == 112
    assert G.smem_bytes(192, 128, 2, 2, 1, True, dv=128) <= G.SMEM_CAPACITY
    assert G.smem_bytes(192, 128, 2, 2, 1, False, dv=128) > G.SMEM_CAPACITY
    assert G.smem_bytes(192, 112, 2, 2, 1, False) > G.SMEM_CAPACITY


def test_192_by_128_compiles_for_sm90a_without_spills_at_dv_s_width():
    pytest.importorskip("cutlass")
    from workbench.compile.probe import capture
    from workbench.compile.trace import tracing

    with capture() as records, tracing("d", "sm_90a") as state:
        compiled = StageD().compile(params(causal=True), {}, "sm_90a")
    probes = {r["name"]: r["layout"] for r in records}
    assert compiled.fn is not None and "verified" in compiled.p_check
    assert probes["tOrO_acc"].startswith("((2,2,16),1,1)")  # the PV accumulator: 64 x 128 over a WG
    assert probes["tSrS"].startswith("((2,2,16),1,1)")  # S: 64 x 128 (192/128's KV tile)
    fields = dict(f.split(":")[:2] for f in state.kernels[0].smem_fields)
    assert int(fields["sV"]) == 2 * 128 * 128 * 2 and "sO" not in fields  # V at dv; O staged in Q


def test_o_staged_in_q_starts_each_wgs_tile_at_its_own_q_slot():
    """With dv < d, O's (64, dv) tiles live in Q's (64, d) slots: WG w's O tile must start at
    WG w's Q slot (consumer-mode stride 64 d, not 64 dv, which would put WG 1's O inside WG 0's
    Q while WG 0 may still read it), with the same swizzle."""
    pytest.importorskip("cutlass")
    import cutlass
    import cutlass.cute as cute

    from stages.fmha.stage_d_fmha import FmhaForward

    kernel = FmhaForward(cutlass.BFloat16, 192, 4, 4, dv=128)
    assert kernel.o_in_q and kernel.tile_n == 128
    seen = {}

    @cute.jit
    def layouts():
        sQ, _, _, sO = kernel._smem_layouts()
        seen["sQ"], seen["sO"] = str(sQ), str(sO)

    cute.compile[cute.GPUArch("sm_90a")](layouts)
    swizzle_q, _, q = seen["sQ"].partition(" o 0 o ")
    swizzle_o, _, o = seen["sO"].partition(" o 0 o ")
    assert swizzle_o == swizzle_q
    assert q.endswith("(0,12288))") and o.endswith("(0,12288))"), seen  # 64 x 192 elements per WG
    assert "(64,2),(1,2)" in o  # (64, 128) per WG: two 64-column swizzle atoms


def test_the_exported_op_keys_allocates_and_fakes_o_at_dv():
    """The export's op module (torch only, run here with a stand-in kernel): V's head dim is
    part of the configuration key, a call's v selects it, o is (b, m, h, dv) under fake
    tensors and at launch, and k and v may differ in their last dim only."""
    from stages.fmha import export_op

    key = export_op.exported_key({"d": 192, "dv": 128, "dtype": "bf16", "heads": 2, "kv_heads": 1})
    assert key["dv"] == 128 and export_op.exported_key({"d": 128, "dtype": "bf16", "heads": 2, "kv_heads": 1})["dv"] == 128
    q = torch.empty(1, 40, 2, 192, dtype=torch.bfloat16)
    k = torch.empty(1, 70, 1, 192, dtype=torch.bfloat16)
    v = torch.empty(1, 70, 1, 128, dtype=torch.bfloat16)
    assert export_op.call_key(q, k, v) == key
    o, lse = export_op.fake(q, k, v)
    assert o.shape == (1, 40, 2, 128) and lse.shape == (1, 2, 40)
    assert not [p for p in export_op.check(q, k, v, fake=True) if "shape" in p]
    assert any("v.shape" in p for p in export_op.check(q, k, v[:, :60], fake=True))
    dev = torch.device("cpu")
    export_op._per_stream[(dev, 0)] = (torch.zeros(2, dtype=torch.int32), 132, torch.empty(1))  # no CUDA here
    try:
        seen = []
        o, lse = export_op.launch({"fn": (lambda q, k, v, o, *rest: seen.append(o.shape), {})}, q, k, v)
        assert seen == [(1, 40, 2, 128)] and o.shape == (1, 40, 2, 128) and lse.shape == (1, 2, 40)
    finally:
        export_op._per_stream.pop((dev, 0), None)
        export_op._lse_like.clear()


def test_correct_outputs_with_a_narrower_v_get_no_explanation_and_a_bug_is_named():
    """The diagnosis at d = 192, dv = 128: a correct kernel's outputs (bf16 P before P·V, one-ulp
    noise) are 'ok' for every fixture, and a kernel that reads K's tiles as V's (the kv-tile0
    bug) is still named."""
    ins, outs, _ = A.specs_for(A.CONFIGS["d-192-dv128"])
    assert ins["v"].shape[-1] == outs["o"].shape[-1] == 128
    A.assert_no_false_alarm("d-192-dv128", FIXTURES[:6])
    d = A.diagnose_mutant("d-192-dv128", "random", "kv-tile0")
    assert d.status == "explained" and (d.best.name == "kv-tile0" or "kv-tile0" in d.best.same_as), d.headline


def test_a_scale_taken_from_dv_is_named():
    """The typical dv bug, 1/sqrt(dv) where 1/sqrt(d) belongs, is its own mutant and names a
    kernel's output that has it; with dv = d it does not apply."""
    d = A.diagnose_mutant("d-192-dv128", "random", "scale-of-dv")
    assert d.status == "explained" and (d.best.name == "scale-of-dv" or "scale-of-dv" in d.best.same_as), d.headline
    assert "scale-of-dv" not in A.predictions("d-192", "random")[0]
