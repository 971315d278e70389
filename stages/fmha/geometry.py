"""Tile geometry of the FMHA kernels per head dim: KV tile width, K/V ring depth, consumer
warpgroups, where O is staged. Plain Python (no DSL, no torch): the kernels, the fixtures
and the mutants all read it, so a fixture that builds a per-KV-tile pattern or a mutant
that simulates the kernel tile by tile uses the tile width the kernel uses for that d.

Shared memory of one CTA (sm_90: 227 KiB), elements of 2 bytes, ``tile_m = 64 x consumers``:
Q ``tile_m x d`` (x 2 with ``q_buffers=2``), K and V ``tile_n x d`` per ring stage each, and
the O staging tile ``tile_m x d`` unless it aliases Q (``o_in_q``: the epilogue writes O
into the WG's own Q slot, which is free once its last QK^T is done; the Q slot is released
to the producer only after the O store has read it). Registers per consumer thread: O
d/2 fp32, S tile_n/2 fp32, P tile_n/4 32-bit.

| d   | tile_n | kv_stages | consumers (non-causal / causal) | O staged  | smem     |
|-----|--------|-----------|----------------------------------|-----------|----------|
| 64  | 128    | 3         | 3 / 2                            | own tile  | 147 / 131 KiB |
| 96  | 144 / 128 | 2 / 3  | 3 (P in smem) / 2                | in Q / own tile | 201 / 195 KiB |
| 128 | 128    | 2         | 2                                | own tile  | 195 KiB  |
| 192 | 112    | 2         | 2                                | in Q      | 218 KiB  |
| 192, dv <= 128 | 128 | 2   | 2                                | in Q      | 210 KiB  |
| 256 | 80     | 2         | 2                                | in Q      | 226 KiB  |

d = 64 and 128 are what measured fastest on an H200 (docs/perf-notes.md). d = 96, 192 and
256 were chosen on the CPU by fitting (shared memory, 0 spills in ``wb compile``) and are
verified on an H200 but only partly tuned (docs/fmha.md: 192 matches FA4, 256 and 96 trail
it by 1-4%): 96 causal is 128's shape with a third K/V stage (it fits, and at one CTA per SM
the extra stage costs nothing); 96 non-causal takes FlashAttention-4's 192 x 144 tile with P
through shared memory (``p_smem``: 3 WGs at 160 registers hold O 48 + S 72 but not P's 36
more) and O staged in Q, 2 stages (paged: 192 x 128, O in its own tile), +4-6% on an H200;
192 and 256 take FlashAttention-3's KV tile widths (112, 80; 128 for d = 192 with dv <= 128,
as FA3) with 2 stages, which fit only with O staged in Q's shared memory. 192-row Q tiles (3
consumer WGs at 160 registers) with P in registers are d = 64's alone: for d >= 96 the O
accumulator does not leave room for S and P. Three configurations launch a second kernel for
long queries (``long_kernels``): causal d = 64 with 3 WGs from m = 4096, causal d = 96 with
non-causal's 192 x 144 tile from m = 8192, and non-causal d = 128 with two: 192-row tiles (P
through shared memory, O in Q) from m = n = 8192, else FlashAttention-3's 128 x 176 tile, O in
Q, from n = 8192 keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: head dims stage D compiles (kernel.yaml's d choices for stage D)
HEAD_DIMS = (64, 96, 128, 192, 256)
#: shared memory of one CTA on sm_90 (bytes)
SMEM_CAPACITY = 227 * 1024
#: Q rows per consumer warpgroup
WG_ROWS = 64
#: bytes a CTA's shared memory holds beside the tiles (as ``wb compile`` reports them): 1 KiB
#: of static shared memory the DSL adds, the mbarriers and the dynamic scheduler's ring (under
#: 1 KiB) rounded up to 1 KiB, and, when they come first (O staged in its own tile), the
#: 1 KiB alignment of the first tile after them
SMEM_OVERHEAD = {False: 3 * 1024, True: 2 * 1024}

# d: (tile_n, kv_stages, o_in_q)
_TABLE = {
    64: (128, 3, False),
    96: (128, 3, False),
    128: (128, 2, False),
    192: (112, 2, True),
    256: (80, 2, True),
}


@dataclass(frozen=True)
class Geometry:
    """One head dim's tile shape (see the module docstring)."""

    d: int
    tile_n: int  # KV tile width (keys per tile)
    kv_stages: int  # K and V ring depth (auto)
    consumers: int  # consumer warpgroups of 64 Q rows (auto)
    o_in_q: bool  # O staged in the Q slots' shared memory
    p_smem: bool = False  # P to the PV MMA through shared memory (auto)

    @property
    def tile_m(self) -> int:
        return WG_ROWS * self.consumers


