"""Stage D page_size > 0 (paged KV) on the CPU: the paged inputs the fixtures build (each
sequence's logical K/V scattered over random pages, the rest poison), the torch reference
against an independent float64 gather, the paged mutants (each named by the diagnosis on a
fixture that shows it), the one-line errors, one sm_90a compile and the bench peers' refusal.
The kernel itself is verified on a GPU by benchmarks/gpu_verify_parity.sh, section paged."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_cases as A  # noqa: E402

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from fixtures.attention import PAGE_POISON  # noqa: E402
from stages.fmha.stage_d_fmha import StageD  # noqa: E402
from workbench.kernels.fixtures import get_fixture  # noqa: E402
from workbench.kernels.stage import Params  # noqa: E402

PAGED_MUTANTS = ["paged-page-off-by-one", "paged-offset-ignored", "paged-batch0-table"]
#: unequal KV lengths (seqlens_k) for batch 3, n = 300: a sequence with no keys, one past a page
#: boundary, one full
LENGTHS = "130:0:300"


def params(**kw):
    base = dict(m=200, n=300, d=64, dtype="bf16", batch=3, heads=4, kv_heads=2, causal=False, page_size=256)
    base.update(kw)
    return Params(base)


def _case(fixture, p, seed=0):
    fixtures, mutants = A.load()
    st = StageD()
    specs, outs = st.inputs(p), st.outputs(p)
    fx = get_fixture(fixtures, fixture, specs)
    variants = dict(fx.variants)
    inputs = fx.make(specs, p, seed, "cpu")
    expected = st.reference(inputs, p, variants, torch.float32)
    return inputs, expected, outs, variants, mutants


def test_bench_peers_without_a_block_table_refuse_paged_inputs():
    """`wb bench` on a paged case: SDPA reads contiguous K/V only, so it refuses (the bench shows
    why) rather than time another layout; FA4 takes the same caches and table."""
    from stages.fmha import peers

    inputs, *_ = _case("random", params(page_size=64))
    for name in ("sdpa-math", "sdpa-cudnn", "cutlass-example"):
        with pytest.raises(ValueError, match="no paged KV cache"):
            peers.make_peer(name, inputs, {"page_size": 64})


def test_fa4_refuses_top_left_causal_where_a_sequences_length_is_not_m():
    """FA4 aligns causal bottom-right: a top-left causal case is another mask wherever n != m
    (a fixed-length m != n, or a paged sequence whose n_b != m), so `wb bench` says so instead
    of timing other work (it timed it before: plain causal passed the window-only check)."""
    from stages.fmha import peers

    fixed, *_ = _case("random", params(causal=True, page_size=0))  # m 200, n 300
    with pytest.raises(ValueError, match="align=top_left with m != n"):
        peers.make_peer("fa4", fixed, {"causal": True})
    unequal, *_ = _case("random", params(causal=True, m=300, seqlens_k="300:200:300"))
    with pytest.raises(ValueError, match="align=top_left with m != n"):
        peers.make_peer("fa4", unequal, {"page_size": 256, "causal": True})
    equal, *_ = _case("random", params(causal=True, m=300))
    try:
        peers.make_peer("fa4", equal, {"page_size": 256, "causal": True})  # None here (no flash_attn), or FA4's run
    except ValueError as exc:
        assert "m != n" not in str(exc)


@pytest.mark.parametrize("page_size", [16, 128, 256])
def test_paged_inputs_scatter_the_pages_and_poison_the_rest(page_size):
    """The block table is a set of distinct pages per run (a permutation, not the identity),
    every page not in it and every row past n of a sequence's last page holds the poison, so
    a wrong page or row read changes O."""
    p = params(page_size=page_size)
    inputs, *_ = _case("random", p)
    bt, k = inputs["block_table"].long(), inputs["k"].float()
    per_seq = -(-300 // page_size)
    assert bt.shape == (3, per_seq) and len(set(bt.flatten().tolist())) == bt.numel()
    assert not torch.equal(bt.flatten(), torch.arange(bt.numel()))
    unused = sorted(set(range(k.shape[0])) - set(bt.flatten().tolist()))
    assert unused and bool((k[unused] == PAGE_POISON).all())
    tail = 300 - (per_seq - 1) * page_size
    assert bool((k[bt[:, -1], tail:] == PAGE_POISON).all())
    assert inputs["cache_seqlens"].tolist() == [300] * 3


def _dense_f64(q, kc, vc, bt, n, causal):
    """Independent float64 attention: the logical K/V gathered row by row through the table;
    ``n`` one length for every sequence or one per sequence (none: O = 0, LSE = -inf)."""
    B, M, H, D = q.shape
    Hk, ps = kc.shape[2], kc.shape[1]
    o = torch.zeros(B, M, H, D, dtype=torch.float64)
    lse = torch.full((B, H, M), float("-inf"), dtype=torch.float64)
    lens = n if isinstance(n, list) else [n] * B
    for b in range(B):
        n = lens[b]
        if n == 0:
            continue
        k = torch.stack([kc[int(bt[b, r // ps]), r % ps] for r in range(n)]).double()
        v = torch.stack([vc[int(bt[b, r // ps]), r % ps] for r in range(n)]).double()
        for h in range(H):
            s = q[b, :, h].double() @ k[:, h // (H // Hk)].T / math.sqrt(D)
            if causal:
                s = s.masked_fill(torch.arange(n)[None, :] > torch.arange(M)[:, None], float("-inf"))
            lse[b, h] = torch.logsumexp(s, -1)
            o[b, :, h] = torch.softmax(s, -1) @ v[:, h // (H // Hk)]
    return o, lse


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("page_size", [16, 256])
def test_reference_matches_float64_gather(causal, page_size):
    p = params(causal=causal, page_size=page_size)
    inputs, expected, *_ = _case("random", p)
    o, lse = _dense_f64(inputs["q"], inputs["k"], inputs["v"], inputs["block_table"], 300, causal)
    assert torch.allclose(expected["o"].double(), o, atol=2e-5)
    assert torch.allclose(expected["lse"].double(), lse, atol=2e-5)


def test_unequal_lengths_fill_cache_seqlens_and_poison_every_row_past_them():
    """seqlens_k gives each sequence its own KV length: cache_seqlens holds them, the table
    keeps each sequence's room for n keys, and every cache row past a sequence's length holds
    the poison (a kernel that reads one key too many shows in O)."""
    inputs, *_ = _case("random", params(page_size=64, seqlens_k=LENGTHS))
    bt, k = inputs["block_table"].long(), inputs["k"].float()
    assert inputs["cache_seqlens"].dtype == torch.int32 and inputs["cache_seqlens"].tolist() == [130, 0, 300]
    assert bt.shape == (3, 5)
    for b, n in enumerate([130, 0, 300]):
        rows = torch.cat([k[bt[b, p]] for p in range(5)])  # (5 * 64, kv_heads, d) in key order
        assert bool((rows[n:] == PAGE_POISON).all()) and not bool((rows[:n] == PAGE_POISON).any())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("page_size", [16, 256])
def test_reference_with_unequal_lengths_matches_float64_gather(causal, page_size):
    """Each sequence attends its own first cache_seqlens[b] keys (top-left causal); the one
    with none gets O = 0 and LSE = -inf."""
    p = params(causal=causal, page_size=page_size, seqlens_k=LENGTHS)
    inputs, expected, *_ = _case("random", p)
    o, lse = _dense_f64(inputs["q"], inputs["k"], inputs["v"], inputs["block_table"], [130, 0, 300], causal)
    assert torch.allclose(expected["o"].double(), o, atol=2e-5)
    assert torch.equal(torch.isinf(expected["lse"]), torch.isinf(lse))
    assert torch.allclose(expected["lse"].double().nan_to_num(neginf=0), lse.nan_to_num(neginf=0), atol=2e-5)


def test_reference_with_unequal_lengths_is_each_sequence_alone():
    """Bottom-right causal, a window and a softcap with unequal lengths: sequence b's rows
    equal attention over that sequence alone (its n_b keys, its own n_b - m offset)."""
    from stages.fmha import reference

    p = params(causal=True, align="bottom_right", window_left=50, softcap=30.0, page_size=64, seqlens_k=LENGTHS)
    inputs, expected, *_ = _case("random", p)
    k, v = reference.gather_pages(inputs["k"], inputs["v"], inputs["block_table"], 300)
    for b, n in enumerate([130, 0, 300]):
        if n == 0:
            assert bool((expected["o"][b] == 0).all()) and bool(torch.isneginf(expected["lse"][b]).all())
            continue
        o, lse = reference.attention_bshd(inputs["q"][b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], torch.float32, causal=True,
                                          align="bottom_right", window_left=50, window_right=-1, softcap=30.0)
        assert torch.equal(expected["o"][b:b + 1], o) or torch.allclose(expected["o"][b:b + 1], o, atol=1e-6)
        fin = torch.isfinite(lse)
        assert torch.equal(fin, torch.isfinite(expected["lse"][b:b + 1]))
        assert torch.allclose(expected["lse"][b:b + 1][fin], lse[fin], atol=1e-5)


def test_flops_count_each_sequence_by_its_own_length():
    st = StageD()
    equal, unequal = params(page_size=64), params(page_size=64, seqlens_k=LENGTHS)
    assert st.flops(unequal) == pytest.approx(st.flops(equal) * (130 + 0 + 300) / 900)


def test_unequal_lengths_name_the_first_length_mutant():
    """The kernel that gives every sequence sequence 0's KV length (paged_bug=first_length) is
    named by the diagnosis; the generic model (one n for all) steps aside on such inputs; the
    correct output names none."""
    from workbench.diagnose import MutantContext, NotApplicable, Pred, diagnose, views_for

    p = params(causal=True, seqlens_k="300:130:0")
    inputs, expected, outs, variants, mutants = _case("random", p)
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants=variants,
                       fixture="random", views=views_for(A.ROOT / "stages" / "fmha"))
    with pytest.raises(NotApplicable):
        mutants["kv-tail-unmasked"].fn(cx)
    pred = mutants["paged-first-length"].fn(cx)
    o = pred["o"].values if isinstance(pred["o"], Pred) else pred["o"]
    assert (o - expected["o"].float()).abs().max() > 0.1
    out = A.kernel_like({**expected, **pred}, outs, seed=3)
    d = diagnose(out, expected, inputs, p, variants, "random", mutants)
    assert d.status == "explained" and d.best.name == "paged-first-length", d.headline
    ok = A.kernel_like(dict(expected), outs, seed=9)
    assert not diagnose(ok, expected, inputs, p, variants, "random", mutants).explanations


@pytest.mark.parametrize("causal", [False, True])
def test_onehot_p_read_map_reads_v_through_the_block_table(causal):
    """onehot-p over a paged cache (sequence lengths 300, 130 and 0): the read map matches O's
    rows to V's rows through the block table, not to the cache's pages as if they were
    sequences. The correct output: every query of a sequence with keys read its intended row
    (the sequence without keys is not counted). Every sequence reading batch 0's table row
    (paged-batch0-table): batch 0's queries read the right rows, the others no V row of theirs.
    The mutant cost counts each sequence's own keys."""
    from workbench.diagnose import MutantContext, Pred, diagnose, views_for

    p = params(causal=causal, page_size=64, seqlens_k="300:130:0")
    inputs, expected, outs, variants, mutants = _case("onehot-p", p)
    per_seq = 200 * 4  # m x heads
    d = diagnose(A.kernel_like(dict(expected), outs, seed=1), expected, inputs, p, variants, "onehot-p", mutants)
    assert d.status == "ok" and not d.notes, d.notes
    assert d.readmap.queries == d.readmap.correct == 2 * per_seq
    views = views_for(A.ROOT / "stages" / "fmha")
    assert views.cost(inputs) == (300 + 130) * per_seq
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants=variants,
                       fixture="onehot-p", views=views)
    pred = mutants["paged-batch0-table"].fn(cx)
    out = A.kernel_like({**expected, **{k: v.values if isinstance(v, Pred) else v for k, v in pred.items()}}, outs, seed=2)
    rm = diagnose(out, expected, inputs, p, variants, "onehot-p", mutants).readmap
    assert rm.correct == per_seq and rm.queries == 2 * per_seq, rm.summary


