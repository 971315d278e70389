"""Stage D's trace buffer (``trace=True``): its layout, and its decoding into tile timeline
slices (workbench/run/timeline.py).

Layout (int32 words): the two words of the dynamic tile scheduler; then per CTA, per lane
(0 the producer, 1.. the consumer WGs; TRACE_LANES of them) and per work tile (the CTA's
first TRACE_TILES), TRACE_EVENTS clock() stamps; then each CTA's (globaltimer, clock) at
its start and its end. A tile's stamps are all zero when the lane never reached it.
"""

from __future__ import annotations

from workbench.run.timeline import Clock, Slice, StampLayout, decode as decode_stamps

TRACE_EVENTS = 13  # stamps per lane and work tile
#: the stamps of saves made before the steady step's own (benchmarks/trace_tiles.py --json
#: without an "events" key, tests/data/trace_stage_d_h200_8ctas.json)
EVENTS_BEFORE_STEP_STAMPS = 8
TRACE_TILES = 32  # work tiles stamped per CTA (its first ones)
TRACE_LANES = 4  # the producer and up to 3 consumer warpgroups
#: the steady step stamped inside (visit index i of ``overlap_tile``: the third KV tile a
#: consumer visits; tiles of fewer visits leave those stamps zero)
TRACED_STEP = 2


def layout(events: int = TRACE_EVENTS) -> StampLayout:
    """The buffer's layout with ``events`` stamps per lane and tile (words 0, 1 are the
    dynamic tile scheduler's)."""
    return StampLayout(slots=TRACE_LANES, tiles=TRACE_TILES, events=events, base=2)


LAYOUT = layout()


def trace_word(cta, wg, j, event=0):
    """Index in the trace buffer of ``event`` of WG ``wg``'s ``j``-th work tile on CTA ``cta``
    (the producer is WG 0); plain ints on the host, DSL integers in the kernel."""
    return LAYOUT.word(cta, wg, j, event)


def trace_clock_word(ctas, cta):
    """Index of CTA ``cta``'s start (globaltimer, clock) pair, its end pair right after;
    ``trace_clock_word(ctas, ctas)`` is the buffer's length for a grid of ``ctas``."""
    return LAYOUT.clock_word(ctas, cta)

#: consumer WG stamps 0..7: tile start, Q ready, first S done, first P ready, last step done,
#: last PV done, LSE stored, O store issued; 8..12 inside steady step TRACED_STEP: its start,
#: S ready, softmax done, the previous tile's PV done, P handed over and O rescaled (the step's
#: chain S -> max -> exp -> P -> PV, link by link). The last part ends the tile.
CONSUMER_PARTS = [
    ("Q wait", 0, 1),
    ("first S (issue + wait)", 1, 2),
    ("first softmax + P", 2, 3),
    ("steady steps (all)", 3, 4),
    (f"step {TRACED_STEP}: K wait, MMA issue, S", 8, 9),
    (f"step {TRACED_STEP}: softmax", 9, 10),
    (f"step {TRACED_STEP}: previous PV wait", 10, 11),
    (f"step {TRACED_STEP}: P hand-over + O rescale", 11, 12),
    ("last PV", 4, 5),
    ("finish + LSE stores", 5, 6),
    ("O store (smem + TMA issue)", 6, 7),
]
#: producer stamps 0..3: tile start, first K slot acquired, Q issued, last V issued
PRODUCER_PARTS = [("first K slot", 0, 1), ("Q slots + Q issue", 1, 2), ("K/V ring (rest)", 2, 3)]


def lanes(consumer_wgs: int) -> list[str]:
    return ["producer"] + [f"WG{w}" for w in range(1, consumer_wgs + 1)]


def decode(
    words: list[int], ctas: int, consumer_wgs: int, events: int = TRACE_EVENTS
) -> tuple[list[Slice], dict[int, Clock]]:
    """The slices (each lane's tiles and their phases) and each CTA's clock of one traced
    launch; ``events``: the stamps per lane and tile the buffer was written with (an older
    save: EVENTS_BEFORE_STEP_STAMPS, without the steady step's phases)."""
    consumer = [part for part in CONSUMER_PARTS if part[2] < events]
    parts = [PRODUCER_PARTS] + [consumer] * consumer_wgs
    return decode_stamps(words, ctas, layout(events), list(zip(lanes(consumer_wgs), parts)))
