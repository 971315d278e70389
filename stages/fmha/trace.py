"""Stage D's trace buffer (``trace=True``) -> tile timeline slices (workbench/run/timeline.py).

The buffer layout is stage_d_fmha's (``trace_word``, ``trace_clock_word``): per CTA, per lane
(WG 0 the producer, WG 1.. the consumers) and per work tile (the CTA's first TRACE_TILES),
TRACE_EVENTS clock() stamps; after them, each CTA's (globaltimer, clock) at start and end.
A tile's stamps are all zero when the lane never reached it.
"""

from __future__ import annotations

from workbench.run.timeline import Clock, Slice

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
    from stages.fmha.stage_d_fmha import TRACE_EVENTS, TRACE_TILES, trace_clock_word, trace_word

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
