"""MoE stage C (grouped GEMM over all experts in one launch): scheduler model, compile, GPU checks.

CPU tests (no GPU):
  * the persistent tile walk (tile_scheduler.walk_model, the device loop in Python) covers
    every (expert, m tile, n tile) exactly once, each routed row in exactly one tile of its
    own expert, for empty experts, one-row experts, tails, one expert with everything, no
    rows at all, and grids from 1 CTA to more CTAs than tiles; the host's grid bound is never
    below the real tile count; the two scheduler bugs move rows as their docstring says, and
    tail_from_next is the diagnosis' mutant model (mutants.tail_spill) for any routing;
  * stage C compiles for sm_90a (swiglu with gather, none without gather by TMA and by
    cp.async, tile_m 64, a K tail, bug variants), the probes have the shapes of the
    128 x 256 x 64 tile, 4-stage ring, and the PTX has the design's pieces (16-byte cp.async
    zero-filling past an expert's end, the cp.async mbarrier arrive, the 1 + 128 full count,
    a 3-D TMA for B only, WGMMA); the stage wires its params and variants into the kernel;
  * each bug variant changes the generated code (slow: one compile each); the activation
    bugs leave the plain GEMM (stage D's down-projection) unchanged;
  * the reference is the per-row definition; every fixture of the stage gives a valid routing.
GPU (`gpu` mark; they ran on an H200): stage C against the torch reference for
T in {1, 7, 128, 1000}, empty experts, all tokens on one expert, N and K tails, every
activation, gather off (TMA and cp.async), other tiles; every bug variant fails.
"""
from __future__ import annotations

import importlib.util
import os
import random
import re

import pytest

from stages.moe import tile_scheduler as ts
from workbench.compile.probe import capture
from workbench.kernels.stage import Params

ARCH = "sm_90a"
needs_dsl = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="nvidia-cutlass-dsl is not installed")
TILE_M = 128
#: the epilogue every GPU case of stage C runs with unless it names one: MOE_EPILOGUE=smem
#: reruns the whole GPU set through the smem epilogue (benchmarks/gpu_epilogue_moe.sh)
EPILOGUE = os.environ.get("MOE_EPILOGUE", "direct")


# --------------------------------------------------------------------------------------
# the tile walk (pure Python)
# --------------------------------------------------------------------------------------
def _cu(counts):
    cu = [0]
    for c in counts:
        cu.append(cu[-1] + c)
    return cu


COUNTS = {
    "empty-experts": [0, 0, 300, 0, 5, 0, 0],
    "one-row-experts": [1, 1, 1, 1, 1],
    "tails": [129, 128, 127, 0, 256, 1, 255],
    "all-to-one": [0, 0, 0, 1000],
    "first-only": [1000, 0, 0],
    "no-rows": [0, 0, 0, 0],
    "many-experts": [random.Random(7).choice([0, 1, 3, 60, 128, 200]) for _ in range(256)],
}


