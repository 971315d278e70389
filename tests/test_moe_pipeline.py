"""MoE host pipeline on the CPU (stages/moe): the routing plan, the references, the fixtures,
the torch peers and stage D's host side with a torch GEMM test double; GPU tests run stage D
itself at small and real shapes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # moe_cases

from stages.moe.plan import make_plan  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- plan ----------------------------------------------------------------------------------
def _random_ids(T, k, E, seed, skip=()):
    """(T, k) ids, distinct per token (as top-k gives), never using experts in `skip`."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(E) if e not in skip])
    scores = torch.rand(T, allowed.numel(), generator=g)
    return allowed[scores.topk(k, dim=1).indices]


@pytest.mark.parametrize("T,k,E", [(1, 1, 1), (1, 2, 8), (7, 2, 8), (33, 4, 16), (128, 8, 128), (0, 2, 4)])
def test_plan_invariants(T, k, E):
    """Every routed (token, k) row appears exactly once, sorted by expert (stable: token order
    within an expert), cu_seqlens is monotone from 0 to R and counts each expert's rows,
    rows/order/inverse agree."""
    ids = _random_ids(T, k, E, seed=T * 31 + E, skip=(E - 1,) if E > k else ())
    p = make_plan(ids, E)
    R = T * k
    assert p.rows.dtype == p.cu_seqlens.dtype == p.inverse.dtype == torch.int32
    assert p.cu_seqlens.shape == (E + 1,) and p.rows.shape == (R,) and p.inverse.shape == (T, k)
    assert sorted(p.order.tolist()) == list(range(R))  # a permutation: every routed row once
    cu = p.cu_seqlens.tolist()
    assert cu[0] == 0 and cu[-1] == R and all(a <= b for a, b in zip(cu, cu[1:]))
    counts = torch.bincount(ids.flatten(), minlength=E)
    assert p.counts().tolist() == counts.tolist()
    flat = ids.flatten()
    for e in range(E):
        seg = p.order[cu[e]:cu[e + 1]].long()
        assert (flat[seg] == e).all()
        assert seg.tolist() == sorted(seg.tolist())  # stable
    assert (p.rows.long() == p.order.long() // k).all()
    t = torch.arange(T).view(T, 1).expand(T, k)
    assert (p.rows.long()[p.inverse.long()] == t).all()  # inverse finds (t, j)'s row
    assert (p.expert.long()[p.inverse.long()] == ids).all()


@pytest.mark.parametrize("bad", [-1, 8])
def test_the_exported_ops_plan_agrees_with_the_stages_and_refuses_ids_out_of_range(bad):
    """The exported op (stages/moe/export_op, shipped without the stages) builds its own copy of
    make_plan: same rows, cu_seqlens and inverse. An expert id outside [0, E) left routed rows
    that no GEMM wrote, so y was silently garbage; a device-side assert (raised at once on the
    CPU) now refuses it."""
    from stages.moe import export_op

    ids = _random_ids(33, 4, 8, seed=5).to(torch.int32)
    rows, cu, inverse = export_op._plan(ids, 8)
    p = make_plan(ids, 8)
    assert rows.tolist() == p.rows.tolist() and cu.tolist() == p.cu_seqlens.tolist()
    assert inverse.tolist() == p.inverse.tolist()
    ids[3, 1] = bad
    with pytest.raises(RuntimeError, match=r"topk_ids: expected expert ids in \[0, 8\)"):
        export_op._plan(ids, 8)


def test_plan_empty_and_all_to_one_expert():
    """Experts nobody picked own empty ranges (cu_seqlens repeats), also the first and last."""
    ids = torch.full((5, 1), 2)
    p = make_plan(ids, 4)
    assert p.cu_seqlens.tolist() == [0, 0, 0, 5, 5]
    assert p.rows.tolist() == [0, 1, 2, 3, 4]


# ---- reference ------------------------------------------------------------------------------
def _problem(T, H, I, E, k, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w1 = (torch.randn(E, H, 2 * I, generator=g) / H**0.5).to(dtype)
    w2 = (torch.randn(E, I, H, generator=g) / I**0.5).to(dtype)
    logits = torch.randn(T, E, generator=g)
    return x, w1, w2, logits


def _loop_ffn(x, w1, w2, ids, weights, activation="swiglu"):
    """An independent float64 implementation: token by token, choice by choice, gate and up
    split from the interleaved columns by hand."""
    import math

    x, w1, w2 = x.double(), w1.double(), w2.double()
    T, k = ids.shape
    y = torch.zeros(T, x.shape[1], dtype=torch.float64)
    for t in range(T):
        for j in range(k):
            e = int(ids[t, j])
            d = x[t] @ w1[e]
            gate, up = d[0::2], d[1::2]
            if activation == "swiglu":
                h = gate / (1 + torch.exp(-gate)) * up
            else:
                gc, uc = gate.clamp(max=7.0), up.clamp(-7.0, 7.0)
                h = gc / (1 + torch.exp(-1.702 * gc)) * (uc + 1)
            y[t] += float(weights[t, j]) * (h @ w2[e])
    assert math.isfinite(float(y.abs().max()))
    return y


@pytest.mark.parametrize("activation", ["swiglu", "gptoss"])
@pytest.mark.parametrize("T,k,E", [(1, 1, 2), (5, 2, 4), (9, 3, 5)])
def test_reference_matches_an_independent_loop(T, k, E, activation):
    """moe_ffn (fp32, plan + grouped GEMMs + combine) = a per-token float64 loop; route picks
    the k largest logits and softmaxes over them alone."""
    from stages.moe import reference as R

    x, w1, w2, logits = _problem(T, 16, 8, E, k, seed=T)
    x = x * 3  # gates beyond gpt-oss's clamp at 7 for some elements
    ids, weights = R.route(logits, k)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    top = logits.topk(k, dim=-1)
    assert (ids.long() == top.indices).all()
    assert torch.allclose(weights, torch.exp(top.values) / torch.exp(top.values).sum(-1, keepdim=True))
    y = R.moe_ffn(x, w1, w2, ids, weights, torch.float32, activation=activation)
    want = _loop_ffn(x, w1, w2, ids, weights, activation)
    assert torch.allclose(y.double(), want, rtol=1e-5, atol=1e-5), (y.double() - want).abs().max()
    assert torch.equal(R.moe_ffn_routed(x, logits, w1, w2, k, torch.float32, activation=activation), y)


def test_lowp_reference_is_close_and_rounds_like_the_kernel():
    """The bf16 reference differs from fp32 by bf16 rounding only (a few 2^-8 of the output
    scale), is not the fp32 result (it really rounds), and is deterministic."""
    from stages.moe import reference as R

    x, w1, w2, logits = _problem(64, 64, 32, 8, 2)
    y32 = R.moe_ffn_routed(x, logits, w1, w2, 2, torch.float32)
    ylo = R.moe_ffn_routed(x, logits, w1, w2, 2, torch.bfloat16)
    assert ylo.dtype == torch.bfloat16
    err = (ylo.float() - y32).abs().max() / y32.abs().max()
    assert 0 < err < 4 * 2.0**-8
    assert torch.equal(ylo, R.moe_ffn_routed(x, logits, w1, w2, 2, torch.bfloat16))


# ---- fixtures -------------------------------------------------------------------------------
def _fixtures():
    from pathlib import Path

    from workbench.kernels.fixtures import load_fixtures

    reg = load_fixtures(Path(__file__).resolve().parents[1] / "fixtures")
    return {f.name: f for f in reg if f.module == "wb_fixtures_moe"}  # "random" included


def _stage_specs():
    """Input specs of each MoE stage as the stage classes declare them."""
    from workbench.kernels.stage import Params

    from stages.moe.stage_d_moe import StageD

    base = dict(t=300, h=64, i=32, e=8, topk=2, dtype="bf16", activation="swiglu")
    specs = {
        "d-logits": StageD().inputs(Params({**base, "routing": "logits"})),
        "d-given": StageD().inputs(Params({**base, "routing": "given"})),
    }
    from workbench.kernels.stage import TensorSpec as S

    from stages.moe.stage_a_gemm import StageA
    from stages.moe.stage_b_swiglu import StageB

    specs["a"] = StageA().inputs(Params({**base, "m": 300}))
    specs["b"] = StageB().inputs(Params({**base, "m": 300}))
    from stages.moe.stage_c_grouped import StageC

    specs["c"] = StageC().inputs(Params(base))
    specs["c-plan"] = {"x": S((300, 64), "bf16"), "w1": S((8, 64, 64), "bf16"), "rows": S((600,), "int32"),
                       "cu_seqlens": S((9,), "int32")}
    return specs, Params({**base, "routing": "logits"})


def test_fixtures_are_deterministic_and_fill_every_stage_input():
    """Every MoE fixture makes each stage's inputs with the declared shapes and dtypes, the
    same tensors for the same seed, different ones for another seed (random), and the same
    routing whichever form the stage takes it in (logits, given top-k, plan)."""
    from stages.moe.plan import make_plan
    from stages.moe.reference import route

    fx = _fixtures()
    assert {"random", "all-to-one-expert", "empty-experts", "one-token-per-expert", "onehot-routing",
            "unit-topk-weights", "identity-activation", "tail-plus-one", "large-gates", "identity-w2"} <= set(fx)
    all_specs, p = _stage_specs()
    for name, f in fx.items():
        assert f.isolates and f.hides, name
        made = {}
        for stage, specs in all_specs.items():
            a = f.make(specs, p, 0, "cpu")
            b = f.make(specs, p, 0, "cpu")
            assert set(a) == set(specs), (name, stage)
            for n, spec in specs.items():
                assert tuple(a[n].shape) == spec.shape and a[n].dtype == spec.torch_dtype(), (name, stage, n)
                assert torch.equal(a[n], b[n]), (name, stage, n)
            made[stage] = a
        ids_g = made["d-given"]["topk_ids"]
        ids_l, w_l = route(made["d-logits"]["logits"], 2)
        assert torch.equal(ids_l.sort(1).values, ids_g.sort(1).values), name
        if name != "unit-topk-weights":  # weights summing to 1 are expressible as logits
            assert torch.allclose(w_l, made["d-given"]["topk_weights"], atol=1e-6), name
        plan = make_plan(ids_g, 8)
        assert torch.equal(made["c-plan"]["rows"], plan.rows) and torch.equal(made["c-plan"]["cu_seqlens"], plan.cu_seqlens)
        for e in range(ids_g.shape[0]):
            assert len(set(ids_g[e].tolist())) == ids_g.shape[1], f"{name}: token {e} picks an expert twice"
    r0 = fx["random"].make(all_specs["d-given"], p, 0, "cpu")
    r1 = fx["random"].make(all_specs["d-given"], p, 1, "cpu")
    assert not torch.equal(r0["x"], r1["x"])


def test_fixture_routings_do_what_their_docs_say():
    from stages.moe.plan import make_plan

    fx = _fixtures()
    specs, p = _stage_specs()
    g = specs["d-given"]

    def counts(name, sp=g):
        return make_plan(fx[name].make(sp, p, 0, "cpu")["topk_ids"], 8).counts().tolist()

    assert counts("all-to-one-expert")[7] == 300
    c = counts("empty-experts")
    assert c[0] == c[7] == 0 and all(c[e] == 0 for e in (0, 2, 4, 6)) and sum(c) == 600
    tail = counts("tail-plus-one")
    busy = [n for n in tail if n]
    assert len(busy) >= 3 and all(n % 128 == 1 and n > 128 for n in busy[:-1])  # one row past a 128-row tile
    assert sum(tail) == 600
    from workbench.kernels.stage import TensorSpec as S

    small = {**g, "x": S((3, 64), "bf16"), "topk_ids": S((3, 2), "int32"), "topk_weights": S((3, 2), "fp32")}
    assert max(counts("one-token-per-expert", small)) == 1
    unit = fx["unit-topk-weights"].make(g, p, 0, "cpu")
    assert (unit["topk_weights"] == 1).all()
    oh = fx["onehot-routing"].make(g, p, 0, "cpu")
    assert (oh["topk_weights"][:, 0] == 1).all() and (oh["topk_weights"][:, 1:] == 0).all()
    big = fx["large-gates"].make(g, p, 0, "cpu")
    gates = (big["x"].float() @ big["w1"][0].float())[:, 0::2]
    assert gates.abs().max() > 88  # exp(-g) overflows fp32 for some gate
    square = {**g, "w1": S((8, 64, 128), "bf16"), "w2": S((8, 64, 64), "bf16")}  # I == H
    iw = fx["identity-w2"].make(square, p, 0, "cpu")
    assert torch.equal(iw["w2"].float(), torch.eye(64).expand(8, 64, 64))


# ---- stage D's host pipeline, with a torch double of the grouped kernel -----------------------
def _grouped_double(fn, a, w, out, rows, cu_seqlens):
    """Test double of stages/moe/pipeline.launch_grouped: the reference grouped GEMM, rounded
    into out's dtype as the kernel stores it. fn is {"gather": bool, "activation": str}."""
    from stages.moe import reference as R

    res = R.grouped_mm(a, w, cu_seqlens, out.dtype, rows=rows if fn["gather"] else None, activation=fn["activation"])
    out.copy_(res)


def _compiled(h, i, topk, activation="swiglu", bug="none"):
    from stages.moe.pipeline import Compiled

    return Compiled(up={"gather": True, "activation": activation}, down={"gather": False, "activation": "none"},
                    h=h, i=i, topk=topk, activation=activation, bug=bug)


@pytest.mark.parametrize("routing", ["logits", "given"])
@pytest.mark.parametrize("T", [1, 7, 300])
def test_pipeline_host_side_equals_the_lowp_reference(T, routing):
    """With the grouped kernel replaced by the reference GEMM (rounded where the kernel rounds),
    stage D's host pipeline (route, plan, two grouped launches, combine) gives the bf16
    reference bit for bit: routing, plan, the down GEMM's rows and the combine agree."""
    from stages.moe import pipeline
    from stages.moe import reference as R

    x, w1, w2, logits = _problem(T, 64, 32, 8, 2, seed=T)
    y = torch.empty_like(x)
    if routing == "logits":
        pipeline.run(_compiled(64, 32, 2), x, w1, w2, y, logits=logits, grouped=_grouped_double)
        want = R.moe_ffn_routed(x, logits, w1, w2, 2, torch.bfloat16)
    else:
        ids, weights = R.route(logits, 2)
        pipeline.run(_compiled(64, 32, 2), x, w1, w2, y, topk_ids=ids, topk_weights=weights, grouped=_grouped_double)
        want = R.moe_ffn(x, w1, w2, ids, weights, torch.bfloat16)
    assert torch.equal(y, want)


@pytest.mark.parametrize("T,few", [(511, True), (512, True), (513, False)])
def test_auto_up_tile_takes_64_row_tiles_when_experts_average_few_rows(T, few):
    """up_tile=auto compiles two up-projections; the launch takes the 64-row one exactly when the
    routed rows average at most FEW_ROWS per expert (T·k ≤ FEW_ROWS·E), without a host sync."""
    from stages.moe import pipeline

    E, k = 8, 4  # FEW_ROWS * E / k = 512 tokens at the boundary
    assert pipeline.FEW_ROWS * E // k == 512
    x, w1, w2, logits = _problem(T, 64, 32, E, k, seed=T)
    compiled = _compiled(64, 32, k)
    compiled.up_few_rows = {**compiled.up, "few": True}
    used = []

    def spy(fn, *args):
        used.append(fn.get("few", False))
        _grouped_double(fn, *args)

    pipeline.run(compiled, x, w1, w2, torch.empty_like(x), logits=logits, grouped=spy)
    assert used == [few, False]  # the up kernel chosen by rows per expert; down unchanged


def test_pipeline_refuses_tensors_of_another_shape():
    from stages.moe import pipeline

    x, w1, w2, logits = _problem(4, 64, 32, 8, 2)
    with pytest.raises(ValueError, match="compiled for h=128"):
        pipeline.run(_compiled(128, 32, 2), x, w1, w2, torch.empty_like(x), logits=logits, grouped=_grouped_double)


@pytest.mark.parametrize("bug,name", [("topk_weights_skipped", "topk-weights-not-applied"),
                                      ("topk_weights_twice", "topk-weights-applied-twice"),
                                      ("combine_overwrite", "combine-overwrites")])
def test_combine_bug_variants_are_named_by_their_mutants(bug, name):
    """Stage D's compile-time combine bugs, run through the host pipeline, are diagnosed as the
    mutant that models them (the variant and its model agree)."""
    import moe_cases as M

    from stages.moe import pipeline
    from workbench.diagnose import diagnose

    inputs, expected, outs, params = M.case("d", "random")
    y = torch.empty(outs["y"].shape, dtype=torch.bfloat16)
    pipeline.run(_compiled(M.H, M.I, M.K, bug=bug), inputs["x"], inputs["w1"], inputs["w2"], y,
                 logits=inputs["logits"], grouped=_grouped_double)
    _, mutants = M.load()
    d = diagnose({"y": y}, expected, inputs, params, {"bug": bug}, "random", mutants)
    assert d.status == "explained" and d.best.name == name, d.headline


# ---- peers ----------------------------------------------------------------------------------
def test_torch_grouped_peer_matches_the_reference_on_cpu():
    """torch._grouped_mm runs on the CPU (torch >= 2.8): the peer's pipeline is within twice
    the bf16 reference's own error of the fp32 reference, for both routings."""
    from stages.moe import peers
    from stages.moe import reference as R

    x, w1, w2, logits = _problem(37, 64, 32, 6, 2)
    ref = R.moe_ffn_routed(x, logits, w1, w2, 2, torch.float32)
    lo = R.moe_ffn_routed(x, logits, w1, w2, 2, torch.bfloat16)
    bound = 2 * (lo.float() - ref).abs().max() + 1e-3
    y = peers.make_peer("torch-grouped", {"x": x, "w1": w1, "w2": w2, "logits": logits}, {"topk": 2})()
    assert (y.float() - ref).abs().max() <= bound
    ids, w = R.route(logits, 2)
    y2 = peers.make_peer("torch-grouped", {"x": x, "w1": w1, "w2": w2, "topk_ids": ids, "topk_weights": w}, {"topk": 2})()
    assert (y2.float() - ref).abs().max() <= bound


def test_dense_peer_does_the_stage_flops_and_quack_has_a_place():
    from workbench.kernels.stage import Params

    from stages.moe import peers
    from stages.moe.stage_d_moe import StageD

    p = Params(dict(t=16, h=64, i=32, e=4, topk=2, dtype="bf16", activation="swiglu", routing="logits"))
    x, w1, w2, _ = _problem(16, 64, 32, 4, 2)
    up, down = peers.make_peer("dense", {"x": x, "w1": w1, "w2": w2}, p)()
    flops = 2 * up.shape[0] * 64 * up.shape[1] + 2 * down.shape[0] * 32 * down.shape[1]
    assert flops == StageD().flops(p)
    quack = peers.make_peer("quack", {"x": x, "w1": w1, "w2": w2, "logits": torch.randn(16, 4)}, p)
    if quack is None:  # quack-kernels missing (no GPU here): the note says why
        assert "quack" in peers.missing_note("quack")


def test_random_serves_attention_and_moe_stages():
    """"random" has two fixtures, attention.py's (needs q, k) and moe.py's (needs x, w1): every
    MoE stage's inputs resolve it, and every other fixture its kernel.yaml stage lists, to
    moe.py's, which fills all of them; q, k (and v) inputs resolve it to attention.py's."""
    from pathlib import Path

    from workbench.kernels.registry import load_kernel
    from workbench.kernels.stage import TensorSpec as S

    reg = _fixtures_all()
    assert sorted(f.where for f in reg.variants("random")) == ["fixtures/attention.py", "fixtures/moe.py"]
    kernel = load_kernel(Path(__file__).resolve().parents[1] / "stages" / "moe" / "kernel.yaml")
    specs, p = _stage_specs()
    for stage, ins in specs.items():
        listed = kernel.stage(stage[0]).fixtures
        assert "random" in listed, stage
        for name in listed:
            fx = reg.resolve(name, ins)
            assert fx is not None and fx.where == "fixtures/moe.py", (stage, name)
        assert set(reg.resolve("random", ins).make(ins, p, 0, "cpu")) == set(ins), stage
    for ins in ({"q": S((128, 64), "bf16"), "k": S((256, 64), "bf16")},
                {"q": S((128, 64), "bf16"), "k": S((256, 64), "bf16"), "v": S((256, 64), "bf16")}):
        fx = reg.resolve("random", ins)
        assert fx.where == "fixtures/attention.py"
        assert set(fx.make(ins, {}, 0, "cpu")) == set(ins)


def _fixtures_all():
    from pathlib import Path

    from workbench.kernels.fixtures import load_fixtures

    return load_fixtures(Path(__file__).resolve().parents[1] / "fixtures")


# ---- GPU: stage D itself ---------------------------------------------------------------------
SMALL = dict(h=256, i=128, e=8, topk=2)
#: the model shapes of the issue: (name, h, i, e, topk)
MODELS = [("qwen3-30b-a3b", 2048, 768, 128, 8), ("mixtral-8x7b", 4096, 14336, 8, 2),
          ("gpt-oss-120b", 2880, 2880, 128, 4), ("deepseek-v3", 7168, 2048, 256, 8)]
_gpu_compiled: dict = {}


def _run_stage_d(t, h, i, e, topk, fixture="random", routing="logits", activation="swiglu", bug="none", seed=0,
                 combine="torch", tiles=("128x256", "128x256")):
    """Stage D on the GPU as wb runs it: the fixture's inputs, a poisoned y, launch, then the
    tolerance rule of workbench.compare against the fp32 reference (calibrated by the bf16
    one). Returns (metrics of y, inputs, y, fp32 reference)."""
    from workbench import compare
    from workbench.kernels.fixtures import get_fixture
    from workbench.kernels.stage import Params

    from stages.moe.stage_d_moe import StageD

    stage = StageD()
    p = Params(dict(t=t, h=h, i=i, e=e, topk=topk, dtype="bf16", activation=activation, routing=routing))
    key = (h, i, topk, activation, bug, combine, tiles)
    variants = {"bug": bug, "combine": combine, "up_tile": tiles[0], "down_tile": tiles[1]}
    if key not in _gpu_compiled:
        _gpu_compiled[key] = stage.compile(p, variants, "sm_90a")
    in_specs = stage.inputs(p)
    inputs = get_fixture(_fixtures_all(), fixture, in_specs).make(in_specs, p, seed, "cuda")
    outs = {n: torch.empty(s.shape, dtype=s.torch_dtype(), device="cuda") for n, s in stage.outputs(p).items()}
    compare.poison(outs["y"])
    stage.launch(_gpu_compiled[key], inputs, outs)
    torch.cuda.synchronize()
    ref = stage.reference(inputs, p, {"bug": bug}, torch.float32)
    lo = stage.reference(inputs, p, {"bug": bug}, torch.bfloat16)
    m = compare.metrics(outs["y"], ref["y"], lo["y"], {"factor": 2.0, "atol": 1e-4})
    return m, inputs, outs["y"], ref["y"]


@pytest.mark.gpu
@pytest.mark.parametrize("routing", ["logits", "given"])
@pytest.mark.parametrize("t", [1, 7, 128, 1000])
def test_gpu_stage_d_small(t, routing):
    m, *_ = _run_stage_d(t, **SMALL, routing=routing)
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
@pytest.mark.parametrize("fixture", ["all-to-one-expert", "empty-experts", "one-token-per-expert", "onehot-routing",
                                     "unit-topk-weights", "tail-plus-one", "large-gates", "identity-w2"])
def test_gpu_stage_d_fixtures(fixture):
    routing = "given" if fixture in ("unit-topk-weights", "onehot-routing") else "logits"
    m, *_ = _run_stage_d(1000, **SMALL, fixture=fixture, routing=routing)
    assert m["verdict"] == "PASS", (fixture, m)


@pytest.mark.gpu
@pytest.mark.parametrize("tiles", [("64x128", "128x128"), ("128x128", "64x256")])
@pytest.mark.parametrize("t", [7, 1000])
def test_gpu_stage_d_other_tiles(t, tiles):
    m, *_ = _run_stage_d(t, **SMALL, fixture="tail-plus-one", tiles=tiles)
    assert m["verdict"] == "PASS", (tiles, m)


@pytest.mark.gpu
def test_gpu_stage_d_gptoss_and_deterministic():
    """gpt-oss's activation passes, and two launches give the same bits (no atomics)."""
    m, inputs, y, _ = _run_stage_d(1000, **SMALL, activation="gptoss", fixture="large-gates")
    assert m["verdict"] == "PASS", m
    _, _, y2, _ = _run_stage_d(1000, **SMALL, activation="gptoss", fixture="large-gates")
    assert torch.equal(y, y2)


@pytest.mark.gpu
@pytest.mark.parametrize("bug", ["none", "topk_weights_skipped", "topk_weights_twice", "combine_overwrite"])
def test_gpu_cute_combine_equals_the_torch_combine(bug):
    """combine=cute gives the torch combine's y up to fp32 rounding (one bf16 ulp at most, on
    few elements), for the correct combine and each combine bug."""
    m1, inputs, y_torch, _ = _run_stage_d(1000, **SMALL, bug=bug)
    m2, _, y_cute, _ = _run_stage_d(1000, **SMALL, bug=bug, combine="cute")
    assert m1["verdict"] == m2["verdict"] == ("PASS" if bug == "none" else "FAIL")
    diff = (y_cute.float() - y_torch.float()).abs()
    assert (diff <= 2.0**-7 * y_torch.float().abs()).all() and (diff > 0).float().mean() < 0.01


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 128, 1000])
@pytest.mark.parametrize("model", MODELS, ids=[m[0] for m in MODELS])
def test_gpu_stage_d_model_shapes(model, t):
    _, h, i, e, topk = model
    m, *_ = _run_stage_d(t, h, i, e, topk)
    assert m["verdict"] == "PASS", (model, t, m)
    torch.cuda.empty_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("bug,mutant", [("topk_weights_skipped", "topk-weights-not-applied"),
                                        ("topk_weights_twice", "topk-weights-applied-twice"),
                                        ("combine_overwrite", "combine-overwrites"),
                                        ("gather_ignored", "gather-ignored"),
                                        ("gate_up_swapped", "gate-up-swapped"),
                                        ("silu_on_up", "silu-on-up"),
                                        ("expert_offset_off_by_one", "expert-offset-off-by-one"),
                                        ("tail_from_next", "tail-rows-from-next-expert")])
def test_gpu_stage_d_bug_variants_fail_and_are_named(bug, mutant):
    """Each injected bug FAILS the tolerance rule and the diagnosis names its mutant (or a
    twin with the same prediction here)."""
    from workbench.diagnose import diagnose, mutants_for

    t = 300
    m, inputs, y, ref = _run_stage_d(t, **SMALL, bug=bug)
    assert m["verdict"] == "FAIL", (bug, m)
    params = dict(t=t, **SMALL, dtype="bf16", activation="swiglu", routing="logits")
    root = Path(__file__).resolve().parents[1]
    d = diagnose({"y": y}, {"y": ref}, inputs, params, {"bug": bug}, "random", mutants_for(root / "stages" / "moe"))
    assert d.status == "explained", d.headline
    assert d.best.name == mutant or mutant in d.best.same_as, d.headline
