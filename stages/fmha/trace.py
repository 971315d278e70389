"""Stage D's trace buffer (``trace=True``): its layout, and its decoding into tile timeline
slices (workbench/run/timeline.py).

Layout (int32 words): the two words of the dynamic tile scheduler; then per CTA, per lane
(0 the producer, 1.. the consumer WGs; TRACE_LANES of them) and per work tile (the CTA's
first TRACE_TILES), TRACE_EVENTS clock() stamps; then each CTA's (globaltimer, clock) at
its start and its end. A tile's stamps are all zero when the lane never reached it.
"""

from __future__ import annotations

from workbench.run.timeline import Clock, Slice

TRACE_EVENTS = 8  # stamps per lane and work tile
TRACE_TILES = 32  # work tiles stamped per CTA (its first ones)
TRACE_LANES = 4  # the producer and up to 3 consumer warpgroups


def trace_word(cta, wg, j, event=0):
    """Index in the trace buffer of ``event`` of WG ``wg``'s ``j``-th work tile on CTA ``cta``
    (the producer is WG 0); plain ints on the host, DSL integers in the kernel."""
    return 2 + ((cta * TRACE_LANES + wg) * TRACE_TILES + j) * TRACE_EVENTS + event


def trace_clock_word(ctas, cta):
    """Index of CTA ``cta``'s start (globaltimer, clock) pair, its end pair right after;
    ``trace_clock_word(ctas, ctas)`` is the buffer's length for a grid of ``ctas``."""
    return trace_word(ctas, 0, 0) + 4 * cta

#: consumer WG stamps 0..7: tile start, Q ready, first S done, first P ready, last step done,
#: last PV done, LSE stored, O store issued
CONSUMER_PARTS = [
    ("Q wait", 0, 1),
    ("first S (issue + wait)", 1, 2),
    ("first softmax + P", 2, 3),
    ("steady steps (all)", 3, 4),
    ("last PV", 4, 5),
    ("finish + LSE stores", 5, 6),
    ("O store (smem + TMA issue)", 6, 7),
]
#: producer stamps 0..3: tile start, first K slot acquired, Q issued, last V issued
PRODUCER_PARTS = [("first K slot", 0, 1), ("Q slots + Q issue", 1, 2), ("K/V ring (rest)", 2, 3)]


def lanes(consumer_wgs: int) -> list[str]:
    return ["producer"] + [f"WG{w}" for w in range(1, consumer_wgs + 1)]


def decode(words: list[int], ctas: int, consumer_wgs: int) -> tuple[list[Slice], dict[int, Clock]]:
    """The slices (each lane's tiles and their phases) and each CTA's clock of one traced launch."""
    slices: list[Slice] = []
    clocks: dict[int, Clock] = {}
    for cta in range(ctas):
        base = trace_clock_word(ctas, cta)
        gt0, ck0, gt1, ck1 = (w % 2**32 for w in words[base: base + 4])
        if not (gt0 or gt1):
            continue  # a CTA of the grid that never ran (a smaller launch than the buffer)
        clocks[cta] = Clock(gt0, ck0, gt1, ck1)
        for wg, lane in enumerate(lanes(consumer_wgs)):
            parts = PRODUCER_PARTS if wg == 0 else CONSUMER_PARTS
            last = parts[-1][2]
            for j in range(TRACE_TILES):
                at = trace_word(cta, wg, j)
                ev = [w % 2**32 for w in words[at: at + TRACE_EVENTS]]
                if not any(ev[: last + 1]):
                    continue
                slices.append(Slice(cta, lane, f"tile {j}", ev[0], ev[last], kind="tile", tile=j))
                slices += [Slice(cta, lane, name, ev[a], ev[b], tile=j) for name, a, b in parts]
    return slices, clocks