def geometry(d: int, causal: bool = False, capped_window: bool = False, dv: int | None = None,
             p_smem_ok: bool = True, paged: bool = False, softcap: bool = False) -> Geometry:
    """Stage D's tile geometry for head dim ``d`` (ValueError for a d it does not serve).
    ``capped_window``: a softcap and a sliding window together (their masked and capped
    steps do not fit 160 registers: d = 64 with 3 WGs spilled 28 B, so 2 WGs). ``softcap``:
    a softcap (its tanh on every logit does not fit 3 WGs' 160 registers with P in them:
    d = 64 spilled 12 B, 24 B varlen, so 2 WGs; d = 96's P in shared memory fits). ``dv``: V's
    head dim (default d); see ``_table_tile``. ``p_smem_ok``: False when P must stay in
    registers (the serial schedule, or p_operand=regs): d = 96 then takes 2 WGs. ``paged``:
    a paged KV cache, whose pages (16 ... 256 keys) need a 128-key tile at d = 96."""
    if d not in _TABLE:
        raise ValueError(f"d={d} is not a head dim of the FMHA kernel (it serves {', '.join(map(str, HEAD_DIMS))})")
    _, kv_stages, o_in_q = _TABLE[d]
    tile_n = _table_tile(d, dv)
    # 3 consumer WGs (192-row Q tiles) for d = 64 and 96 non-causal: causal d = 64 with 3
    # measured 25% slower at s = 1024 on an H100, equal at 8192; d = 96 fits them only with P
    # through shared memory (O 48 + S 64 + P 32 registers do not fit 160), +3-5% non-causal
    # and 1-2% slower causal on an H200 (docs/perf-notes.md, round 6)
    consumers = 3 if ((d == 64 and not softcap) or (d == 96 and p_smem_ok)) and not causal and not capped_window else 2
    p_smem = needs_p_smem(d, consumers)
    if p_smem and not paged:
        # FlashAttention-4's d = 96 tile, 192 x 144, fits beside P's tiles with O staged in Q:
        # +4% bf16, +1% fp16 over 192 x 128 on an H200 (docs/perf-notes.md, round 6)
        tile_n, o_in_q = 144, True
    kv_stages = fitting_kv_stages(d, tile_n, consumers, 1, o_in_q, 2, dv, p_smem)
    return Geometry(d, tile_n, kv_stages, consumers, o_in_q, p_smem)


def tiles(
    d: int, *, causal: bool = False, capped_window: bool = False, dv: int | None = None, paged: bool = False,
    softcap: bool = False, schedule: str = "pingpong", consumers: int | None = None, kv_tile: int | None = None, kv_stages: int | None = None,
    p_operand: str = "auto", o_staging: str = "auto", q_buffers: int = 1, elem_bytes: int = 2,
) -> Geometry:
    """The tile shape of one stage D kernel: ``geometry``'s for these parameters with the
    variants' choices (None / "auto": resolved here to what fits and measured fastest).
    ValueError (one line) for a combination that cannot be built. ``schedule`` is resolved
    (not "auto")."""
    dv = d if dv is None else int(dv)
    if d in _TABLE and (dv not in HEAD_DIMS or dv > d):
        raise ValueError(f"dv={dv}: V's head dim must be one of {', '.join(map(str, HEAD_DIMS))} and at most d={d}")
    # d = 96's 192-row tiles need P through shared memory and one Q buffer (O staged in Q)
    p_smem_ok = schedule != "serial" and p_operand != "regs" and q_buffers == 1 and consumers in (None, 3)
    geom = geometry(d, causal, capped_window, dv, p_smem_ok=p_smem_ok, paged=paged, softcap=softcap)

    def shape_of(g: Geometry) -> tuple[int, bool]:
        # the KV tile (the kv_tile variant's, or the geometry's) and where O is staged
        return (g.tile_n if kv_tile is None else int(kv_tile)), (g.o_in_q if o_staging == "auto" else o_staging == "q")

    tile_n, o_in_q = shape_of(geom)
    if consumers is None and geom.p_smem and smem_bytes(
        d, tile_n, 2, geom.consumers, q_buffers, o_in_q, elem_bytes, dv, True
    ) > SMEM_CAPACITY:
        # no room beside P's tiles for this kv_tile / O staging: the 2-WG geometry, P in registers
        geom = geometry(d, causal, capped_window, dv, p_smem_ok=False, paged=paged, softcap=softcap)
        tile_n, o_in_q = shape_of(geom)
    if consumers is None:
        consumers = geom.consumers
    # P to the PV MMA from registers (RS, FA3's default) or through shared memory (SS; auto:
    # d = 96 with 3 consumer WGs, which need it)
    p_smem = p_operand == "smem" or (p_operand == "auto" and needs_p_smem(d, consumers))
    if kv_stages is None:
        kv_stages = fitting_kv_stages(d, tile_n, consumers, q_buffers, o_in_q, elem_bytes, dv, p_smem)
    if p_smem and schedule == "serial":
        raise ValueError("p_operand=smem is built for the overlap and pingpong schedules, not serial")
    if tile_n % 16 or not 16 <= tile_n <= 256:
        raise ValueError(f"kv_tile={tile_n}: a KV tile is a multiple of 16 keys, 16 ... 256 (the PV MMA's K steps)")
    check_fits(d, tile_n, kv_stages, consumers, q_buffers, o_in_q, elem_bytes, dv, p_smem)
    if o_in_q and q_buffers != 1:
        raise ValueError(f"q_buffers={q_buffers} needs O staged apart from Q (d <= 128); d={d} stages O in Q")
    if consumers == 3 and d not in (64, 128) and not (d == 96 and p_smem):
        raise ValueError(f"consumers=3 (192-row Q tiles at 160 registers) is for d = 64 and 128 (96 with p_operand=smem), not d={d}")
    return Geometry(d, tile_n, kv_stages, consumers, o_in_q, p_smem)


