"""A numpy model of one softmax row, to see what the conditional ("lazy") O rescale does to
accuracy (docs/perf-notes.md, round 12). No GPU, no CuTe: the kernel's arithmetic per KV tile
(running max, P = 2^(s - m) rounded to the P operand's dtype, O and the row sum in fp32), against
the fp64 reference and PyTorch's low-precision softmax (P normalised, then rounded).

    python benchmarks/lazy_rescale_error.py [--rows 300] [--n 1024] [--tile 128]

Prints, per dtype and row kind, the worst O error of each kernel variant as a multiple of
PyTorch's worst error (stage D's tolerance allows 2):
  exact        the running max always moves (the default)
  lazy         it moves only when a tile's max exceeds it by more than 8 (log2 units)
  lazy+rsum    lazy, and O is normalised by a second row sum of the rounded P, as the PV product
               sees it (stage D's row_sum=rounded)
and the worst LSE error of each (stage D's tolerance: 1e-4 absolute). The LSE comes from the fp32
sum in every variant; "LSE of the rounded sum" shows why: taken from the rounded sum it carries P's
rounding (3e-4 to 3e-3 in bf16; the first rounded-sum kernel did that and failed every sweep case
on an H100, 2026-12-05).
"""

from __future__ import annotations

import argparse

import numpy as np

THRESHOLD = 8.0  # stage D's lazy_rescale threshold, log2 units


def rounded(x, dtype: str):
    if dtype == "fp16":
        return np.asarray(x).astype(np.float16).astype(np.float64)
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16  # round to nearest even, 8 bits
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def kernel_row(s, v, tile: int, dtype: str, lazy: bool, rounded_sum: bool):
    """(O rounded to dtype, LSE from the fp32 sum, LSE from the rounded sum), natural log."""
    m, l, l16, o = -np.inf, 0.0, 0.0, np.zeros(v.shape[1])
    for t0 in range(0, len(s), tile):
        st = s[t0:t0 + tile]
        m_new = max(m, st.max())
        if lazy and m > -np.inf and m_new - m <= THRESHOLD:
            m_new = m
        alpha = 2.0 ** (m - m_new) if m > -np.inf else 0.0
        p = 2.0 ** (st - m_new)
        p16 = rounded(p, dtype)
        l = l * alpha + p.sum()
        l16 = l16 * alpha + p16.sum()
        o = o * alpha + p16 @ v[t0:t0 + tile]
        m = m_new
    lse = lambda total: (m + np.log2(total)) * np.log(2)  # noqa: E731
    return rounded(o / (l16 if rounded_sum else l), dtype), lse(l), lse(l16)


def reference_lse(s):
    return (s.max() + np.log2((2.0 ** (s - s.max())).sum())) * np.log(2)


def reference(s, v):
    p = 2.0 ** (s - s.max())
    return (p / p.sum()) @ v


def torch_like(s, v, dtype: str):
    p = 2.0 ** (s - s.max())
    return rounded(rounded(p / p.sum(), dtype) @ v, dtype)


def logits(kind: str, n: int, rng):
    """log2-unit logits of one row: 'late-peak', one key 0.5-8 above every other, in the row's second
    half (after the running max was set: the lazy max stays); 'random', N(0, 1.5) natural units;
    'softcap', 15 tanh(N(0, 1.5))."""
    if kind == "late-peak":
        s = rng.uniform(-30, 34, n) * np.log2(np.e)
        s[rng.integers(n // 2, n)] = 34 * np.log2(np.e) + rng.uniform(0.5, 7.9)
        return s
    if kind == "random":
        return rng.standard_normal(n) * 1.5 * np.log2(np.e)
    return 15 * np.tanh(rng.standard_normal(n) * 1.5) * np.log2(np.e)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=128)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    variants = {"exact": (False, False), "lazy": (True, False), "lazy+rsum": (True, True)}
    for dtype in ("bf16", "fp16"):
        for kind in ("late-peak", "random", "softcap"):
            worst = dict.fromkeys(variants, 0.0)
            worst_lse = dict.fromkeys(variants, 0.0)
            worst_lse16 = 0.0
            torch_worst = 0.0
            for _ in range(args.rows):
                s = logits(kind, args.n, rng)
                v = rounded(rng.standard_normal((args.n, 96)) * 2, dtype)
                ref = reference(s, v)
                torch_worst = max(torch_worst, np.abs(torch_like(s, v, dtype) - ref).max())
                ref_lse = reference_lse(s)
                for name, (lazy, rsum) in variants.items():
                    o, lse, lse16 = kernel_row(s, v, args.tile, dtype, lazy, rsum)
                    worst[name] = max(worst[name], np.abs(o - ref).max())
                    worst_lse[name] = max(worst_lse[name], abs(lse - ref_lse))
                    if rsum:
                        worst_lse16 = max(worst_lse16, abs(lse16 - ref_lse))
            ratios = "  ".join(f"{name} {w / torch_worst:.2f}" for name, w in worst.items())
            lses = "  ".join(f"{name} {w:.1e}" for name, w in worst_lse.items())
            print(f"{dtype} {kind:9s} PyTorch's error {torch_worst:.3g}   O: {ratios}   LSE: {lses}"
                  f"   LSE of the rounded sum {worst_lse16:.1e}")


if __name__ == "__main__":
    main()
