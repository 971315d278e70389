"""The split-KV tail's plan on the CPU (stages/fmha/split_kv.py; the kernel's own choice of
pieces and its result are checked on a GPU by tests/test_split_kv_gpu.py):

* the cost model cuts only where the last wave gains: d = 128 s = 4096's 2048 tiles on 132 CTAs
  in 3 (halves would still take a whole tile's time), s = 1024 not at all, batch 1 with 5 heads
  (160 tiles) in 4, tiles that fill whole waves or one partial wave never;
* a piece visits at least one KV tile (k <= n_blocks), and a workspace too short means no cut;
* the host sizes the workspace for exactly the pieces the kernel will cut, with the long
  kernel's KV tile where that kernel serves the shape."""

from types import SimpleNamespace

import pytest

from stages.fmha import split_kv
from stages.fmha.geometry import LongKernel

SLOT_D128 = split_kv.slot_words(64, 2)  # a 64-row WG's 64 fp32 of O per thread, two rows
BIG = 1 << 62


@pytest.mark.parametrize(
    "tiles,grid,n_blocks,k",
    [
        (2048, 132, 32, 3),  # d = 128 s = 4096: 68 tiles left; halves make 136 > 132 pieces
        (2048, 132, 47, 3),  # s = 8192 on the 176-key kernel
        (2048, 132, 8, 1),  # s = 1024: a piece's fixed cost outweighs the wave it saves
        (160, 132, 32, 4),  # batch 1, 5 heads: 28 tiles left, 112 pieces fit one wave
        (192, 132, 32, 2),  # 6 heads: 60 left, halves fit one wave
        (160, 132, 3, 3),  # at most one piece per KV tile
        (160, 132, 1, 1),
        (264, 132, 32, 1),  # whole waves
        (100, 132, 32, 1),  # one partial wave: every tile already has its CTA
    ],
)
def test_the_plan_cuts_only_where_the_last_wave_gains(tiles, grid, n_blocks, k):
    assert split_kv.pieces_for(tiles, grid, n_blocks, BIG, 2, SLOT_D128) == k
    if k > 1:
        tail = split_kv.tail_of(tiles, grid)
        assert split_kv.split_cost(tail, k, grid, n_blocks) < split_kv.whole_cost(n_blocks)


def test_split_tail_few_cuts_only_launches_of_few_waves():
    # d = 64 s = 1024: 3072 192-row tiles on 132 CTAs (23 waves, 36 left) of 8 KV tiles each: the
    # model cuts them in 3, which lost 3 % on an H100; under `few` that launch cuts nothing and
    # asks for no workspace, while batch 1 with 7 heads (154 tiles, 1.2 waves) cuts as before
    slot_d64 = split_kv.slot_words(32, 2)
    few = split_kv.FEW_WAVES
    assert split_kv.pieces_for(3072, 132, 8, BIG, 3, slot_d64) == 3
    assert split_kv.pieces_for(3072, 132, 8, BIG, 3, slot_d64, few) == 1
    assert split_kv.workspace_words(3072, 132, 8, 3, slot_d64, few) == split_kv.COUNTERS
    assert split_kv.pieces_for(154, 132, 32, BIG, 3, slot_d64, few) == split_kv.pieces_for(154, 132, 32, BIG, 3, slot_d64) == 4
    # the limit: the same 36-tile tail after FEW_WAVES - 1 whole waves still cuts, after
    # FEW_WAVES not
    below, at = (few - 1) * 132 + 36, few * 132 + 36
    assert split_kv.pieces_for(below, 132, 32, BIG, 3, slot_d64, few) == split_kv.pieces_for(below, 132, 32, BIG, 3, slot_d64) > 1
    assert split_kv.pieces_for(at, 132, 32, BIG, 3, slot_d64) > 1 and split_kv.pieces_for(at, 132, 32, BIG, 3, slot_d64, few) == 1


def test_a_short_workspace_means_no_cut():
    need = split_kv.workspace_words(2048, 132, 32, 2, SLOT_D128)
    assert split_kv.pieces_for(2048, 132, 32, need, 2, SLOT_D128) == 3
    # one word short of 3 pieces: 2 would fit but gain nothing (two rounds of halves)
    assert split_kv.pieces_for(2048, 132, 32, need - 1, 2, SLOT_D128) == 1
    assert split_kv.pieces_for(2048, 132, 32, split_kv.COUNTERS, 2, SLOT_D128) == 1  # the exported op's (2,) buffer