def needs_p_smem(d: int, consumers: int) -> bool:
    """d = 96's 192-row Q tiles: 3 WGs at 160 registers hold O and S, not P as well, so P goes
    to the PV MMA through shared memory."""
    return d == 96 and consumers == 3


def fitting_kv_stages(d: int, tile_n: int, consumers: int, q_buffers: int, o_in_q: bool, elem_bytes: int = 2,
                      dv: int | None = None, p_smem: bool = False) -> int:
    """The K/V ring depth of ``kv_stages=auto``: the table's for d (3 for 64 and 96, else 2),
    shallower (down to 2) while the tiles beside it do not fit."""
    stages = _TABLE[d][1]
    while stages > 2 and smem_bytes(d, tile_n, stages, consumers, q_buffers, o_in_q, elem_bytes, dv, p_smem) > SMEM_CAPACITY:
        stages -= 1
    return stages


@dataclass(frozen=True)
class LongKernel:
    """A kernel stage D compiles beside its default one and launches from ``min_m`` query rows
    and ``min_n`` keys on: 192-row causal tiles lose at short m (their extra masked visits cost
    more than the better-hidden softmax gains) and win at long m; d = 128's wider KV tile
    shortens the loop over the keys: it loses 1% at n = 4096 and wins 2% from 8192, whatever m;
    d = 128's 192-row tiles waste a third of a tile's rows at m = 4096 (-2%) and win 1% from
    m = n = 8192 over the wider KV tile; non-causal d = 64's round-robin scheduler gains 2 % in
    bf16 over the dynamic one from m = 8192, where the short tile the dynamic one shares
    (short_tile.py) is one of 43 or more a head. Its variants over the default's: ``consumers``
    and, where set, ``kv_tile``, ``o_staging``, ``p_operand`` and ``persistent``."""

    consumers: int
    min_m: int = 0
    min_n: int = 0
    kv_tile: int | None = None
    o_staging: str = "auto"
    p_operand: str = "auto"
    persistent: str = "auto"

    def serves(self, m: int, n: int) -> bool:
        """Whether it is the kernel launched for ``m`` query rows and ``n`` keys."""
        return m >= self.min_m and n >= self.min_n

    def variants(self) -> dict[str, str]:
        """The kernel's variants as kernel.yaml spells them (over the default kernel's)."""
        given = {"consumers": str(self.consumers), "kv_tile": str(self.kv_tile or "auto"), "o_staging": self.o_staging,
                 "p_operand": self.p_operand, "persistent": self.persistent}
        return {k: v for k, v in given.items() if v != "auto"}

    @property
    def tile_m(self) -> int:
        return WG_ROWS * self.consumers

    def tiles(self, d: int, **kwargs) -> Geometry:
        """Its tile shape (``tiles`` with this kernel's choices; kwargs as ``tiles`` takes)."""
        return tiles(d, consumers=self.consumers, kv_tile=self.kv_tile, o_staging=self.o_staging,
                     p_operand=self.p_operand, **kwargs)


