"""Stage D varlen=true on the CPU: the seqlens parameter (parsed, checked, one-line errors),
the packed inputs and fixtures (cu_seqlens from the lengths, one-hot P per sequence), the
torch reference against an independent float64 computation (zero-length sequences
included), and the varlen mutants, each named by the diagnosis on its own output. The
kernel itself is checked on a GPU (benchmarks/gpu_verify_parity.sh, section varlen)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_cases as A  # noqa: E402

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from stages.fmha import reference  # noqa: E402
from stages.fmha.stage_d_fmha import StageD, cu_seqlens, seqlens_of  # noqa: E402
from workbench.errors import UserError  # noqa: E402
from workbench.kernels.fixtures import get_fixture  # noqa: E402
from workbench.kernels.stage import Params  # noqa: E402

# q lengths with an empty k sequence (index 3), an empty q sequence (index 1), lengths
# that are not multiples of 64 or 128, a sequence longer than one 192-row Q tile
SEQ_Q = "70:0:129:5:200"
SEQ_K = "70:9:100:0:300"  # sequence 2 has more queries than keys
FIXTURES_D = ["random", "identity-softmax", "ones-v", "single", "onehot-p", "iota"]


def params(**kw):
    base = dict(m=64, n=64, d=64, dtype="bf16", batch=2, heads=4, kv_heads=2, causal=False, varlen=True,
                seqlens=SEQ_Q, seqlens_k=SEQ_K)
    base.update(kw)
    return Params(base)


def dense_f64(q, k, v, cq, ck, causal):
    """Independent float64 attention per packed sequence (explicit softmax, GQA by index)."""
    q, k, v = q.double(), k.double(), v.double()
    H, Hk = q.shape[1], k.shape[1]
    o = torch.zeros(q.shape[0], H, v.shape[-1], dtype=torch.float64)
    lse = torch.full((H, q.shape[0]), float("-inf"), dtype=torch.float64)
    for b in range(len(cq) - 1):
        for h in range(H):
            qs, ks, vs = q[cq[b]:cq[b + 1], h], k[ck[b]:ck[b + 1], h // (H // Hk)], v[ck[b]:ck[b + 1], h // (H // Hk)]
            if qs.shape[0] == 0 or ks.shape[0] == 0:
                continue
            s = qs @ ks.T / math.sqrt(q.shape[-1])
            if causal:
                i = torch.arange(s.shape[0])[:, None]
                j = torch.arange(s.shape[1])[None, :]
                s = s.masked_fill(j > i, float("-inf"))  # top-left, per sequence
            lse[h, cq[b]:cq[b + 1]] = torch.logsumexp(s, -1)
            o[cq[b]:cq[b + 1], h] = torch.softmax(s, -1) @ vs
    return o, lse


def test_seqlens_are_parsed_and_mistakes_are_one_line_errors():
    """The lengths come from seqlens (':' or ','), seqlens_k defaults to them, and without
    seqlens every sequence is m / n long; mistakes are UserErrors (wb: one line, exit 2)."""
    assert seqlens_of(params()) == ([70, 0, 129, 5, 200], [70, 9, 100, 0, 300])
    assert seqlens_of(params(seqlens="1,17,1000", seqlens_k="")) == ([1, 17, 1000], [1, 17, 1000])
    assert seqlens_of(params(seqlens="", seqlens_k="", m=100, n=300, batch=3)) == ([100] * 3, [300] * 3)
    assert seqlens_of(params(varlen=False, seqlens="", seqlens_k="")) is None
    for bad in (dict(varlen=False), dict(seqlens="1:x"), dict(seqlens="4:-1"), dict(seqlens_k="1:2"),
                dict(seqlens="0:0", seqlens_k="0:0"), dict(seqlens="70000")):
        with pytest.raises(UserError):
            seqlens_of(params(**bad))


def test_packed_shapes_and_flops():
    """Packed specs (total, heads, d), LSE (heads, total_q), int32 cu_seqlens of batch + 1;
    flops count each sequence (causal: its visible pairs)."""
    st = StageD()
    ins, outs = st.inputs(params()), st.outputs(params())
    assert ins["q"].shape == (404, 4, 64) and ins["k"].shape == ins["v"].shape == (479, 2, 64)
    assert ins["cu_seqlens_q"] == ins["cu_seqlens_k"].__class__((6,), "int32")
    assert outs["o"].shape == (404, 4, 64) and outs["lse"].shape == (4, 404)
    assert cu_seqlens([70, 0, 129]) == [0, 70, 70, 199]
    full = 4 * 4 * 64 * (70 * 70 + 129 * 100 + 200 * 300)
    assert st.flops(params()) == full
    causal = 4 * 4 * 64 * (70 * 71 // 2 + (100 * 101 // 2 + 29 * 100) + 200 * 201 // 2)
    assert st.flops(params(causal=True)) == causal


@pytest.mark.parametrize("fixture", FIXTURES_D)
def test_fixtures_fill_packed_inputs_and_cu_seqlens(fixture):
    """Every stage D fixture makes the packed q/k/v and the cu_seqlens of the lengths."""
    fixtures, _ = A.load()
    p = params()
    specs = StageD().inputs(p)
    fx = get_fixture(fixtures, fixture, specs)
    inputs = fx.make(specs, p, 0, "cpu")
    for name, spec in specs.items():
        assert tuple(inputs[name].shape) == spec.shape and inputs[name].dtype == spec.torch_dtype(), name
    assert inputs["cu_seqlens_q"].tolist() == [0, 70, 70, 199, 204, 404]
    assert inputs["cu_seqlens_k"].tolist() == [0, 70, 79, 179, 179, 479]
    assert torch.isfinite(inputs["q"].float()).all()


@pytest.mark.parametrize("causal", [False, True])
def test_onehot_p_is_one_hot_within_each_sequence(causal):
    """onehot-p picks each query's key among its own sequence's visible keys: the reference
    P (max weight per row) is one-hot in every sequence that has keys."""
    fixtures, _ = A.load()
    p = params(causal=causal)
    specs = StageD().inputs(p)
    x = get_fixture(fixtures, "onehot-p", specs).make(specs, p, 0, "cpu")
    cq, ck = x["cu_seqlens_q"].tolist(), x["cu_seqlens_k"].tolist()
    q, k = x["q"].double(), x["k"].double()
    for b in range(len(cq) - 1):
        if cq[b + 1] == cq[b] or ck[b + 1] == ck[b]:
            continue
        for h in range(q.shape[1]):
            s = q[cq[b]:cq[b + 1], h] @ k[ck[b]:ck[b + 1], h // 2].T / 8.0
            if causal:
                s = s.masked_fill(torch.arange(s.shape[1])[None] > torch.arange(s.shape[0])[:, None], float("-inf"))
            assert torch.softmax(s, -1).amax(-1).min() > 0.999, (b, h)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_float64_per_sequence(causal):
    """attention_varlen (fp32) equals an independent float64 computation per sequence; the
    sequence without keys has O = 0 and LSE = -inf; rows of the empty q sequence: none."""
    g = torch.Generator().manual_seed(1)
    lq, lk = [70, 0, 129, 5, 200], [70, 9, 100, 0, 300]
    cq, ck = cu_seqlens(lq), cu_seqlens(lk)
    q = torch.randn(sum(lq), 4, 64, generator=g).bfloat16()
    k = torch.randn(sum(lk), 2, 64, generator=g).bfloat16()
    v = torch.randn(sum(lk), 2, 64, generator=g).bfloat16()
    o, lse = reference.attention_varlen(q, k, v, torch.tensor(cq), torch.tensor(ck), torch.float32, causal=causal)
    o64, lse64 = dense_f64(q, k, v, cq, ck, causal)
    assert (o.double() - o64).abs().max() < 1e-5
    finite = torch.isfinite(lse64)
    assert torch.equal(finite, torch.isfinite(lse)) and (lse.double()[finite] - lse64[finite]).abs().max() < 1e-5
    empty_k = slice(cq[3], cq[4])
    assert (o[empty_k] == 0).all() and (lse[:, empty_k] == float("-inf")).all()
    # the calibration run (bf16) has the same shape and the same empty rows
    ol, ll = reference.attention_varlen(q, k, v, torch.tensor(cq), torch.tensor(ck), torch.bfloat16, causal=causal)
    assert ol.dtype == torch.bfloat16 and (ol[empty_k] == 0).all() and (ll[:, empty_k] == float("-inf")).all()
    assert (ol.float() - o).abs().max() < 0.05


VARLEN_MUTANTS = ["varlen-next-offset", "varlen-tail-unmasked", "varlen-q-tail-stored", "varlen-first-length"]


def _varlen_case(fixture, causal, seed=0):
    fixtures, mutants = A.load()
    p = params(causal=causal)
    st = StageD()
    specs, outs = st.inputs(p), st.outputs(p)
    fx = get_fixture(fixtures, fixture, specs)
    variants = dict(fx.variants)
    inputs = fx.make(specs, p, seed, "cpu")
    expected = st.reference(inputs, p, variants, torch.float32)
    return inputs, expected, outs, p, variants, mutants


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_mutants_are_distinct_and_named(causal):
    """Each varlen bug model differs from the reference and from the others, and the diagnosis
    of its (bf16-noised) output names it first; the correct output names none."""
    from workbench.diagnose import MutantContext, Pred, diagnose, views_for

    inputs, expected, outs, p, variants, mutants = _varlen_case("random", causal)
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants=variants,
                       fixture="random", views=views_for(A.ROOT / "stages" / "fmha"))
    preds = {name: mutants[name].fn(cx) for name in VARLEN_MUTANTS}
    values = {name: {k: v.values if isinstance(v, Pred) else v for k, v in pr.items()} for name, pr in preds.items()}
    for name, pr in values.items():
        assert (pr["o"] - expected["o"].float()).nan_to_num(1.0).abs().max() > 0.1, name
    for a in VARLEN_MUTANTS:
        for b in VARLEN_MUTANTS:
            if a < b:
                assert not torch.allclose(values[a]["o"].nan_to_num(7.0), values[b]["o"].nan_to_num(7.0), atol=1e-3), (a, b)
    for i, name in enumerate(VARLEN_MUTANTS):
        out = A.kernel_like({**expected, **preds[name]}, outs, seed=i)
        d = diagnose(out, expected, inputs, p, variants, "random", mutants)
        assert d.status == "explained" and d.best.name == name, (name, d.headline)
    ok = A.kernel_like(dict(expected), outs, seed=9)
    d = diagnose(ok, expected, inputs, p, variants, "random", mutants)
    assert not d.explanations, d.headline


def test_onehot_p_read_map_of_packed_sequences():
    """onehot-p on packed sequences (one without keys, one without queries): the read map
    matches each head's packed O rows to the packed V rows of its KV head. The correct output:
    every query of a sequence with keys read its intended row; reading the next sequence's
    keys (varlen-next-offset): none did."""
    from workbench.diagnose import MutantContext, Pred, diagnose, views_for

    inputs, expected, outs, p, variants, mutants = _varlen_case("onehot-p", False)
    lq, lk = (_lengths_of(x) for x in (SEQ_Q, SEQ_K))
    with_keys = sum(q for q, k in zip(lq, lk) if k) * 4  # heads
    d = diagnose(A.kernel_like(dict(expected), outs, seed=1), expected, inputs, p, variants, "onehot-p", mutants)
    assert d.status == "ok" and not d.notes, d.notes
    assert d.readmap.queries == d.readmap.correct == with_keys
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants=variants,
                       fixture="onehot-p", views=views_for(A.ROOT / "stages" / "fmha"))
    pred = mutants["varlen-next-offset"].fn(cx)
    out = A.kernel_like({**expected, **{k: v.values if isinstance(v, Pred) else v for k, v in pred.items()}}, outs, seed=2)
    rm = diagnose(out, expected, inputs, p, variants, "onehot-p", mutants).readmap
    assert rm.queries == with_keys and rm.correct == 0, rm.summary


@pytest.mark.parametrize("mask", [dict(causal=True, align="bottom_right"), dict(window_left=50, window_right=20),
                                  dict(causal=True, align="bottom_right", window_left=50)])
def test_onehot_p_keeps_each_packed_sequences_window_and_alignment(mask):
    """onehot-p picks each query's key inside its own sequence's window under its alignment
    (it ignored both on packed sequences, so a third or more of the rows were soft mixtures
    and no read map was drawn): every (head, row) that sees a key reads its intended V row."""
    from workbench.diagnose import diagnose

    fixtures, mutants = A.load()
    p, st = params(**mask), StageD()
    specs = st.inputs(p)
    fx = get_fixture(fixtures, "onehot-p", specs)
    inputs = fx.make(specs, p, 0, "cpu")
    expected = st.reference(inputs, p, dict(fx.variants), torch.float32)
    seeing = int(torch.isfinite(expected["lse"]).sum())  # (head, row)s with a visible key
    d = diagnose(A.kernel_like(dict(expected), st.outputs(p), seed=1), expected, inputs, p, dict(fx.variants), "onehot-p", mutants)
    assert d.readmap is not None and d.readmap.queries == d.readmap.correct == seeing > 0, d.readmap


def _lengths_of(spec: str) -> list[int]:
    return [int(x) for x in spec.split(":")]


@pytest.mark.parametrize("args", [["-p", "seqlens=1:2"], ["-V", "varlen_bug=next_offset"], ["-p", "varlen=true", "-p", "seqlens=1:x"],
                                  ["-p", "varlen=true", "-p", "seqlens=１２８:1_000"]])
def test_wb_compile_rejects_varlen_mistakes_in_one_line(args):
    """seqlens or a varlen bug injection without varlen=true, a malformed length: one line,
    exit 2, before any trace."""
    from conftest import run_wb

    r = run_wb("compile", "d", *args, cwd=A.ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert ("varlen=true" in r.stderr or "must be lengths" in r.stderr) and "Traceback" not in r.stderr


def test_varlen_compiles_for_sm90a_with_tma_boxes_and_predicated_row_stores_of_o():
    """varlen=true compiles for sm_90a (one build: d=64, causal, GQA): Q/K/V are TMA loads of
    the packed 3-D tensors; O goes by one TMA store per WG where its 64-row box lies inside the
    sequence, and from registers in 32-bit column pairs for a sequence's last rows (a box there
    would write into the next sequence), rows of one thread's pair chunks as the PV
    accumulator holds them."""
    import os

    from workbench.compile.probe import capture

    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    p = params(d=64, causal=True, heads=4, kv_heads=2)
    with capture() as records:
        compiled = StageD().compile(p, {}, "sm_90a")
    probes = {r["name"]: r["layout"] for r in records}
    assert compiled.varlen and "verified" in compiled.p_check
    assert probes["tOgO_tma"].startswith("(((64,64),1)")  # a (64, d) box of the packed (total, d, heads) view
    # (row pairs +8, (2 adjacent columns, d/8 chunks)) per thread; gmem columns contiguous
    assert probes["tOrO_rows"] == "((2,1),(2,8,1)):((2,0),(1,4,0))", probes["tOrO_rows"]
    assert probes["tOgO_rows"].endswith("(1,8,0))"), probes["tOgO_rows"]
    assert probes["tQgQ"].startswith("(((64,64),1),?)")  # 64-row Q boxes of the (total, d, heads) view


# the GPU bug-injection cases of tests/test_varlen_gpu.py, on the CPU: the mutant's own output
# at those lengths (d=128, 4 heads, non-causal, random) is named first
GPU_BUG_CASES = [("300:1000:77:500", "varlen-next-offset"), ("300:1000:77:500", "varlen-tail-unmasked"),
                 ("77:1000:300:500", "varlen-first-length")]


@pytest.mark.parametrize("seqlens, name", GPU_BUG_CASES, ids=[c[1] for c in GPU_BUG_CASES])
def test_gpu_bug_cases_are_named_on_the_cpu(seqlens, name):
    from workbench.diagnose import MutantContext, diagnose, views_for

    fixtures, mutants = A.load()
    p = params(d=128, heads=4, kv_heads=4, seqlens=seqlens, seqlens_k="")
    st = StageD()
    specs, outs = st.inputs(p), st.outputs(p)
    inputs = get_fixture(fixtures, "random", specs).make(specs, p, 0, "cpu")
    expected = st.reference(inputs, p, {}, torch.float32)
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=p, variants={},
                       fixture="random", views=views_for(A.ROOT / "stages" / "fmha"))
    out = A.kernel_like({**expected, **mutants[name].fn(cx)}, outs, seed=3)
    d = diagnose(out, expected, inputs, p, {}, "random", mutants)
    assert d.status == "explained" and d.best.name == name, d.headline


@pytest.mark.parametrize("causal, bottom_right", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("tile_m", [128, 192])
def test_tile_table_lists_every_q_tile_with_rows_once_most_work_first(causal, bottom_right, tile_m):
    """varlen_tile_table against a brute-force list: every (sequence, Q tile) with rows once,
    sequences without queries none, the rest of the table no-work entries; sorted by the keys
    a tile sees (causal: up to its last row under the alignment), most first."""
    from stages.fmha.export_op import NO_WORK_BLOCK, varlen_tile_table

    lq, lk = [70, 0, 129, 5, 200, 1000, 1], [70, 9, 100, 0, 300, 1000, 4000]
    cu_q = torch.tensor(cu_seqlens(lq), dtype=torch.int32)
    cu_k = torch.tensor(cu_seqlens(lk), dtype=torch.int32)
    table = varlen_tile_table(cu_q, cu_k, sum(lq), tile_m, causal, bottom_right)
    assert table.dtype == torch.int32 and table.numel() == sum(lq) // tile_m + len(lq)

    def work(b, m):
        if not causal:
            return lk[b]
        return min(lk[b], max(0, (m + 1) * tile_m + (lk[b] - lq[b] if bottom_right else 0)))

    expected = [(b, m) for b in range(len(lq)) for m in range(-(-lq[b] // tile_m))]
    entries = [(int(x) >> 16, int(x) & 0xFFFF) for x in table]
    real = [e for e in entries if e[1] != NO_WORK_BLOCK]
    assert sorted(real) == expected  # each once
    assert entries[: len(real)] == real and all(e == (0, NO_WORK_BLOCK) for e in entries[len(real):])
    works = [work(b, m) for b, m in real]
    assert works == sorted(works, reverse=True)


def test_the_exported_ops_key_offsets_follow_lengths_written_behind_torchs_back():
    """A serving engine's own kernel that advances cache_seqlens in place bumps no version
    counter (here: a write through a DLPack alias). The exported op makes cu_seqlens_k from the
    lengths on every call, so it reads the new lengths; wb's own launches keep theirs per
    version (shown stale here, which is why the op does not). The tile table, whose tiles come
    from cu_seqlens_q alone, stays kept across those fresh offsets, keyed on the lengths."""
    from stages.fmha.export_op import cu_seqlens_of, tile_table

    lens = torch.tensor([5, 7, 0], dtype=torch.int32)
    cu_q = torch.tensor([0, 100, 300, 310], dtype=torch.int32)
    assert cu_seqlens_of(lens, cached=True).tolist() == cu_seqlens_of(lens, cached=False).tolist() == [0, 5, 12, 12]
    first = cu_seqlens_of(lens, cached=False)
    table = tile_table(cu_q, first, 310, 128, False, False, keep_in_capture=False, order_of=lens)
    torch.from_dlpack(lens).add_(1)  # lengths 6, 8, 1; lens._version unchanged
    assert lens._version == 0 and lens.tolist() == [6, 8, 1]
    assert cu_seqlens_of(lens, cached=True).tolist() == [0, 5, 12, 12]  # the kept one: stale
    fresh = cu_seqlens_of(lens, cached=False)
    assert fresh.tolist() == [0, 6, 14, 15]
    assert tile_table(cu_q, fresh, 310, 128, False, False, keep_in_capture=False, order_of=lens) is table
    lens.add_(1)  # an in-place change torch sees: the table's order is rebuilt
    assert tile_table(cu_q, cu_seqlens_of(lens, cached=False), 310, 128, False, False, keep_in_capture=False,
                      order_of=lens) is not table


def test_launch_passes_the_tile_table_built_once_per_version_without_a_sync(monkeypatch):
    """The varlen launch passes cu_seqlens and the tile table after the stream; the table is
    built by torch ops (no .cpu(), no .item(): no host sync) once, and again only after an
    in-place change of cu_seqlens_q or cu_seqlens_k (torch's version counters)."""
    # the modules StageD was defined in: an in-process wb call earlier in this test process
    # (forget_stage_modules) makes `from stages.fmha import ...` import fresh copies
    module = StageD.launch.__globals__
    host = module["host"]

    calls, reads = [], []
    monkeypatch.setitem(module, "sm_count", lambda device: 132)
    monkeypatch.setattr(host, "to_cute", lambda t: t)
    monkeypatch.setattr(host, "current_stream", lambda: "stream")
    compiled = host.Compiled(fn=lambda *a: calls.append(a), d=64, heads=4, kv_heads=2, varlen=True, tile_m=128)
    cu_q = torch.tensor(cu_seqlens([70, 0, 129]), dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 5, 10], dtype=torch.int32)
    for name in ("cpu", "item", "tolist", "__int__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _real=real, **k: (reads.append(name), _real(t, *a, **k))[1])
    inputs = {"q": torch.zeros(199, 4, 64), "k": torch.zeros(10, 2, 64), "v": torch.zeros(10, 2, 64),
              "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}
    outputs = {"o": torch.zeros(199, 4, 64), "lse": torch.zeros(4, 199)}
    for _ in range(3):
        StageD().launch(compiled, inputs, outputs)
    assert reads == []
    assert calls[0][7] == "stream" and calls[0][8] is cu_q and calls[0][9] is cu_k
    assert calls[0][10] is calls[1][10] is calls[2][10]  # built once
    assert sorted(int(x) & 0xFFFF for x in calls[0][10])[:3] == [0, 0, 1]  # seq 0: one tile, seq 2: two
    cu_k[3] = 12  # lengths 5, 0, 7: a new table
    StageD().launch(compiled, inputs, outputs)
    assert calls[-1][10] is not calls[0][10]
    again = calls[-1][10]
    StageD().launch(compiled, {**inputs, "cu_seqlens_k": cu_k.clone()}, outputs)  # another k tensor, same values
    assert calls[-1][10] is not again