def test_the_workspace_holds_the_counts_then_a_slot_per_tail_tile_piece_and_wg():
    tail, k, wgs = 68, 3, 2
    words = split_kv.workspace_words(2048, 132, 32, wgs, SLOT_D128)
    base = split_kv.PARTIALS_BASE
    assert base % 4 == 0 and base >= split_kv.COUNTERS + tail * wgs
    assert words == base + tail * k * wgs * SLOT_D128
    assert words * 4 / 2**20 == pytest.approx(13.6, abs=0.1)  # MiB at d = 128 s = 4096
    assert split_kv.workspace_words(2048, 132, 8, wgs, SLOT_D128) == split_kv.COUNTERS  # nothing cut


def test_no_launch_counts_on_another_launchs_stale_partials():
    # the buffer is shared and only grows: d = 128 s = 4096 (68 tail tiles, 2 WGs) leaves its
    # partials behind, then d = 96 s = 8192 (90 tail tiles, 3 WGs, 192-row tiles) counts in
    # 270 words. Every count a launch can use lies below every launch's first slot.
    slot_d96 = split_kv.slot_words(48, 2)
    for tiles, n_blocks, wgs, slot in ((2048, 32, 2, SLOT_D128), (43 * 42, 64, 3, slot_d96)):
        assert split_kv.pieces_for(tiles, 132, n_blocks, BIG, wgs, slot) > 1
        tail = split_kv.tail_of(tiles, 132)
        assert split_kv.COUNTERS + tail * wgs <= split_kv.PARTIALS_BASE
    # a tail whose counts fill the words reserved for them still cuts; one tile more, nothing
    tail = split_kv.MAX_COUNTS // 3
    grid = 5 * tail
    assert split_kv.pieces_for(grid + tail, grid, 64, BIG, 3, slot_d96) == 4
    assert split_kv.pieces_for(grid + tail + 1, grid, 64, BIG, 3, slot_d96) == 1


def test_the_host_sizes_for_the_kernel_it_launches():
    from stages.fmha.stage_d_fmha import StageD, split_words
    from workbench.kernels.stage import Params

    p = Params(dict(m=4096, n=4096, d=128, dtype="bf16", batch=4, heads=16, kv_heads=16, causal=False))
    assert StageD().make_kernel(p, {}).split_slot_words() == SLOT_D128  # what compile stores as split_slot

    # non-causal d = 128's kernels: 128 x 128, 192 x 128 from m = n = 8192, 128 x 176 from n = 8192
    from stages.fmha.host import Compiled

    longs = (LongKernel(min_m=8192, min_n=8192, consumers=3, o_staging="q", p_operand="smem"),
             LongKernel(min_n=8192, consumers=2, kv_tile=176, o_staging="q"))
    compiled = Compiled(fn=None, d=128, split_tail=True, tile_m=128, tile_n=128, split_slot=SLOT_D128, longs=longs, fns_long=(1, 2))
    q = SimpleNamespace(shape=(4, 4096, 16, 128))
    assert split_words(compiled, q, 4096, 132) == split_kv.workspace_words(2048, 132, 32, 2, SLOT_D128)
    assert split_words(compiled, q, 8192, 132) == split_kv.workspace_words(2048, 132, 47, 2, SLOT_D128)  # 176 keys
    q8 = SimpleNamespace(shape=(2, 8192, 16, 128))
    assert split_words(compiled, q8, 8192, 132) == split_kv.workspace_words(43 * 32, 132, 64, 3, SLOT_D128)  # 192 rows, 3 WGs
    assert split_words(SimpleNamespace(split_tail=False), q, 4096, 132) == split_kv.COUNTERS