@pytest.mark.parametrize("causal", [False, True])
def test_paged_mutants_are_named(causal):
    """Each paged bug model differs from the reference, and the diagnosis of its (bf16-noised)
    output on the random fixture (page_size=256: two 128-key tiles per page) names it first;
    the correct output names none."""
    from workbench.diagnose import Pred, diagnose

    p = params(causal=causal)
    inputs, expected, outs, variants, mutants = _case("random", p)
    from workbench.diagnose import MutantContext, views_for

    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants=variants,
                       fixture="random", views=views_for(A.ROOT / "stages" / "fmha"))
    for i, name in enumerate(PAGED_MUTANTS):
        pred = mutants[name].fn(cx)
        o = pred["o"].values if isinstance(pred["o"], Pred) else pred["o"]
        assert (o - expected["o"].float()).abs().max() > 0.1, name
        out = A.kernel_like({**expected, **pred}, outs, seed=i)
        d = diagnose(out, expected, inputs, p, variants, "random", mutants)
        assert d.status == "explained" and d.best.name == name, (name, d.headline)
    ok = A.kernel_like(dict(expected), outs, seed=9)
    assert not diagnose(ok, expected, inputs, p, variants, "random", mutants).explanations


def test_a_first_sequence_without_keys_and_a_cache_without_any_are_modelled():
    """Sequence 0 with no keys: paged-first-length gives every sequence none (it raised inside
    the reference's one-n shortcut, a 'mutant failed' note on every diagnosis of such a case);
    every length 0: the reference is O = 0 and LSE = -inf, not an error."""
    from workbench.diagnose import MutantContext, views_for

    p = params(page_size=64, seqlens_k="0:300:130")
    inputs, expected, outs, variants, mutants = _case("random", p)
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants=variants,
                       fixture="random", views=views_for(A.ROOT / "stages" / "fmha"))
    pred = mutants["paged-first-length"].fn(cx)
    assert (pred["o"] == 0).all() and (pred["lse"] == float("-inf")).all()
    inputs, expected, *_ = _case("random", params(page_size=64, seqlens_k="0:0:0"))
    assert (expected["o"] == 0).all() and (expected["lse"] == float("-inf")).all()


