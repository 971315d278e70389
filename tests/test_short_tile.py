"""Stage D's short tile shared by the consumer WGs (``short_tile=split``,
stages/fmha/short_tile.py), on the CPU: which tiles are short, that the WGs' visits of one
cover the tile's KV tiles once each and put each WG in a ring slot of its own whatever slot
the tile starts at, and which configurations the variant refuses. On a GPU:
tests/test_short_tile_gpu.py."""

import os

import pytest

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

from stages.fmha import geometry, short_tile  # noqa: E402


def test_a_tile_is_short_when_its_real_rows_fit_one_wg():
    for m in range(1, 2000):
        last = (m - 1) // 192
        rows = m - last * 192  # real rows of the last 192-row tile
        assert short_tile.is_short_rows(m, 192, 64) == (rows <= 64), m
        # the kernel's test on each work tile: only the last one can be short
        assert [short_tile.is_short(b, m, 192, 64) for b in range(last + 1)] == [False] * last + [rows <= 64], m
    assert [m for m in (1024, 4096, 8192, 1000, 17) if short_tile.is_short_rows(m, 192, 64)] == [1024, 4096, 1000, 17]
    assert not short_tile.is_short_rows(17, 64, 64)  # one WG a tile: nothing to share


@pytest.mark.parametrize("n_steps", range(1, 12))
def test_the_wgs_visit_each_kv_tile_once_each_wg_in_its_own_ring_slot(n_steps):
    wgs = stages = 3
    for start in range(stages):  # the ring slot the tile's first visit lands in
        seen = []
        slots = {}
        for wg in range(wgs):
            own = [wg + t * wgs for t in range(short_tile.visits(n_steps, wg, wgs))]
            seen += own
            slots[wg] = {(start + i) % stages for i in own}
            assert len(slots[wg]) <= 1, (wg, own)
        assert sorted(seen) == list(range(n_steps))
        used = [next(iter(s)) for s in slots.values() if s]
        assert len(used) == len(set(used)), "two WGs would wait on one slot's fills"


def test_the_scratch_holds_an_image_per_thread_of_the_other_wgs():
    assert short_tile.image_floats(64) == 32 + 4
    assert short_tile.scratch_floats(3, 64) * 4 == 36 * 1024
    # d = 64's shared memory with the scratch still fits a CTA
    assert geometry.smem_bytes(64, 128, 3, 3, 1, False) + 4 * short_tile.scratch_floats(3, 64) <= geometry.SMEM_CAPACITY
