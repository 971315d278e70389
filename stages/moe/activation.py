"""Device-side activations of the up-projection epilogue (fp32 in registers; traced).

``apply(name, gate, up)`` -> Float32, for name in swiglu | gptoss (identity never calls it:
the epilogue stores the raw accumulator). Matches stages/moe/reference.py.
"""

from __future__ import annotations

import math

import cutlass.cute as cute
from cutlass import Float32

from stages.moe.reference import GPTOSS_ALPHA, GPTOSS_LIMIT

LOG2_E = math.log2(math.e)


@cute.jit
def sigmoid(x: Float32) -> Float32:
    """1 / (1 + e^-x) with ex2.approx; x -> -inf gives 1/inf = 0, x -> +inf gives 1."""
    return cute.arch.rcp_approx(1.0 + cute.math.exp2(-x * LOG2_E, fastmath=True))


@cute.jit
def swiglu(gate: Float32, up: Float32) -> Float32:
    """silu(gate) * up."""
    return gate * sigmoid(gate) * up


@cute.jit
def gptoss(gate: Float32, up: Float32) -> Float32:
    """gpt-oss: g = min(gate, 7), u = clamp(up, -7, 7); g * sigmoid(1.702 g) * (u + 1)."""
    g = cute.arch.fmin(gate, Float32(GPTOSS_LIMIT))
    u = cute.arch.fmax(cute.arch.fmin(up, Float32(GPTOSS_LIMIT)), Float32(-GPTOSS_LIMIT))
    return g * sigmoid(g * GPTOSS_ALPHA) * (u + 1.0)


def apply(name: str, gate: Float32, up: Float32) -> Float32:
    """Dispatch on the (compile-time) activation name."""
    if name == "swiglu":
        return swiglu(gate, up)
    if name == "gptoss":
        return gptoss(gate, up)
    raise ValueError(f"activation {name!r} has no gate/up form")