#: the variants that shape a tile (a LongKernel's choices)
TILE_VARIANTS = ("consumers", "kv_tile", "o_staging", "p_operand")
#: the variants of the work-tile scheduler: chosen, no long kernel that sets ``persistent`` is built
SCHEDULER_VARIANTS = ("persistent", "short_tile", "split_tail")

#: (d, causal): the long kernels of that configuration, the first that serves a shape launched
#: (``long_kernels``)
_LONG = {
    (64, True): (LongKernel(min_m=4096, consumers=3),),
    (64, False): (LongKernel(min_m=8192, consumers=3, persistent="on"),),
    (96, True): (LongKernel(min_m=8192, consumers=3, kv_tile=144, o_staging="q"),),
    (128, False): (
        LongKernel(min_m=8192, min_n=8192, consumers=3, o_staging="q", p_operand="smem"),
        LongKernel(min_n=8192, consumers=2, kv_tile=176, o_staging="q"),
    ),
}


def serving(longs: tuple[LongKernel, ...], m: int, n: int) -> LongKernel | None:
    """The long kernel launched for ``m`` query rows and ``n`` keys: the first of ``longs``
    that serves them (None: the default kernel)."""
    return next((long for long in longs if long.serves(m, n)), None)


def long_kernels(d: int, causal: bool, windowed: bool, varlen: bool, paged: bool,
                 variants: Mapping[str, str] | None = None, softcap: bool = False) -> tuple[LongKernel, ...]:
    """The kernels launched for long shapes beside the default, the first that serves a shape
    launched (empty: one kernel serves every m and n). Fixed-length, not paged, without a
    window (varlen and paged would choose by max_seqlen_q; not measured), none where a variant
    of the tile's shape (``TILE_VARIANTS``) is chosen in ``variants`` (the user's experiment:
    that tile for every m and n), and each only where the other variants allow it. Chosen by
    query rows m (the grid) where the gain is the Q tile's, by keys n (the loop) where it is
    the KV tile's.

    * causal d = 64: 3 consumer WGs from m = 4096 (H200, bf16, TFLOP/s 128-row / 192-row:
      s = 1024 353 / 314, 4096 479 / 490, 8192 505 / 547, 16384 517 / 567);
    * causal d = 96: non-causal's 192 x 144 tile, P through shared memory, O in Q, from
      m = 8192 (H200, bf16 / fp16, one call: s = 4096 597 / 577 against 578 / 562; s = 8192
      631 / 608 against 645 / 623). docs/perf-notes.md, rounds 5 and 7;
    * non-causal d = 128: FlashAttention-3's 176-key tile with O staged in Q, from n = 8192
      keys (H200, bf16 / fp16, two rounds in one call: s = 8192 745 / 720 and 744 / 721 against
      734 / 706 and 720 / 705; s = 4096 713 / 691 against 722 / 698. Round 8. H100, bf16:
      m = 4096 n = 16384 744 / 742 against 729 / 728; m = 8192 n = 4096 705 / 704 against
      699 / 713. Round 9);
    * non-causal d = 128 from m = n = 8192: 192-row tiles, 3 WGs, P through shared memory, O
      in Q (226 KiB; H100, bf16 / fp16, three calls, the median of 3 processes in two: s = 8192
      768 / 745 against the 176-key kernel's 758 / 736; s = 4096, where a third of the last
      tile's rows is wasted, 721 / 703 against 735 / 712. H200, one call, two rounds: s = 8192
      756 / 728 and 756 / 725 against 758 / 728 and 756 / 728, a wash. Round 24);
    * non-causal d = 64 from m = 8192: the same tile under the round-robin scheduler
      (``persistent=on``) instead of the dynamic one with its shared short tile (H100, in turn
      with FA4, s = 8192, six processes each: bf16 x1.02-1.06 against x1.00-1.01, fp16 x1.00-1.01
      against x1.00; s = 4096, where the short tile is 1 of 22 a head, the same. Round 28).
    Not where a scheduler variant (``SCHEDULER_VARIANTS``) is chosen and the long kernel sets one,
    and with a ``softcap`` none of 3 consumer WGs: the cap's tanh on every logit spills at their 160
    registers (d = 64 causal 112 B, d = 96 causal 28 B, d = 128 non-causal 24 B, d = 64's round
    robin 16 B), so d = 128 keeps its 176-key kernel and the others their default one."""
    variants = variants or {}
    if windowed or varlen or paged or any(variants.get(key, "auto") != "auto" for key in TILE_VARIANTS):
        return ()
    scheduler_chosen = any(variants.get(key, "auto") != "auto" for key in SCHEDULER_VARIANTS)
    return tuple(long for long in _LONG.get((d, causal), ())
                 if _allowed(d, causal, long, variants) and not (scheduler_chosen and long.persistent != "auto")
                 and not (softcap and long.consumers == 3))