@pytest.mark.parametrize("grid", [1, 7, 132, 5000])
@pytest.mark.parametrize("n_tiles", [1, 3])
@pytest.mark.parametrize("case", sorted(COUNTS))
def test_walk_covers_every_tile_once(case, n_tiles, grid):
    counts = COUNTS[case]
    cu = _cu(counts)
    work = ts.walk_model(cu, n_tiles, TILE_M, grid)
    seen = [(t.expert, t.m_tile, t.n_tile) for cta in work for t in cta]
    expected = {(e, m, n) for e, c in enumerate(counts) for m in range(-(-c // TILE_M)) for n in range(n_tiles)}
    assert len(seen) == len(set(seen)), "a tile was visited twice"
    assert set(seen) == expected
    # per n tile, the rows of each expert are covered exactly once, by that expert's tiles
    for n in range(n_tiles):
        owner = {}
        for cta in work:
            for t in cta:
                if t.n_tile != n:
                    continue
                assert 1 <= t.rows <= TILE_M
                for r in range(t.row_start, t.row_start + t.rows):
                    assert r not in owner
                    owner[r] = t.expert
        assert owner == {r: e for e in range(len(counts)) for r in range(cu[e], cu[e + 1])}


def test_walk_round_robin_order():
    """CTA c takes tiles c, c + grid, ... : its tiles come in increasing (expert, n, m) order."""
    cu = _cu(COUNTS["tails"])
    for cta in ts.walk_model(cu, 3, TILE_M, 5):
        keys = [(t.expert, t.n_tile, t.m_tile) for t in cta]
        assert keys == sorted(keys)


def test_grid_bound_is_never_below_the_tile_count():
    rng = random.Random(3)
    for _ in range(300):
        E = rng.randint(1, 64)
        counts = [rng.choice([0, 0, 1, 5, 127, 128, 129, rng.randint(0, 900)]) for _ in range(E)]
        n_tiles = rng.randint(1, 4)
        tiles = sum(-(-c // TILE_M) for c in counts) * n_tiles
        assert tiles <= ts.max_tiles(sum(counts), E, n_tiles, TILE_M)
        assert 1 <= ts.grid_size(sum(counts), E, n_tiles, TILE_M, 132) <= 132


def test_offset_bug_model_reads_the_next_experts_rows():
    cu = _cu([100, 50, 30])
    tiles = [t for cta in ts.walk_model(cu, 1, TILE_M, 4, bug="expert_offset_off_by_one") for t in cta]
    by_expert = {t.expert: t for t in tiles}
    assert by_expert[0].row_start == 100 and by_expert[0].rows == 80  # clamped at R = 180
    assert by_expert[1].row_start == 150 and by_expert[1].rows == 30
    assert by_expert[2].rows <= 0  # starts at R: nothing


def test_tail_from_next_model_cuts_tiles_across_experts():
    counts = [100, 50, 300]
    cu = _cu(counts)
    tiles = [t for cta in ts.walk_model(cu, 1, TILE_M, 3, bug="tail_from_next") for t in cta]
    rows = {}
    for t in tiles:
        for r in range(t.row_start, t.row_start + t.rows):
            assert r not in rows  # still written once
            rows[r] = t.expert
    assert sorted(rows) == list(range(450))
    assert rows[100] == 0 and rows[127] == 0  # expert 1's first rows ran with expert 0's weights
    assert rows[128] == 1 and rows[256] == 2


# --------------------------------------------------------------------------------------
# compile (CPU)
# --------------------------------------------------------------------------------------
_compiled: dict = {}


def _params(**kw) -> Params:
    base = {"t": 100, "h": 2048, "i": 768, "e": 8, "topk": 2, "m": 1, "dtype": "bf16", "activation": "swiglu"}
    return Params({**base, **kw})


def _compile(activation="swiglu", gather="on", bug="none", a_load="auto"):
    """(compiled, probes, ptx) once per configuration: the compile StageC.compile makes."""
    key = (activation, gather, bug, a_load)
    if key not in _compiled:
        from stages.moe import stage_c_grouped as sc

        with capture() as rec:
            _, c = sc.compile_grouped(
                "bf16", 2048, 2 * 768, activation, gather == "on", bug, ARCH, a_load=a_load, keep_ptx=True
            )
        _compiled[key] = (c, {r["name"]: r for r in rec}, c.fn.__ptx__)
    return _compiled[key]


def _shape(rec) -> str:
    return rec["layout"].split(":")[0]


@needs_dsl
def test_stage_c_compiles_with_the_designed_pieces():
    compiled, probes, ptx = _compile()
    assert compiled.n_out == 768 and compiled.gather and compiled.n_tiles == 1536 // 256
    # A: (128, 64) k slab x 4 stages; each producer thread copies 8 rows (16 apart) x 8 elements
    assert _shape(probes["sA"]) == "((8,16),(64,1),(1,4))"
    assert _shape(probes["tAsA"]) == "((8,1),8,1,(1,4))"
    assert probes["tAcA"]["layout"].endswith(":((1@1,0),16@0,0)")
    # B: expert e's (256, 64) box, K = 2048 static: 32 k tiles (no K tail: no column predicate)
    assert _shape(probes["gB"]) == "(256,64,32)"
    assert _shape(probes["tCrAcc"]) == "((2,2,32),1,1)"
    assert "cp.async.cg.shared.global" in ptx  # 16-byte chunks (.cg takes only 16)
    assert "cp.async.mbarrier.arrive.noinc" in ptx
    assert re.search(r"mov.b32\s+%r\d+, 129;", ptx)  # full barrier count: the TMA arrive + 128 threads
    assert ptx.count("cp.async.bulk.tensor.3d") >= 1 and "cp.async.bulk.tensor.2d" not in ptx  # B only
    assert "wgmma.mma_async" in ptx
    # rows past an expert's end: the same cp.async with a runtime source size (0: zero-fill)
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 16, %r\d+;", ptx)
    assert "st.shared" not in ptx


@needs_dsl
def test_smem_epilogue_compiles_with_vector_stores_and_a_named_barrier():
    """epilogue=smem: the output tile goes registers -> st.shared -> 16-byte ld.shared ->
    16-byte st.global, the consumer WG syncs on a named barrier of 128 threads (not barrier
    0: the producer is not in it); auto stages leave room for the tile; the direct epilogue
    has none of these. Three compiles cover swiglu / none, gather on / off, 128 / 64 rows."""
    from stages.moe import stage_c_grouped as sc

    *_, ptx_direct = _compile()
    assert not re.search(r"st\.global\.v4", ptx_direct)
    cases = [  # activation, gather, tile_m, stages auto picks, output chunks of 16 bytes per row
        ("swiglu", True, 128, 4, 16),
        ("none", False, 128, 3, 32),  # the 64 KiB identity tile costs a stage (4 x 48 + 64 > 227 KiB)
        ("none", True, 64, 4, 32),
    ]
    for activation, gather, tile_m, stages, chunks in cases:
        with capture() as rec:
            kernel, c = sc.compile_grouped("bf16", 2048, 1536, activation, gather, arch=ARCH, tile_m=tile_m,
                                           epilogue="smem", keep_ptx=True)
        ptx, probes = c.fn.__ptx__, {r["name"]: r for r in rec}
        what = (activation, gather, tile_m)
        assert kernel.stages == stages, what
        assert _shape(probes["sD"]) == f"(8,{tile_m * chunks})", what
        # SwiGLU writes one 16-bit output per column pair, none a 32-bit pair
        assert re.search(r"st\.shared\.b16" if activation == "swiglu" else r"st\.shared\.b32", ptx), what
        assert re.search(r"ld\.shared\.v4\.b32", ptx), what
        assert re.search(r"st\.global\.v4\.b32", ptx), what
        assert not re.search(r"st\.global\.(b16|b32|u16)\b", ptx), what  # every output store is a vector
        named = re.findall(r"bar\.sync\s+([^,;]+),\s*128;", ptx)
        assert len(named) == 2 and all(b.strip() != "0" for b in named), (what, named)


@needs_dsl
def test_stage_wires_params_and_variants_into_the_kernel():
    from stages.moe.stage_c_grouped import StageC

    stage = StageC()
    p = _params(h=128, i=96, activation="gptoss")
    compiled = stage.compile(p, {"gather": "off", "bug": "silu_on_up", "epilogue": "smem"}, ARCH)
    k = stage.kernel_obj
    assert (compiled.k, compiled.n, compiled.n_out, compiled.gather) == (128, 192, 96, False)
    assert (k.activation, k.bug, k.gather, k.epilogue_kind) == ("gptoss", "silu_on_up", False, "smem")
    assert stage.inputs(p)["w1"].shape == (8, 128, 192) and stage.inputs(p)["topk_ids"].dtype == "int32"
    assert stage.outputs(p)["h"].shape == (200, 96)
    assert stage.outputs(_params(activation="none"))["h"].shape == (200, 1536)


@needs_dsl
def test_stage_c_compiles_plain_gemm_without_gather():
    compiled, probes, ptx = _compile(activation="none", gather="off")
    assert compiled.n_out == 1536 and not compiled.gather
    assert "ex2" not in ptx  # no activation in a plain GEMM
    # A in row order comes by TMA (a 2-D box from the tile's first row), no cp.async, and
    # the full barrier counts the TMA warp's one arrive
    assert "cp.async.bulk.tensor.2d" in ptx and "cp.async.cg" not in ptx
    assert _shape(probes["gA"]) == "(128,64,32)" and probes["gA"]["memspace"] == "coord"  # a TMA coordinate tile
    assert not re.search(r"mov.b32\s+%r\d+, 129;", ptx)
    *_, ptx_cp = _compile(activation="none", gather="off", a_load="cpasync")
    assert "cp.async.cg" in ptx_cp and "cp.async.bulk.tensor.2d" not in ptx_cp
    *_, ptx_gather = _compile(activation="none", gather="on", a_load="cpasync")
    assert ptx_cp != ptx_gather  # the row map is a compile-time switch


@needs_dsl
def test_one_bug_variant_compiles_to_other_code():
    *_, ptx = _compile(bug="tail_unwritten")
    *_, ptx_ok = _compile()
    assert ptx != ptx_ok


@needs_dsl
def test_tile_m_64_compiles():
    """tile_m 64: one consumer WG; each producer thread gathers 4 rows, 16 apart."""
    from stages.moe import stage_c_grouped as sc

    with capture() as rec:
        kernel, c = sc.compile_grouped("bf16", 512, 384, "swiglu", True, arch=ARCH, tile_m=64, tile_n=128,
                                       stages=sc.AUTO_STAGES[64, 128])
    probes = {r["name"]: r for r in rec}
    assert c.tile_m == 64 and kernel.num_consumer_wg == 1 and kernel.producer_arrivals == 129
    assert _shape(probes["tAsA"]) == "((8,1),4,1,(1,7))"
    assert _shape(probes["tCrAcc"]) == "((2,2,16),1,1)"


@needs_dsl
def test_k_tail_compiles():
    """K = 200: 4 k tiles, the last one partial (A's chunks past K zero-filled)."""
    from stages.moe import stage_c_grouped as sc

    with capture() as rec:
        kernel, c = sc.compile_grouped("bf16", 200, 192, "swiglu", True, arch=ARCH)
    assert kernel.k_tiles == 4 and kernel.k_tail
    assert _shape({r["name"]: r for r in rec}["gB"]) == "(256,64,4)"


@needs_dsl
def test_activation_bugs_leave_the_plain_gemm_alone():
    """Stage D passes one bug to both GEMMs: the down-projection (none) has no gate/up."""
    *_, ptx = _compile(activation="none", gather="off", bug="gate_up_swapped")
    *_, ptx_ok = _compile(activation="none", gather="off")
    assert ptx == ptx_ok


@needs_dsl
@pytest.mark.slow
@pytest.mark.parametrize(
    "bug", ["expert_offset_off_by_one", "tail_from_next", "gather_ignored", "gate_up_swapped", "silu_on_up"]
)
def test_every_bug_variant_changes_the_kernel(bug):
    *_, ptx = _compile(bug=bug)
    *_, ptx_ok = _compile()
    assert ptx != ptx_ok


# --------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------
def _run_case(T, E, topk, h, i, activation="swiglu", gather="on", bug="none", ids=None, seed=0, a_load="auto",
              epilogue=None, **tile):
    """Stage C's launch and reference on one input; returns compare.metrics' dict. The output
    is poisoned first: rows the kernel must not write (none, in a correct kernel) keep NaN.
    ``epilogue``: None = EPILOGUE (the MOE_EPILOGUE environment variable)."""
    import torch

    from stages.moe import stage_c_grouped as sc
    from workbench.compare import metrics, poison

    g = torch.Generator().manual_seed(seed)
    p = _params(t=T, e=E, topk=topk, h=h, i=i, activation=activation)
    stage = sc.StageC()
    variants = {"gather": gather, "bug": bug, "a_load": a_load, "epilogue": epilogue or EPILOGUE, **tile}
    compiled = stage.compile(p, variants, ARCH)
    x = torch.randn(T, h, generator=g).to(torch.bfloat16).cuda()
    w1 = (torch.randn(E, h, 2 * i, generator=g) / h**0.5).to(torch.bfloat16).cuda()
    if ids is None:
        ids = torch.stack([torch.randperm(E, generator=g)[:topk] for _ in range(T)])
    ids = ids.to(torch.int32).cuda()
    inputs = {"x": x, "topk_ids": ids, "w1": w1}
    out = torch.empty(stage.outputs(p)["h"].shape, dtype=torch.bfloat16, device="cuda")
    poison(out)
    stage.launch(compiled, inputs, {"h": out})
    torch.cuda.synchronize()
    ref = stage.reference(inputs, p, {}, torch.float32)["h"]
    ref_lp = stage.reference(inputs, p, {}, torch.bfloat16)["h"]
    return metrics(out, ref, ref_lp, {"factor": 2.0, "atol": 1e-4})


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 7, 128, 1000])
def test_gpu_matches_reference_for_token_counts(T):
    m = _run_case(T, E=8, topk=2, h=256, i=200)  # 2i = 400: an N tail in the last n tile
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
@pytest.mark.parametrize("tile", [{"tile_m": "64"}, {"tile_m": "64", "tile_n": "128"}, {"tile_n": "128"}])
@pytest.mark.parametrize("gather", ["on", "off"])
def test_gpu_other_tiles(tile, gather):
    m = _run_case(500, E=8, topk=2, h=192, i=200, gather=gather, **tile)
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
@pytest.mark.parametrize("bug", ["tail_from_next", "tail_unwritten", "expert_offset_off_by_one"])
def test_gpu_bug_variants_fail_with_64_row_tiles(bug):
    m = _run_case(300, E=4, topk=2, h=128, i=192, bug=bug, tile_m="64")
    assert m["verdict"] == "FAIL", m


@pytest.mark.gpu
@pytest.mark.parametrize("activation", ["identity", "gptoss", "none"])
def test_gpu_activations(activation):
    m = _run_case(300, E=4, topk=2, h=128, i=192, activation=activation)
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
@pytest.mark.parametrize("a_load", ["tma", "cpasync"])
@pytest.mark.parametrize("activation", ["none", "swiglu"])
def test_gpu_gather_off(a_load, activation):
    m = _run_case(300, E=4, topk=2, h=128, i=192, activation=activation, gather="off", a_load=a_load)
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
@pytest.mark.parametrize("gather", ["on", "off"])
def test_gpu_k_tail(gather):
    m = _run_case(300, E=4, topk=2, h=200, i=96, gather=gather)  # K = 200: a partial last k tile
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
def test_gpu_empty_experts():
    import torch

    T, E = 500, 16
    ids = torch.tensor([[1 + 2 * ((t * 3 + j) % 6) for j in range(2)] for t in range(T)])  # experts 1,3,..,11
    m = _run_case(T, E=E, topk=2, h=128, i=128, ids=ids)
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
def test_gpu_all_tokens_to_one_expert():
    import torch

    T, E = 1000, 8
    m = _run_case(T, E=E, topk=1, h=256, i=256, ids=torch.full((T, 1), E - 1))
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
def test_gpu_many_experts_many_tiles():
    m = _run_case(2048, E=64, topk=6, h=512, i=384)
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
@pytest.mark.parametrize(
    "bug",
    ["expert_offset_off_by_one", "tail_from_next", "tail_unwritten", "gather_ignored", "gate_up_swapped", "silu_on_up"],
)
def test_gpu_each_bug_variant_fails(bug):
    m = _run_case(300, E=4, topk=2, h=128, i=192, bug=bug)  # random routing: tails in every expert
    assert m["verdict"] == "FAIL", m


def _sparse_ids(T, E, topk):
    """Routing onto experts 1, 3, .. of E only (empty experts between them), ragged counts:
    every used expert ends in a partial tile (a tail)."""
    import torch

    used = list(range(1, E, 2))
    return torch.tensor([[used[(t * 5 + 3 * j + t // 7) % len(used)] for j in range(topk)] for t in range(T)])


@pytest.mark.gpu
@pytest.mark.parametrize("gather", ["on", "off"])
@pytest.mark.parametrize("activation", ["swiglu", "none"])
@pytest.mark.parametrize("T", [1, 7, 1000])
def test_gpu_smem_epilogue(T, activation, gather):
    """epilogue=smem, 128 x 256 tiles: empty experts, a tail in each used expert, an N tail
    (2i = 400: the second n tile has 144 columns; none stores 400 columns, 256 + 144)."""
    m = _run_case(T, E=16, topk=2, h=256, i=200, activation=activation, gather=gather, epilogue="smem",
                  ids=_sparse_ids(T, 16, 2))
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
@pytest.mark.parametrize("tile", [{"tile_m": "64"}, {"tile_n": "128"}, {"tile_m": "64", "tile_n": "128"}])
@pytest.mark.parametrize("activation", ["swiglu", "none"])
def test_gpu_smem_epilogue_other_tiles(tile, activation):
    m = _run_case(1000, E=16, topk=2, h=192, i=200, activation=activation, epilogue="smem",
                  ids=_sparse_ids(1000, 16, 2), **tile)
    assert m["verdict"] == "PASS", m


@pytest.mark.gpu
@pytest.mark.parametrize("bug", ["tail_unwritten", "tail_from_next", "gate_up_swapped", "silu_on_up"])
def test_gpu_smem_epilogue_bug_variants_fail(bug):
    """The bugs still show through the smem path: unwritten tails keep the poison, the
    activation bugs enter through pair_values."""
    m = _run_case(300, E=4, topk=2, h=128, i=192, bug=bug, epilogue="smem")
    assert m["verdict"] == "FAIL", m


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 7, 1000])
def test_gpu_stage_d_with_smem_epilogue(T):
    """Stage D (both grouped GEMMs through the smem epilogue, up_tile auto: 128- and 64-row
    up kernels) at a small shape against the fp32 reference; y poisoned first."""
    import torch

    from stages.moe.stage_d_moe import StageD
    from workbench.compare import metrics, poison

    stage = StageD()
    p = Params(dict(t=T, h=256, i=128, e=8, topk=2, dtype="bf16", activation="swiglu", routing="given"))
    compiled = stage.compile(p, {"epilogue": "smem"}, ARCH)
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, 256, generator=g).to(torch.bfloat16).cuda()
    w1 = (torch.randn(8, 256, 256, generator=g) / 16).to(torch.bfloat16).cuda()
    w2 = (torch.randn(8, 128, 256, generator=g) / 128**0.5).to(torch.bfloat16).cuda()
    ids = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(T)]).to(torch.int32).cuda()  # 6, 7 empty
    wts = torch.softmax(torch.randn(T, 2, generator=g), -1).float().cuda()
    inputs = {"x": x, "topk_ids": ids, "topk_weights": wts, "w1": w1, "w2": w2}
    y = torch.empty(T, 256, dtype=torch.bfloat16, device="cuda")
    poison(y)
    stage.launch(compiled, inputs, {"y": y})
    torch.cuda.synchronize()
    ref = stage.reference(inputs, p, {}, torch.float32)["y"]
    lo = stage.reference(inputs, p, {}, torch.bfloat16)["y"]
    m = metrics(y, ref, lo, {"factor": 2.0, "atol": 1e-4})
    assert m["verdict"] == "PASS", m


def test_reference_is_the_per_row_definition():
    """grouped_reference (what the GPU tests and wb compare with) against a per-row loop:
    sorted row p is the j-th (token, k) pair of expert e in token order, and holds
    silu(g)·u of x[token] @ W1[e] (float64 on the CPU)."""
    import torch

    from stages.moe.stage_c_grouped import grouped_reference

    g = torch.Generator().manual_seed(1)
    T, E, k, H, I = 9, 4, 2, 8, 3
    x = torch.randn(T, H, generator=g, dtype=torch.float64)
    w1 = torch.randn(E, H, 2 * I, generator=g, dtype=torch.float64)
    ids = torch.tensor([[3, 0], [0, 2], [2, 3], [0, 3], [3, 2], [2, 0], [0, 3], [3, 2], [2, 0]], dtype=torch.int32)
    out = grouped_reference(x, ids, w1, "swiglu", torch.float64)
    p = 0
    for e in range(E):  # expert 1 has no rows
        for t in range(T):
            for j in range(k):
                if int(ids[t, j]) != e:
                    continue
                d = x[t] @ w1[e]
                gate, up = d[0::2], d[1::2]
                assert torch.allclose(out[p], torch.nn.functional.silu(gate) * up)
                p += 1
    assert p == T * k == out.shape[0]


@pytest.mark.parametrize(
    "name",
    ["random", "all-to-one-expert", "empty-experts", "one-token-per-expert", "onehot-routing", "tail-plus-one",
     "large-gates"],
)
def test_stage_c_fixtures_give_a_valid_routing(name):
    """The contract with fixtures/moe.py: every fixture of stage C fills x, topk_ids, w1 with
    the stage's shapes and dtypes, ids in [0, E); the reference runs on them (CPU)."""
    from pathlib import Path

    import torch

    from stages.moe.stage_c_grouped import StageC, grouped_reference
    from workbench.kernels.fixtures import get_fixture, load_fixtures
    from workbench.kernels.registry import load_kernel

    root = Path(__file__).resolve().parents[1]
    spec = load_kernel(root / "stages" / "moe" / "kernel.yaml").stage("c")
    assert name in spec.fixtures
    p = _params(t=300, h=64, i=32, e=8, topk=2)
    specs = StageC().inputs(p)
    fx = get_fixture(load_fixtures(root / "fixtures"), name, specs)
    inputs = fx.make(specs, p, 0, "cpu")
    for key, s in specs.items():
        assert tuple(inputs[key].shape) == s.shape and inputs[key].dtype == s.torch_dtype(), key
    ids = inputs["topk_ids"]
    assert int(ids.min()) >= 0 and int(ids.max()) < 8
    out = grouped_reference(inputs["x"].float(), ids, inputs["w1"].float(), "swiglu", torch.float32)
    assert out.shape == (600, 32) and torch.isfinite(out).all()


def test_tail_from_next_is_the_mutants_model():
    """The diagnosis' mutant tail-rows-from-next-expert (stages/moe/mutants.tail_spill) must
    predict, for any routing, the expert whose weights stage C's tail_from_next applies to
    each row (the walk model's tiles, 128 rows)."""
    from types import SimpleNamespace

    import torch

    from stages.moe import mutants

    rng = random.Random(5)
    for _ in range(50):
        counts = [rng.choice([0, 1, 5, 127, 128, 129, 200, 300]) for _ in range(rng.randint(1, 9))]
        cu = _cu(counts)
        writer = [-1] * cu[-1]
        for cta in ts.walk_model(cu, 1, TILE_M, 4, bug="tail_from_next"):
            for t in cta:
                for r in range(t.row_start, t.row_start + t.rows):
                    writer[r] = t.expert
        expert = torch.tensor([e for e, c in enumerate(counts) for _ in range(c)], dtype=torch.long)
        P = SimpleNamespace(cu=cu, E=len(counts), R=cu[-1], expert=expert, device="cpu")
        assert mutants.tail_spill(P).tolist() == writer, counts


@needs_dsl
def test_the_traced_build_reads_the_clock_and_the_untraced_build_not_at_all():
    """wb run moe/c --trace: stamps only in the traced build (the untraced one has no clock
    read, so tracing costs the real kernel nothing); 4 per consumer tile, 3 per producer tile
    (the first-slot stamp once per tile), the CTA's start and end clocks."""
    from stages.moe import stage_c_grouped as sc

    _, plain, _ = _compile()
    _, traced = sc.compile_grouped("bf16", 2048, 2 * 768, "swiglu", True, "none", ARCH, keep_ptx=True, trace=True)
    assert "%clock" not in plain and "globaltimer" not in plain
    ptx = traced.fn.__ptx__
    assert len(re.findall(r"%clock\b", ptx)) == 3 + 4 + 2 and len(re.findall(r"%globaltimer_lo", ptx)) == 2


def test_moe_trace_decodes_each_warpgroups_tiles_and_phases():
    """stages/moe/trace.py on a buffer written as the kernel lays it out: two CTAs, the second
    with two tiles; WG2 of the short tile only drained the ring (no stamp 1 or 2)."""
    from stages.moe import trace
    from workbench.run import timeline

    L, ctas = trace.LAYOUT, 2
    words = [0] * L.length(ctas)
    for cta in range(ctas):
        words[L.clock_word(ctas, cta): L.clock_word(ctas, cta) + 4] = [1000 + cta, 100, 5000 + cta, 4100]  # 1 ns per clock
    stamps = {(0, 0, 0): [110, 120, 400], (0, 1, 0): [110, 300, 900, 1000], (0, 2, 0): [110, 300, 910, 1000],
              (1, 0, 0): [105, 130, 500], (1, 1, 0): [105, 310, 800, 900], (1, 2, 0): [105, 0, 0, 950],
              (1, 0, 1): [500, 520, 700], (1, 1, 1): [950, 960, 1500, 1600], (1, 2, 1): [950, 960, 1510, 1620]}
    for (cta, lane, j), ev in stamps.items():
        words[L.word(cta, lane, j): L.word(cta, lane, j) + len(ev)] = ev
    slices, clocks = trace.decode(words, ctas, 2)
    tiles = sorted((s.cta, s.lane, s.tile, s.end - s.start) for s in slices if s.kind == "tile")
    assert tiles == [(0, "WG1", 0, 890), (0, "WG2", 0, 890), (0, "producer", 0, 290), (1, "WG1", 0, 795),
                     (1, "WG1", 1, 650), (1, "WG2", 0, 845), (1, "WG2", 1, 670), (1, "producer", 0, 395), (1, "producer", 1, 200)]
    drained = [s.name for s in slices if (s.cta, s.lane, s.tile, s.kind) == (1, "WG2", 0, "phase")]
    assert drained == []  # its wait and mainloop were never stamped; its epilogue span has no start
    events = timeline.chrome_trace(slices, clocks, "moe", trace.lanes(2))
    assert timeline.validate(events) == []
    summary = timeline.summarize(slices, clocks)
    assert summary["tiles_per_cta"] == [1, 2] and summary["phase_median_ns"]["WG: mainloop (MMA over k)"] == 550  # of 600, 610, 490, 540, 550