def test_an_lse_wrong_by_more_than_fp32_allows_is_not_called_right_beside_a_right_o():
    """Every sequence reading batch 0's table on ones-v: O stays right (V is ones), LSE is off by
    up to 0.45, 1.4% relative, under bf16 O's failure bar (1.56%) but over fp32's (1%). Each output
    is judged by its own dtype: the diagnosis names the bug on LSE (it said 'matches')."""
    from workbench.diagnose import MutantContext, diagnose, views_for

    p = params(page_size=64)
    inputs, expected, outs, variants, mutants = _case("ones-v", p)
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants=variants,
                       fixture="ones-v", views=views_for(A.ROOT / "stages" / "fmha"))
    pred = mutants["paged-batch0-table"].fn(cx)
    assert (pred["lse"] - expected["lse"]).abs().max() > 0.3
    d = diagnose(A.kernel_like({**expected, **pred}, outs, seed=0), expected, inputs, p, variants, "ones-v", mutants)
    assert d.status == "explained" and d.best.name == "paged-batch0-table" and d.best.evidence == ["lse"], d.headline
    assert d.thresholds["fail_min_by_output"] == {"o": pytest.approx(0.015625), "lse": 0.01}


@pytest.mark.parametrize("causal", [False, True])
def test_paged_mutants_are_named_for_packed_queries(causal):
    """varlen=true over a paged cache (three packed query sequences, KV lengths 300, 0 and
    200, 256-key pages): each paged bug model applies to packed queries, and the diagnosis of
    its output names it first wherever it changes the output (all four without causal; causal
    bottom-right: every one that shows); the correct output names none."""
    from workbench.diagnose import MutantContext, Pred, diagnose, views_for

    extra = {"align": "bottom_right"} if causal else {}
    p = params(m=64, n=64, batch=3, causal=causal, varlen=True, seqlens="70:130:5", seqlens_k="300:0:200",
               n_max=300, **extra)
    inputs, expected, outs, variants, mutants = _case("random", p)
    assert inputs["q"].dim() == 3 and "block_table" in inputs
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants=variants,
                       fixture="random", views=views_for(A.ROOT / "stages" / "fmha"))
    named = []
    for i, name in enumerate(PAGED_MUTANTS + ["paged-first-length"]):
        pred = mutants[name].fn(cx)
        o = pred["o"].values if isinstance(pred["o"], Pred) else pred["o"]
        if (o - expected["o"].float()).abs().max() < 0.1:
            assert causal, name
            continue
        out = A.kernel_like({**expected, **pred}, outs, seed=i)
        d = diagnose(out, expected, inputs, p, variants, "random", mutants)
        assert d.status == "explained" and d.best.name == name, (name, d.headline)
        named.append(name)
    assert len(named) >= (4 if not causal else 2), named
    ok = A.kernel_like(dict(expected), outs, seed=9)
    assert not diagnose(ok, expected, inputs, p, variants, "random", mutants).explanations


