"""On a GPU (2026-12-07, H100: 25 of 26 at commit 18dee9b; the identity-table case at d = 64
non-causal failed against a dense launch that now shares its short last tile; with that fixed,
the identity and packed cases 10 of 10 at ca4a6f0): what the paged sweeps (gpu_tune_d.sh
pagedlens) cannot show.

* page_size > 0 with the identity block table over a cache laid out like the dense K/V is the
  unpaged kernel bit for bit (same tiles, same order): paging adds only addressing;
* each injected paging bug (``paged_bug``) FAILs against the reference and the diagnosis names
  its mutant first (the wb run lines of the paged section show the same through wb);
* sequences of unequal KV lengths (cache_seqlens, incl. none) each attend their own keys, with
  fixed-length or packed queries.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CPU machines
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_cases as A  # noqa: E402

from stages.fmha.stage_d_fmha import StageD  # noqa: E402
from workbench.kernels.fixtures import get_fixture  # noqa: E402
from workbench.kernels.stage import Params  # noqa: E402


def _params(**kw):
    base = dict(m=1000, n=1000, d=128, dtype="bf16", batch=3, heads=4, kv_heads=2, causal=False, page_size=0)
    base.update(kw)
    return Params(base)


def _run(st, p, inputs, variants=None):
    compiled = st.compile(p, dict(variants or {}), "sm_90a")
    outs = {name: torch.full(spec.shape, float("nan"), dtype=spec.torch_dtype(), device="cuda")
            for name, spec in st.outputs(p).items()}
    st.launch(compiled, inputs, outs)
    torch.cuda.synchronize()
    return outs


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_identity_table_is_the_unpaged_kernel_bit_for_bit(d, causal):
    st = StageD()
    b, n, ps = 3, 1024, 256
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(b, 1000, 4, d, generator=g).bfloat16().cuda()
    k = torch.randn(b, n, 2, d, generator=g).bfloat16().cuda()
    v = torch.randn(b, n, 2, d, generator=g).bfloat16().cuda()
    # the dense launch without what only a plain launch does (the short tile shared by the WGs,
    # the split-KV tail): their arithmetic differs in the last Q tile's rows
    dense = _run(st, _params(d=d, causal=causal, n=n), {"q": q, "k": k, "v": v}, {"short_tile": "whole", "split_tail": "off"})
    per = n // ps
    paged = {"q": q, "k": k.reshape(b * per, ps, 2, d), "v": v.reshape(b * per, ps, 2, d),
             "block_table": torch.arange(b * per, dtype=torch.int32, device="cuda").view(b, per),
             "cache_seqlens": torch.full((b,), n, dtype=torch.int32, device="cuda")}
    out = _run(st, _params(d=d, causal=causal, n=n, page_size=ps), paged)
    assert torch.equal(out["o"], dense["o"]) and torch.equal(out["lse"], dense["lse"])


BUGS = [("page_off_by_one", "paged-page-off-by-one"), ("offset_ignored", "paged-offset-ignored"),
        ("batch0_table", "paged-batch0-table")]


@pytest.mark.parametrize("bug, name", BUGS, ids=[b for b, _ in BUGS])
def test_injected_paging_bugs_fail_and_are_named(bug, name):
    from workbench.diagnose import diagnose

    fixtures, mutants = A.load()
    st = StageD()
    p = _params(d=64, n=1000, m=700, page_size=256, causal=True)
    specs = st.inputs(p)
    fx = get_fixture(fixtures, "random", specs)
    inputs = fx.make(specs, p, 0, "cuda")
    expected = st.reference(inputs, p, {}, torch.float32)
    out = _run(st, p, inputs, {"paged_bug": bug})
    assert (out["o"].float() - expected["o"].float()).nan_to_num(9.0).abs().max() > 0.1
    d = diagnose(out, expected, inputs, p, dict(fx.variants), "random", mutants)
    assert d.best is not None and d.best.name == name, d.headline
    ok = _run(st, p, inputs)
    assert (ok["o"].float() - expected["o"].float()).abs().max() < 0.05


@pytest.mark.parametrize("d, page_size", [(64, 16), (128, 64), (128, 256), (192, 16)])
@pytest.mark.parametrize("causal, align", [(False, "top_left"), (True, "top_left"), (True, "bottom_right")])
def test_unequal_kv_lengths_are_each_sequences_own(d, page_size, causal, align):
    """cache_seqlens of unequal lengths (none, one past a page, a tail inside the last tile,
    the full room) read per work tile: each sequence matches the reference over its own keys
    (the cache rows past its length hold poison), the one with none gets O = 0 and LSE = -inf."""
    fixtures, _ = A.load()
    st = StageD()
    p = _params(d=d, n=1000, m=700, batch=4, page_size=page_size, causal=causal, align=align, seqlens_k="0:17:1000:650")
    specs = st.inputs(p)
    inputs = get_fixture(fixtures, "random", specs).make(specs, p, 0, "cuda")
    expected = st.reference(inputs, p, {}, torch.float32)
    out = _run(st, p, inputs)
    assert (out["o"].float() - expected["o"].float()).abs().max() < 0.05
    assert bool((out["o"][0] == 0).all()) and bool(torch.isneginf(out["lse"][0]).all())
    fin = torch.isfinite(expected["lse"])
    assert torch.equal(fin, torch.isfinite(out["lse"]))
    assert (out["lse"][fin] - expected["lse"][fin]).abs().max() < 0.05


def test_first_length_bug_fails_and_is_named():
    """paged_bug=first_length (every sequence takes cache_seqlens[0]) FAILs on unequal lengths
    and the diagnosis names paged-first-length first."""
    from workbench.diagnose import diagnose

    fixtures, mutants = A.load()
    st = StageD()
    p = _params(d=64, n=1000, m=700, page_size=64, causal=True, seqlens_k="1000:300:640")
    specs = st.inputs(p)
    fx = get_fixture(fixtures, "random", specs)
    inputs = fx.make(specs, p, 0, "cuda")
    expected = st.reference(inputs, p, {}, torch.float32)
    out = _run(st, p, inputs, {"paged_bug": "first_length"})
    assert (out["o"].float() - expected["o"].float()).nan_to_num(9.0).abs().max() > 0.1
    d = diagnose(out, expected, inputs, p, dict(fx.variants), "random", mutants)
    assert d.best is not None and d.best.name == "paged-first-length", d.headline


@pytest.mark.parametrize("d, page_size", [(64, 16), (128, 64), (128, 256)])
@pytest.mark.parametrize("causal", [False, True])
def test_packed_queries_over_a_paged_cache(d, page_size, causal):
    """varlen=true with page_size > 0: packed queries (lengths 1 / 700 / 0 / 300 / 4096) over
    pages holding keys of other lengths (5 / 1000 / 33 / 0 / 4000), cu_seqlens_k derived from
    cache_seqlens on the device: every sequence matches the reference; the one without keys
    gets O = 0 and LSE = -inf."""
    fixtures, _ = A.load()
    st = StageD()
    p = _params(d=d, page_size=page_size, causal=causal, varlen=True, seqlens="1:700:0:300:4096",
                seqlens_k="5:1000:33:0:4000", align="bottom_right")
    specs = st.inputs(p)
    inputs = get_fixture(fixtures, "random", specs).make(specs, p, 0, "cuda")
    expected = st.reference(inputs, p, {}, torch.float32)
    out = _run(st, p, inputs)
    assert (out["o"].float() - expected["o"].float()).abs().max() < 0.05
    fin = torch.isfinite(expected["lse"])
    assert torch.equal(fin, torch.isfinite(out["lse"]))
    assert (out["lse"][fin] - expected["lse"][fin]).abs().max() < 0.05
    assert bool((out["o"][701:1001] == 0).all())  # the sequence with no keys (rows 701 ... 1000)
