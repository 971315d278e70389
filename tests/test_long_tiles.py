"""Causal d=64 and d=96 and non-causal d=64 and d=128 build long kernels (stages/fmha/geometry.long_kernels):
the default one and, beside it, kernels that run from their min_m query rows and min_n keys
on, the first that serves a shape (causal d=64: 3 consumer WGs from m = 4096; causal d=96:
non-causal's 192 x 144 tile, P in shared memory, O in Q, from m = 8192; non-causal d=64: the
same tile under the round-robin scheduler from m = 8192; non-causal d=128:
192-row tiles, P in shared memory, O in Q, from m = n = 8192, else a 128 x 176 tile, O in Q,
from n = 8192 keys). On the CPU: which configurations and variants get them, that the stage's
compile returns each under its own kernel name and picks by m and n, that `wb shapes` lists
the first build's probes only, that the fixtures and the mutants take the launched kernel's
tile, and that the exported op (stages/fmha/export_op.py, run here with stand-in functions)
picks as the stage does. The speed that justifies them is measured on a GPU
(docs/perf-notes.md)."""

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stages.fmha import export_op  # noqa: E402
from stages.fmha import geometry  # noqa: E402


@pytest.mark.parametrize(
    "d, causal, windowed, varlen, paged, expected",
    [
        (64, True, False, False, False, [((4096, 0), {"consumers": "3"})]),  # (min_m, min_n)
        (96, True, False, False, False, [((8192, 0), {"consumers": "3", "kv_tile": "144", "o_staging": "q"})]),
        (128, False, False, False, False, [((8192, 8192), {"consumers": "3", "o_staging": "q", "p_operand": "smem"}),
                                           ((0, 8192), {"consumers": "2", "kv_tile": "176", "o_staging": "q"})]),
        (64, False, False, False, False, [((8192, 0), {"consumers": "3", "persistent": "on"})]),  # round robin, no short tile
        (96, False, False, False, False, []),  # 192-row already
        (64, False, True, False, False, []),
        (128, True, False, False, False, []),
        (192, False, False, False, False, []),
        (256, False, False, False, False, []),
        (128, False, True, False, False, []),
        (128, False, False, True, False, []),
        (128, False, False, False, True, []),
        (64, True, True, False, False, []),  # a window: masked steps at both edges
        (96, True, False, True, False, []),  # varlen would choose by max_seqlen_q: not measured
        (96, True, False, False, True, []),
    ],
)
def test_only_causal_d64_d96_and_non_causal_d64_d128_fixed_length_without_a_window_get_long_kernels(d, causal, windowed, varlen, paged, expected):
    longs = geometry.long_kernels(d, causal, windowed, varlen, paged)
    assert [((long.min_m, long.min_n), long.variants()) for long in longs] == expected


def test_every_long_kernel_has_an_export_piece():
    """The exported op names its long kernels fn_long, fn_long2: a configuration with more
    would export without the rest (launch would run another kernel for their shapes)."""
    most = max(len(geometry.long_kernels(d, causal, False, False, False)) for d in geometry.HEAD_DIMS for causal in (False, True))
    assert most == 2 and most <= len(export_op.LONG_PIECES)


def test_d128s_192_row_kernel_is_tried_before_the_176_key_one_and_only_from_8192_rows():
    """The first long kernel that serves a shape is launched: 192-row tiles where m and n are
    both 8192 or more, the 176-key tile where only n is, the default 128 x 128 below 8192
    keys."""
    longs = geometry.long_kernels(128, False, False, False, False)
    picked = {(m, n): geometry.serving(longs, m, n) for m, n in ((8192, 8192), (16384, 8192), (8191, 16384), (256, 8192), (16384, 8191))}
    assert [None if long is None else (long.consumers, long.kv_tile) for long in picked.values()] == [
        (3, None), (3, None), (2, 176), (2, 176), None]
    assert [(g.tile_m, g.tile_n, g.p_smem, g.o_in_q) for g in (geometry.launched(128, 8192, n=8192), geometry.launched(128, 256, n=8192))] == [
        (192, 128, True, True), (128, 176, False, True)]