def test_the_counter_buffer_is_per_stream_and_a_grown_one_keeps_the_old_alive(monkeypatch):
    torch = pytest.importorskip("torch")
    from stages.fmha import stage_d_fmha as sd

    stream = [11]
    monkeypatch.setattr(sd, "_stream_handle", lambda device: stream[0])
    monkeypatch.setattr(sd, "_tile_counters", {})
    monkeypatch.setattr(sd, "_retired_counters", [])
    dev = torch.device("cpu")
    a = sd.tile_counter(dev)
    assert sd.tile_counter(dev) is a and a.numel() == split_kv.COUNTERS
    stream[0] = 12
    b = sd.tile_counter(dev, 100)
    assert b is not a and b.numel() == 100 and int(b.abs().sum()) == 0
    grown = sd.tile_counter(dev, 101)  # a graph captured with b still names b: b stays allocated
    assert grown.numel() == 200 and len(sd._retired_counters) == 1 and sd._retired_counters[0] is b
    assert sd.tile_counter(dev, 150) is grown
    stream[0] = 11
    assert sd.tile_counter(dev) is a


@pytest.mark.parametrize("wgs, slot", [(2, SLOT_D128), (3, split_kv.slot_words(48, 2))])  # d = 128, d = 96
def test_the_exported_ops_buffer_lets_every_launch_cut_as_it_would_with_room_to_spare(wgs, slot):
    pytest.importorskip("torch")
    from stages.fmha import export_op
    from stages.fmha.host import Compiled

    long = LongKernel(min_n=8192, consumers=wgs, kv_tile=176, o_staging="q")
    compiled = Compiled(fn=None, d=128, split_tail=True, split_slot=slot, tile_m=64 * wgs, longs=(long,), fns_long=(None,))
    info = export_op.piece_info("fn", None, compiled)  # what the manifest keeps per piece
    assert info == split_kv.room(wgs, slot)
    assert export_op.piece_info("fn_long", None, compiled) == {"min_m": 0, "min_n": 8192, **info}
    fns = {"fn": (None, info)}
    for sms in (66, 114, 132):
        words = export_op.workspace_words(fns, sms)  # one buffer per stream, whatever the shape
        assert words == split_kv.workspace_bound(sms, wgs, slot)
        for tiles in range(1, 12 * sms, 7):
            for n_blocks in (1, 2, 3, 8, 32, 64):
                grid = min(tiles, sms)
                assert split_kv.workspace_words(tiles, grid, n_blocks, wgs, slot) <= words
                assert split_kv.pieces_for(tiles, grid, n_blocks, words, wgs, slot) == split_kv.pieces_for(tiles, grid, n_blocks, BIG, wgs, slot)
    # a kernel that never cuts (or a package exported before the op cut): the two counters
    assert export_op.piece_info("fn", None, Compiled(fn=None, d=128)) == {}
    assert export_op.workspace_words({"fn": (None, {})}, 132) == split_kv.COUNTERS


def test_the_exported_op_grows_a_streams_buffer_once_for_a_configuration_that_cuts(monkeypatch):
    torch = pytest.importorskip("torch")
    from stages.fmha import export_op

    dev = torch.device("cpu")  # no CUDA here: the stream's entry is given, as the op makes it
    monkeypatch.setattr(export_op, "_per_stream", {(dev, 0): (torch.zeros(2, dtype=torch.int32), 132, torch.empty(1))})
    monkeypatch.setattr(export_op, "_lse_like", {})
    monkeypatch.setattr(export_op, "_retired", [])
    seen = []

    def fn(q, k, v, o, lse, counters, sms, *rest):
        seen.append(counters)

    plain, cutting = {"fn": (fn, {})}, {"fn": (fn, split_kv.room(2, SLOT_D128))}
    q, q2 = torch.empty(1, 256, 2, 128, dtype=torch.bfloat16), torch.empty(1, 512, 2, 128, dtype=torch.bfloat16)
    export_op.launch(plain, q, q, q)
    export_op.launch(cutting, q, q, q)  # the same shape: its own state, not the plain one's buffer
    export_op.launch(cutting, q2, q2, q2)
    export_op.launch(plain, q2, q2, q2)
    assert seen[0].numel() == split_kv.COUNTERS
    assert seen[1].numel() == split_kv.workspace_bound(132, 2, SLOT_D128) and int(seen[1].abs().sum()) == 0
    assert seen[2] is seen[1] and seen[3] is seen[1]  # once per stream, not per shape
    assert export_op._retired == [seen[0]]  # a CUDA graph may have captured the replaced one
