"""On a GPU: what the varlen sweeps (benchmarks/gpu_verify_parity.sh, varlen) cannot show.

* varlen=true with equal lengths is the fixed-length kernel bit for bit (same tiles, same
  order, keys past a sequence's end masked to exactly zero weight), so the packed path adds
  no numerical difference of its own;
* a launch after the first does not synchronize with the device (no .item() per launch);
* rows of a sequence's neighbours are never written by its Q tail (O poisoned first, then
  each sequence compared with its own reference, the empty-key one exactly 0 / -inf).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CPU machines
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from stages.fmha import reference  # noqa: E402
from stages.fmha.stage_d_fmha import StageD  # noqa: E402
from workbench.kernels.stage import Params  # noqa: E402


def _params(**kw):
    base = dict(m=1000, n=1000, d=128, dtype="bf16", batch=3, heads=4, kv_heads=2, causal=False, varlen=False,
                seqlens="", seqlens_k="")
    base.update(kw)
    return Params(base)


def _run(st, p, inputs, variants=None):
    compiled = st.compile(p, variants or {}, "sm_90a")
    outs = {name: torch.full(spec.shape, float("nan"), dtype=spec.torch_dtype(), device="cuda")
            for name, spec in st.outputs(p).items()}
    st.launch(compiled, inputs, outs)
    torch.cuda.synchronize()
    return compiled, outs


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_equal_lengths_are_the_fixed_length_kernel_bit_for_bit(d, causal):
    st = StageD()
    b, m = 3, 1000
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(b, m, 4, d, generator=g).bfloat16().cuda()
    k = torch.randn(b, m, 2, d, generator=g).bfloat16().cuda()
    v = torch.randn(b, m, 2, d, generator=g).bfloat16().cuda()
    # the short tile whole: d = 64 non-causal's fixed-length default shares a sequence's last,
    # short Q tile among its three WGs (short_tile=split, fixed lengths only), another sum order
    _, fixed = _run(st, _params(d=d, causal=causal), {"q": q, "k": k, "v": v}, {"short_tile": "whole"})
    cu = torch.arange(0, (b + 1) * m, m, dtype=torch.int32, device="cuda")
    packed = {"q": q.reshape(b * m, 4, d), "k": k.reshape(b * m, 2, d), "v": v.reshape(b * m, 2, d),
              "cu_seqlens_q": cu, "cu_seqlens_k": cu.clone()}
    _, var = _run(st, _params(d=d, causal=causal, varlen=True, seqlens=":".join([str(m)] * b)), packed)
    assert torch.equal(var["o"], fixed["o"].reshape(b * m, 4, d))
    assert torch.equal(var["lse"], fixed["lse"].permute(1, 0, 2).reshape(4, b * m))


def test_launch_is_sync_free_and_neighbours_are_untouched():
    st = StageD()
    lq, lk = [65, 1, 0, 190, 129, 7], [65, 300, 5, 0, 129, 7]
    p = _params(d=64, causal=True, varlen=True, seqlens=":".join(map(str, lq)), seqlens_k=":".join(map(str, lk)))
    g = torch.Generator(device="cpu").manual_seed(1)
    cq = torch.tensor([0] + lq, dtype=torch.int32).cumsum(0).to(torch.int32)
    ck = torch.tensor([0] + lk, dtype=torch.int32).cumsum(0).to(torch.int32)
    inputs = {
        "q": torch.randn(sum(lq), 4, 64, generator=g).bfloat16().cuda(),
        "k": torch.randn(sum(lk), 2, 64, generator=g).bfloat16().cuda(),
        "v": torch.randn(sum(lk), 2, 64, generator=g).bfloat16().cuda(),
        "cu_seqlens_q": cq.cuda(), "cu_seqlens_k": ck.cuda(),
    }
    compiled, outs = _run(st, p, inputs)
    o_ref, lse_ref = reference.attention_varlen(inputs["q"], inputs["k"], inputs["v"], cq, ck, torch.float32, causal=True)
    assert not torch.isnan(outs["o"]).any()  # every row written (poisoned with NaN first)
    assert (outs["o"].float() - o_ref).abs().max() < 2e-2
    empty = slice(int(cq[3]), int(cq[4]))  # the sequence without keys
    assert (outs["o"][empty] == 0).all() and (outs["lse"][:, empty] == float("-inf")).all()
    finite = torch.isfinite(lse_ref)
    assert (outs["lse"][finite] - lse_ref[finite]).abs().max() < 1e-3
    # a second launch on the same inputs does not synchronize (max_seqlen_q is cached)
    torch.cuda.set_sync_debug_mode("error")
    try:
        st.launch(compiled, inputs, outs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


# each injected varlen bug FAILs and its mutant is the top explanation (lengths chosen so that
# the buggy kernel is deterministic: first_length with the shortest sequence first never
# writes a row twice)
VARLEN_BUGS = [
    ("next_offset", "300:1000:77:500", "varlen-next-offset"),
    ("tail_unmasked", "300:1000:77:500", "varlen-tail-unmasked"),
    ("first_length", "77:1000:300:500", "varlen-first-length"),
]


@pytest.mark.parametrize("bug, seqlens, mutant", VARLEN_BUGS, ids=[b[0] for b in VARLEN_BUGS])
def test_injected_varlen_bug_is_the_top_explanation(fmha_ws, bug, seqlens, mutant):
    import json

    from conftest import run_wb

    args = ["run", "d", "-p", "varlen=true", "-p", f"seqlens={seqlens}", "-V", f"varlen_bug={bug}",
            "--fixture", "random", "--seeds", "1", "--timeout", "60", "--json"]
    proc = run_wb(*args, cwd=fmha_ws, timeout=240)
    record = json.loads(proc.stdout)
    assert proc.returncode == 1 and record["verdict"] == "FAIL"
    case = next(c for c in record["results"] if c["verdict"] == "FAIL")
    explanations = case["diagnosis"]["explanations"]
    assert explanations and explanations[0]["name"] == mutant, [e["name"] for e in explanations]