@pytest.mark.parametrize(
    "d, variants, built",
    [
        (96, {"schedule": "overlap"}, True),
        (96, {"kv_tile": "128"}, False),  # a variant the long kernel sets, chosen: the user's experiment
        (96, {"schedule": "serial"}, False),  # d=96's 192-row tile needs P through shared memory
        (96, {"p_operand": "regs"}, False),
        (96, {"q_buffers": "2"}, False),  # O staged in Q takes the one Q buffer
        (96, {"kv_stages": "3"}, False),  # does not fit beside the 192 x 144 tile
        (64, {"schedule": "serial"}, True),  # d=64's 3 WGs hold P in registers: every schedule
        (64, {"consumers": "2"}, False),
    ],
)
def test_the_long_kernel_is_built_only_where_the_other_variants_allow_it(d, variants, built):
    assert bool(geometry.long_kernels(d, True, False, False, False, variants)) == built


@pytest.mark.parametrize(
    "variants, built",
    [
        ({}, True),
        ({"schedule": "serial"}, True),
        ({"kv_stages": "2"}, True),
        # the user's choice of scheduler is theirs for every m: no round-robin twin replaces it
        ({"persistent": "dynamic"}, False),
        ({"persistent": "off"}, False),
        ({"short_tile": "split"}, False),
        ({"short_tile": "whole"}, False),
        ({"split_tail": "off"}, False),
        ({"consumers": "3"}, False),  # a tile variant: that tile, its default scheduler, every m
    ],
)
def test_non_causal_d64s_round_robin_kernel_yields_to_a_chosen_scheduler(variants, built):
    longs = geometry.long_kernels(64, False, False, False, False, variants)
    assert [long.variants() for long in longs] == ([{"consumers": "3", "persistent": "on"}] if built else [])


@pytest.mark.parametrize(
    "variants, built",
    [
        ({}, [(3, None), (2, 176)]),  # (consumers, kv_tile) of each
        ({"schedule": "serial"}, [(2, 176)]),  # P through shared memory is not built serial; the 176-key tile's P stays in registers
        ({"schedule": "overlap"}, [(3, None), (2, 176)]),
        ({"o_staging": "own"}, []),  # a variant of the tile's shape, chosen: that tile for every shape
        ({"kv_tile": "128"}, []),
        ({"consumers": "2"}, []),
        ({"p_operand": "regs"}, []),
        ({"q_buffers": "2"}, []),  # O staged in Q takes the one Q buffer
        ({"kv_stages": "3"}, []),  # K and V tiles 3 deep beside them: over a CTA's shared memory
    ],
)
def test_d128s_non_causal_long_kernels_are_built_only_where_the_other_variants_allow_them(variants, built):
    longs = geometry.long_kernels(128, False, False, False, False, variants)
    assert [(long.consumers, long.kv_tile) for long in longs] == built


