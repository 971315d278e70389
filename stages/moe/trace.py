"""The grouped GEMM's trace buffer (stage C, ``trace=True``; wb run --trace): its layout and
the phases its stamps bound (workbench/run/timeline.py decodes and draws them).

Lanes: the producer warpgroup (its thread 0, in the TMA warp) and the consumer warpgroups
(64 rows of the tile each). Stamps per lane and work tile (the CTA's first TRACE_TILES):

- producer: 0 tile start, 1 first stage acquired (the ring had a free slot), 2 the tile's
  last k slab issued;
- consumer: 0 tile start, 1 first k slab landed (consumer_wait returned), 2 the mainloop's
  MMAs done, 3 the epilogue's stores issued. A warpgroup with no rows in a short last tile
  only drains the ring: it has no stamp 1, and its tile has no wait/mainloop phases.
"""

from __future__ import annotations

from workbench.run.timeline import Clock, Slice, StampLayout, decode as decode_stamps

TRACE_TILES = 32  # work tiles stamped per CTA (its first ones)
TRACE_EVENTS = 4  # stamps per lane and work tile
TRACE_SLOTS = 3  # the producer and up to 2 consumer warpgroups (tile_m <= 128)
LAYOUT = StampLayout(slots=TRACE_SLOTS, tiles=TRACE_TILES, events=TRACE_EVENTS)

PRODUCER_PARTS = [("wait for a free stage", 0, 1), ("load the k slabs", 1, 2)]
CONSUMER_PARTS = [("wait for the first slab", 0, 1), ("mainloop (MMA over k)", 1, 2), ("epilogue (activation + stores)", 2, 3)]


def no_stamp(event, when=True):
    """The stamp of an untraced kernel: nothing (no code at all)."""


def lanes(consumer_wgs: int) -> list[str]:
    return ["producer"] + [f"WG{w}" for w in range(1, consumer_wgs + 1)]


def decode(words: list[int], ctas: int, consumer_wgs: int) -> tuple[list[Slice], dict[int, Clock]]:
    """The slices (each lane's tiles and their phases) and each CTA's clock of one traced launch."""
    parts = [PRODUCER_PARTS] + [CONSUMER_PARTS] * consumer_wgs
    return decode_stamps(words, ctas, LAYOUT, list(zip(lanes(consumer_wgs), parts)))