@pytest.mark.parametrize("args", [["-p", "page_size=32", "-p", "d=192"], ["-p", "page_size=128", "-p", "d=192"],
                                  ["-p", "page_size=100"], ["-p", "page_size=64", "-p", "varlen=true", "-V", "paged_bug=first_length"],
                                  ["-p", "page_size=64", "-p", "varlen=true", "-V", "varlen_bug=next_offset"],
                                  ["-p", "page_size=64", "-V", "paged_bug=offset_ignored"],
                                  ["-p", "page_size=64", "-p", "batch=3", "-p", "seqlens_k=1:2"],
                                  ["-p", "page_size=64", "-p", "n=300", "-p", "batch=2", "-p", "seqlens_k=1:301"],
                                  ["-p", "page_size=64", "-p", "seqlens=1:2"]])
def test_wb_compile_rejects_paged_mistakes_in_one_line(args):
    """A page size that neither divides nor is a multiple of the KV tile (d=192's 112 keys),
    a page size outside the choices, first_length with varlen (its lengths are cu_seqlens'), a
    varlen bug over pages (its model reads packed keys), the offset bug with pages smaller than
    a tile (no offset to ignore), paged lengths not one per sequence or past n, q lengths
    (seqlens) without varlen: one line, exit 2, no traceback."""
    from conftest import run_wb

    r = run_wb("compile", "d", *args, cwd=A.ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert ("page_size" in r.stderr or "seqlens" in r.stderr) and "Traceback" not in r.stderr
    assert [line.startswith("wb: error:") for line in r.stderr.splitlines() if not line.startswith("[")] == [True], r.stderr


def test_paged_compiles_for_sm90a_without_spills():
    """page_size=256, d=64 causal (two KV tiles per page) compiles for sm_90a with 0 spill bytes."""
    from conftest import run_wb

    r = run_wb("compile", "d", "-p", "page_size=256", "-p", "d=64", "-p", "causal=true", "--json", cwd=A.ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    import json

    rec = json.loads(r.stdout)
    assert rec["params"]["page_size"] == 256
    (kernel,) = rec["resources"]["kernels"]
    assert kernel["spill_store_bytes"] == 0 and kernel["spill_load_bytes"] == 0


@pytest.mark.parametrize("args, tile", [(["-p", "page_size=16", "-p", "d=64", "-p", "causal=true"], 128),
                                        (["-p", "page_size=64", "-p", "dtype=fp16", "-p", "kv_heads=2"], 128),
                                        (["-p", "page_size=16", "-p", "d=192"], 112)])
def test_pages_smaller_than_a_kv_tile_compile_one_box_per_page_without_spills(args, tile):
    """page_size dividing the KV tile: one TMA box of (page_size, d) per page, each into its
    rows of the tile's swizzled smem stage, every one signalling the tile's mbarrier; 0 spills
    (the producer's page loop is not unrolled: unrolled, its 24 registers spilled)."""
    from conftest import run_wb
    import json

    r = run_wb("compile", "d", *args, "--json", cwd=A.ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads(r.stdout)
    (kernel,) = rec["resources"]["kernels"]
    assert kernel["spill_store_bytes"] == 0 and kernel["spill_load_bytes"] == 0, kernel
    ps, d = rec["params"]["page_size"], rec["params"]["d"]
    probes = {(s["name"], s["location"].rsplit(":", 1)[0].rsplit("/", 1)[-1]): s["layout"] for s in rec["shapes"]}
    page = probes[("sX_page", "fmha_forward.py")]
    # the page's rows of one stage: page_size rows of the tile's layout (row stride and column panels kept)
    assert page.startswith(f"({ps},") and tile % ps == 0, page
    box = probes[("gX_page", "fmha_forward.py")]
    assert box.startswith(f"({ps},{d})"), box


def varlen_params(**kw):
    base = dict(varlen=True, seqlens="5:300:0:64", seqlens_k="70:0:300:129", page_size=64)
    return params(**{**base, **kw})


def test_packed_queries_over_a_paged_cache_take_cu_seqlens_q_and_the_table():
    """varlen=true with page_size > 0 (flash-attn's cu_seqlens_q + page_table + seqused_k):
    q packed (total_q, heads, d), the caches with one row of the table per sequence, sized
    by the longest, cache_seqlens the k lengths, no cu_seqlens_k (the launch derives it);
    every sequence's keys sit in its own pages, every row past its length is poison."""
    p = varlen_params()
    specs = StageD().inputs(p)
    assert specs["q"].shape == (369, 4, 64) and "cu_seqlens_k" not in specs
    assert specs["block_table"].shape == (4, 5) and specs["cache_seqlens"].shape == (4,)
    inputs, expected, *_ = _case("random", p)
    assert inputs["cu_seqlens_q"].tolist() == [0, 5, 305, 305, 369] and inputs["cache_seqlens"].tolist() == [70, 0, 300, 129]
    bt, k = inputs["block_table"].long(), inputs["k"].float()
    for b, n in enumerate([70, 0, 300, 129]):
        rows = torch.cat([k[bt[b, j]] for j in range(5)])
        assert bool((rows[n:] == PAGE_POISON).all()) and not bool((rows[:n] == PAGE_POISON).any())
    assert expected["o"].shape == (369, 4, 64) and expected["lse"].shape == (4, 369)


@pytest.mark.parametrize("causal", [False, True])
def test_the_packed_paged_reference_is_each_sequence_over_its_own_keys(causal):
    """Sequence b's query rows against the keys gathered from its pages (its first
    cache_seqlens[b]), bottom-right causal with its own n_b - m_b; a sequence with no keys
    gets O = 0, LSE = -inf; one with no queries nothing."""
    from stages.fmha import reference

    p = varlen_params(causal=causal, align="bottom_right")
    inputs, expected, *_ = _case("random", p)
    k, v = reference.gather_pages(inputs["k"], inputs["v"], inputs["block_table"], 300)
    cq = inputs["cu_seqlens_q"].tolist()
    for b, n in enumerate([70, 0, 300, 129]):
        q = inputs["q"][cq[b]:cq[b + 1]]
        if not len(q):
            continue
        if n == 0:
            assert bool((expected["o"][cq[b]:cq[b + 1]] == 0).all())
            assert bool(torch.isneginf(expected["lse"][:, cq[b]:cq[b + 1]]).all())
            continue
        o, lse = reference.attention_bshd(q[None], k[b:b + 1, :n], v[b:b + 1, :n], torch.float32, causal=causal, align="bottom_right")
        assert torch.allclose(expected["o"][cq[b]:cq[b + 1]], o[0], atol=1e-6)
        fin = torch.isfinite(lse[0])
        assert torch.equal(fin, torch.isfinite(expected["lse"][:, cq[b]:cq[b + 1]]))
        assert torch.allclose(expected["lse"][:, cq[b]:cq[b + 1]][fin], lse[0][fin], atol=1e-5)


@pytest.mark.parametrize("args", [["-p", "page_size=16", "-p", "d=64"], ["-p", "page_size=128", "-p", "d=96"],
                                  ["-p", "page_size=16", "-p", "d=192", "-p", "causal=true"]])
def test_packed_queries_over_pages_compile_without_spills(args):
    from conftest import run_wb
    import json

    r = run_wb("compile", "d", "-p", "varlen=true", "-p", "seqlens=5:300", "-p", "seqlens_k=70:900", *args, "--json", cwd=A.ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    (kernel,) = json.loads(r.stdout)["resources"]["kernels"]
    assert kernel["spill_store_bytes"] == 0 and kernel["spill_load_bytes"] == 0, kernel