@pytest.mark.parametrize(
    "d, causal, tiles_by_mn",
    [
        (96, True, ((4096, 250, 128, 128), (8192, 250, 144, 192))),
        (128, False, ((8192, 4096, 128, 128), (256, 8192, 176, 128), (8191, 8200, 176, 128), (8192, 8300, 128, 192))),
    ],
)
def test_fixtures_and_mutants_take_the_tile_of_the_kernel_launched_for_m_rows_and_n_keys(d, causal, tiles_by_mn):
    """d=96 causal: 128-key tiles below 8192 query rows, 144 (and 192-row Q tiles) from there
    on, whatever n; d=128 non-causal: 192-row Q tiles from m = n = 8192, else 176-key tiles
    from 8192 keys on. The single
    fixture's V element lands at row 9 of the last tile of that width; the mutants simulate
    that width and Q tile; with kv_tile chosen, the default kernel's for every m and n."""
    from workbench.diagnose import MutantContext
    from workbench.kernels.fixtures import get_fixture, load_fixtures
    from workbench.kernels.stage import TensorSpec

    from stages.fmha.mutants import problem

    fixtures = load_fixtures(ROOT / "fixtures")
    for m, n, tile_n, tile_m in tiles_by_mn:
        assert geometry.kv_tile(d, causal=causal, m=m, n=n) == tile_n
        ins = {name: TensorSpec((1, rows, 1, d), "bf16") for name, rows in (("q", m), ("k", n), ("v", n))}
        params = _params(d=d, m=m, n=n, batch=1, heads=1, kv_heads=1, causal=causal)
        inputs = get_fixture(fixtures, "single", ins).make(ins, params, 0, "cpu")
        (rows,) = torch.nonzero(inputs["v"][0, :, 0, 1], as_tuple=True)
        assert rows.tolist() == [((n - 1) // tile_n) * tile_n + 9]
        for variants, tiles in (({}, (tile_n, tile_m)), ({"kv_tile": str(tile_n)}, (128, 128))):
            cx = MutantContext(inputs=inputs, expected={}, params=params, variants=variants, fixture="single", views={})
            P = problem(cx)
            assert (P.kv_tile, P.tile_m) == tiles


def _params(**over):
    from workbench.kernels.stage import Params

    p = {"d": 64, "dtype": "bf16", "heads": 4, "kv_heads": 4, "causal": True, "m": 1024, "n": 1024, "batch": 2,
         "align": "top_left", "window_left": -1, "window_right": -1, "softcap": 0.0, "varlen": False,
         "seqlens": "", "seqlens_k": "", "page_size": 0}
    p.update(over)
    return Params(p)


@pytest.mark.parametrize(
    "d, causal, default, longs",
    [
        (64, True, "128x128", [((4096, 0), "192x128")]),  # (min_m, min_n), the tile in the kernel's name
        (64, False, "192x128", [((8192, 0), "192x128_rr")]),  # the same tile, named apart by its scheduler
        (96, True, "128x128", [((8192, 0), "192x144")]),
        (128, False, "128x128", [((8192, 8192), "192x128"), ((0, 8192), "128x176")]),
    ],
)
def test_the_stage_compiles_each_kernel_under_its_own_name_and_picks_by_m_and_n(d, causal, default, longs):
    pytest.importorskip("cutlass")
    from stages.fmha import host
    from stages.fmha.stage_d_fmha import StageD
    from workbench.compile.probe import capture, with_keys
    from workbench.compile.trace import tracing

    stage = StageD()
    with capture("d") as both_probes, tracing("d", "sm_90a") as state:
        both = stage.compile(_params(d=d, causal=causal), host.variants_of("d", {}), "sm_90a")
    assert [(long.min_m, long.min_n) for long in both.longs] == [mn for mn, _ in longs] and len(both.fns_long) == len(longs)
    for (min_m, min_n), fn in zip([mn for mn, _ in longs], both.fns_long):
        assert both.for_shape(min_m, min_n) is fn  # the first that serves
    assert both.for_shape(16384 + 9000, 16384 + 9000) is both.fn_long
    # a short side below every long kernel's is the default kernel's: m below min_m, or n below min_n
    low_m, low_n = min(mn[0] for mn, _ in longs), min(mn[1] for mn, _ in longs)
    assert (low_m == 0 or both.for_shape(low_m - 1, 16384) is both.fn) and (low_n == 0 or both.for_shape(16384, low_n - 1) is both.fn)
    names = [k.name for k in state.kernels]
    assert len(names) == 1 + len(longs) and f"FmhaForward_{default}_" in names[0], names
    assert all(f"FmhaForward_{tile}_" in name for (_, tile), name in zip(longs, names[1:])), names
    # the probes are the default build's alone: the same keys and layouts as its tile chosen by itself
    with capture("d") as short_probes, tracing("d", "sm_90a"):
        alone = {"consumers": str(int(default.split("x")[0]) // geometry.WG_ROWS)}
        short = stage.compile(_params(d=d, causal=causal), host.variants_of("d", alone), "sm_90a")
    assert short.fn_long is None and short.longs == () and short.for_shape(8192, 8192) is short.fn
    assert [(r["key"], r["layout"]) for r in with_keys(list(both_probes))] == [
        (r["key"], r["layout"]) for r in with_keys(list(short_probes))
    ]


def _fake_fns(longs=()):
    calls = []

    def make(name):
        def fn(q, k, *rest):
            calls.append((name, q.shape[1], k.shape[1]))
        return fn

    fns = {"fn": (make("fn"), {})}
    compiled = type("C", (), {"longs": longs})()
    for name in export_op.LONG_PIECES[:len(longs)]:
        fns[name] = (make(name), export_op.piece_info(name, None, compiled))
    return fns, calls


def _launch_each(fns, shapes):
    for m, n in shapes:
        q = torch.empty(1, m, 2, 64, dtype=torch.bfloat16)
        k = torch.empty(1, n, 2, 64, dtype=torch.bfloat16)
        o, lse = export_op.launch(fns, q, k, k, causal=True)
        assert o.shape == q.shape and lse.shape == (1, 2, m)


def test_the_exported_op_launches_the_first_long_kernel_that_serves_from_min_m_rows_and_min_n_keys_on():
    dev = torch.device("cpu")
    export_op._per_stream[(dev, 0)] = (torch.zeros(2, dtype=torch.int32), 132, torch.empty(1))  # no CUDA here
    try:
        fns, calls = _fake_fns((geometry.LongKernel(consumers=2, min_m=4096, min_n=1024),))
        assert fns["fn_long"][1] == {"min_m": 4096, "min_n": 1024} and export_op.piece_info("fn", None, None) == {}
        shapes = ((1, 2048), (4095, 2048), (4096, 2048), (9000, 2048), (9000, 1023), (9000, 1024))
        _launch_each(fns, shapes)
        picked = ["fn", "fn", "fn_long", "fn_long", "fn", "fn_long"]
        assert calls == [(name, m, n) for name, (m, n) in zip(picked, shapes)]
        # two, as non-causal d = 128 builds them: 192-row tiles from m = n = 8192, else 176 keys from n = 8192
        fns, calls = _fake_fns((geometry.LongKernel(consumers=3, min_m=8192, min_n=8192), geometry.LongKernel(consumers=2, min_n=8192)))
        assert [fns[name][1] for name in export_op.LONG_PIECES] == [{"min_m": 8192, "min_n": 8192}, {"min_m": 0, "min_n": 8192}]
        shapes = ((8192, 8191), (8191, 8192), (8192, 8192), (1, 16384), (16384, 16384))
        _launch_each(fns, shapes)
        picked = ["fn", "fn_long2", "fn_long", "fn_long2", "fn_long"]
        assert calls == [(name, m, n) for name, (m, n) in zip(picked, shapes)]
        only, calls = _fake_fns()  # every other configuration: fn for every m and n
        k = torch.empty(1, 8192, 2, 64, dtype=torch.bfloat16)
        export_op.launch(only, torch.empty(1, 8192, 2, 64, dtype=torch.bfloat16), k, k)
        assert calls == [("fn", 8192, 8192)]
    finally:
        export_op._per_stream.pop((dev, 0), None)
        export_op._lse_like.clear()


@pytest.mark.parametrize(
    "d, causal, windowed, m, n, given, expected, note",
    [
        # the long kernel where it serves m and n, as the launch picks it
        (128, False, False, 8192, 8192, {}, {"consumers": "3", "o_staging": "q", "p_operand": "smem"}, ""),
        (128, False, False, 4096, 8192, {}, {"consumers": "2", "kv_tile": "176", "o_staging": "q"}, ""),
        (128, False, False, 4096, 4096, {}, {}, ""),
        (64, True, False, 4096, 4096, {}, {"consumers": "3"}, ""),
        (64, True, False, 1024, 1024, {}, {}, ""),
        (64, False, False, 8192, 8192, {}, {"consumers": "3", "persistent": "on"}, ""),
        (64, False, False, 4096, 8192, {}, {}, ""),  # dynamic, the short tile shared
        # a default that is not persistent (d = 256 with a window): its persistent twin, said so
        (256, False, True, 1024, 1024, {}, {"persistent": "on"}, "persistent=on"),
        (256, False, True, 8192, 8192, {}, {"persistent": "on"}, "persistent=on"),
        (256, False, False, 8192, 8192, {}, {}, ""),  # dynamic without a window since round 21
        (96, False, False, 8192, 8192, {}, {}, ""),  # dynamic since round 17: persistent
        (96, True, False, 8192, 8192, {}, {"consumers": "3", "kv_tile": "144", "o_staging": "q"}, ""),  # dynamic: persistent
        # an explicit choice of the user's stays
        (128, False, False, 8192, 8192, {"kv_tile": "128"}, {"kv_tile": "128"}, ""),
        (96, False, False, 8192, 8192, {"persistent": "dynamic"}, {"persistent": "dynamic"}, ""),
    ],
)
def test_the_trace_follows_the_kernel_a_launch_runs_and_makes_it_persistent(d, causal, windowed, m, n, given, expected, note):
    """`wb run --trace` and benchmarks/trace_tiles.py trace the kernel a launch of m rows and n
    keys runs (a trace of d = 128 s = 8192 once showed the 128 x 128 kernel, not the long
    one the bench times), and its persistent twin where the default is one CTA per tile: the
    trace buffer has room for one grid of persistent CTAs, and d = 96's grid of 1806 CTAs
    (one per tile, its default then) wrote past it (an illegal address on an H100)."""
    from stages.fmha import stage_d_fmha as sd

    chosen, said = sd.traced_variants(d, causal, windowed, given, m, n)
    assert chosen == expected
    assert said.startswith(note) and bool(said) == bool(note)


def test_the_trace_makes_d256_persistent_wherever_its_kernel_would_run_one_cta_per_tile():
    """d = 256 non-causal is dynamic only where the launch is plain (round 21): with V narrower
    than K (dv = 128) its default is still one CTA per tile, so the trace must get the
    persistent twin there, as FmhaForward would build the kernel (a grid of one CTA per tile
    writes past the trace buffer)."""
    from stages.fmha import stage_d_fmha as sd
    from stages.fmha.stage_d_fmha import StageD
    from workbench.kernels.stage import Params

    chosen, said = sd.traced_variants(256, False, False, {}, 4096, 4096, dv=128)
    assert chosen == {"persistent": "on"} and said.startswith("persistent=on")
    p = Params(dict(m=100, n=100, d=256, dv=128, dtype="bf16", batch=1, heads=2, kv_heads=1, causal=False))
    assert not StageD().make_kernel(p, {}).persistent and StageD().make_kernel(p, chosen).persistent
    assert sd.traced_variants(256, False, False, {}, 4096, 4096, dv=256) == ({}, "")


def test_the_trace_refuses_persistent_off_in_one_line():
    from stages.fmha import stage_d_fmha as sd
    from workbench.errors import UserError

    with pytest.raises(UserError, match="persistent=off is not traced"):
        sd.traced_variants(128, False, False, {"persistent": "off"}, 4096, 4096)


@pytest.mark.parametrize(
    "d, causal, n, expected, note",
    [
        # d = 128 non-causal splits its last wave: the trace buffer has no room for the split's workspace
        (128, False, 4096, {"split_tail": "off"}, "split_tail=off: not traced"),
        # d = 64 non-causal shares a short last tile between its WGs (not stamped per tile); whole,
        # its tail would split
        (64, False, 1000, {"short_tile": "whole", "split_tail": "off"}, "short_tile=whole split_tail=off: not traced"),
        (128, True, 4096, {}, ""),  # causal does neither: nothing to say
    ],
)
def test_the_trace_turns_off_what_its_build_cannot_do_and_says_so(d, causal, n, expected, note):
    """The traced build never splits the KV tail nor shares a short tile (FmhaForward with
    trace=True). Where the untraced build would, a trace's bits were compared with a
    differently summed build: an H100 trace at 2048 work tiles reported 441993 O elements
    differing (round 25). Such a trace now runs with them off, says so, and is compared
    with an untraced twin of its own variants."""
    from stages.fmha.stage_d_fmha import StageD
    from workbench.kernels.stage import Params

    stage = StageD()
    p = Params(dict(m=n, n=n, d=d, dv=d, dtype="bf16", batch=4, heads=16, kv_heads=16, causal=causal))
    chosen, said = stage.without_untraceable(p, {"q_buffers": "2"} if d == 128 else {})
    assert {k: v for k, v in chosen.items() if k != "q_buffers"} == expected and said == note
    plain, traced = stage.make_kernel(p, chosen), stage.make_kernel(p, chosen, trace=True)
    assert (plain.split_tail, plain.short_split) == (traced.split_tail, traced.short_split)



def test_the_exported_op_gives_each_stream_its_own_scheduler_counters(monkeypatch):
    # two launches at once on two streams (two micro-batches overlapped) sharing the dynamic
    # scheduler's counters would take each other's work tiles
    dev = torch.device("cpu")
    stream = [7]
    monkeypatch.setattr(export_op, "_stream_of", lambda d: stream[0])
    seen = []
    fns = {"fn": (lambda q, k, v, o, lse, counters, *rest: seen.append(counters), {})}
    q = torch.empty(1, 64, 2, 64, dtype=torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"multi_processor_count": 132}))
    try:
        export_op.launch(fns, q, q, q)
        export_op.launch(fns, q, q, q)
        stream[0] = 9
        export_op.launch(fns, q, q, q)
        export_op.launch(fns, q[:, :32], q, q)  # another shape on stream 9: its counters still
        assert seen[0] is seen[1] and seen[2] is seen[3] and seen[0] is not seen[2]
    finally:
        for s in (7, 9):
            export_op._per_stream.pop((dev, s), None)
        export_op._lse_like.clear()


@pytest.mark.parametrize("d,causal,left", [(64, True, []), (64, False, []), (96, True, []), (128, False, [(2, 176)])])
def test_a_softcap_builds_no_long_kernel_of_three_consumer_wgs(d, causal, left):
    """With a softcap the 3-WG long kernels spilled at 160 registers (d = 64 causal 112 B, its
    round-robin twin 16 B, d = 96 causal 28 B, d = 128's 192-row kernel 24 B): none is built,
    d = 128 keeps its 176-key kernel, and the launched tile at m = n = 8192 is a 2-WG one."""
    longs = geometry.long_kernels(d, causal, False, False, False, softcap=True)
    assert [(long.consumers, long.kv_tile) for long in longs] == left
    assert any(long.consumers == 3 for long in geometry.long_kernels(d, causal, False, False, False))  # without: there
    assert geometry.launched(d, 8192, n=8192, causal=causal, softcap=True).consumers == 2
    # d = 64's own tile takes 2 WGs too (3 spilled 12 B); d = 96 non-causal keeps its 192 x 144 (P in shared memory fits)
    assert geometry.geometry(64, False, softcap=True).consumers == 2
    assert geometry.geometry(96, False, softcap=True) == geometry.geometry(96, False)
