"""`wb bench` hooks of fmha (docs/architecture.md, "Kernel hooks").

case_params: DESIGN.md's convention for a benchmark shape: 16k tokens and a 2048-wide model,
so batch = 16384 / s and heads = 2048 / d, with s = m = n. Values the user gave are kept.
"""

from __future__ import annotations

TOKENS, MODEL_DIM = 16384, 2048


def case_params(given: dict) -> dict:
    """The case's parameters: `given` (values may be strings, from -p) plus what it implies."""
    out = dict(given)
    if "n" in out:
        s = int(out["n"])
        out.setdefault("m", s)
        out.setdefault("batch", max(1, TOKENS // s))
    if "d" in out:
        out.setdefault("heads", max(1, MODEL_DIM // int(out["d"])))
    return out