def _allowed(d: int, causal: bool, long: LongKernel, variants: Mapping[str, str]) -> bool:
    """Whether the other variants let ``long`` be built (d = 96's needs P through shared
    memory: not serial, ...)."""
    chosen = {**variants, **long.variants()}

    def number(key: str) -> int | None:
        return None if chosen.get(key, "auto") == "auto" else int(chosen[key])

    try:
        tiles(d, causal=causal, schedule=chosen.get("schedule", "auto"), consumers=number("consumers"),
              kv_tile=number("kv_tile"), kv_stages=number("kv_stages"), p_operand=chosen.get("p_operand", "auto"),
              o_staging=chosen.get("o_staging", "auto"), q_buffers=int(chosen.get("q_buffers", 1)))
    except ValueError:
        return False
    return True


def launched(d: int, m: int = 0, *, n: int = 0, causal: bool = False, windowed: bool = False, capped_window: bool = False,
             varlen: bool = False, dv: int | None = None, paged: bool = False,
             variants: Mapping[str, str] | None = None, softcap: bool = False) -> Geometry:
    """The tile shape of the kernel stage D launches for ``m`` query rows and ``n`` keys:
    ``geometry``'s, or that of the long kernel serving them (``long_kernels``). ``windowed``: a sliding window of
    either edge (no long kernel is built for one)."""
    long = serving(long_kernels(d, causal, windowed, varlen, paged, variants, softcap), m, n)
    if long is not None:
        return long.tiles(d, causal=causal, dv=dv, paged=paged, softcap=softcap)
    return geometry(d, causal, capped_window, dv, paged=paged, softcap=softcap)


def kv_tile(d: int, dv: int | None = None, causal: bool = False, capped_window: bool = False,
            paged: bool = False, m: int = 0, windowed: bool = False, varlen: bool = False, n: int = 0,
            softcap: bool = False) -> int:
    """Keys per KV tile of the kernel stage D launches for these parameters (``launched``);
    128 for a d outside the table (stages A-C are 128-wide for every d they take)."""
    if d not in _TABLE:
        return 128
    return launched(d, m, n=n, causal=causal, windowed=windowed, capped_window=capped_window, varlen=varlen,
                    dv=dv, paged=paged, softcap=softcap).tile_n


def _table_tile(d: int, dv: int | None = None) -> int:
    """The table's KV tile for head dim ``d`` (and V's ``dv``, default d). d = 192 with dv <=
    128 (192/128, MLA's prefill) takes 128-key tiles, as FlashAttention-3 does: a narrower V
    leaves room for them, with O staged in Q."""
    if d == 192 and dv is not None and dv <= 128:
        return 128
    return _TABLE[d][0]


def smem_bytes(d: int, tile_n: int, kv_stages: int, consumers: int, q_buffers: int, o_in_q: bool, elem_bytes: int = 2,
               dv: int | None = None, p_smem: bool = False) -> int:
    """Shared memory of one stage D CTA, as ``wb compile`` reports it (fmha_base's shared
    storage: tiles of whole KiB, see ``SMEM_OVERHEAD``); ``dv``: V's and O's head dim (d);
    ``p_smem``: a (64, tile_n) P tile per consumer WG."""
    dv = d if dv is None else dv
    tile_m = WG_ROWS * consumers
    q = q_buffers * tile_m * d
    kv = kv_stages * tile_n * (d + dv)
    o = 0 if o_in_q else tile_m * dv
    p = tile_m * tile_n if p_smem else 0
    # (the storage with P's tiles puts the mbarriers first, as the one with O's own tile)
    return (q + kv + o + p) * elem_bytes + SMEM_OVERHEAD[o_in_q and not p_smem]


def check_fits(d: int, tile_n: int, kv_stages: int, consumers: int, q_buffers: int, o_in_q: bool, elem_bytes: int = 2,
               dv: int | None = None, p_smem: bool = False) -> None:
    """ValueError (one line) when the configuration cannot fit in shared memory."""
    need = smem_bytes(d, tile_n, kv_stages, consumers, q_buffers, o_in_q, elem_bytes, dv, p_smem)
    if need > SMEM_CAPACITY:
        dv_text = "" if dv in (None, d) else f", dv={dv}"
        raise ValueError(
            f"d={d}{dv_text} with kv_stages={kv_stages}, consumers={consumers}, q_buffers={q_buffers} needs "
            f"{need / 1024:.0f} KiB of shared memory, more than the {SMEM_CAPACITY // 1024} KiB of a CTA"
        )
