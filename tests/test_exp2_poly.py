"""softmax.exp2_poly (stage D's ``exp2_poly`` variant): 2^x from a cubic on the FMA pipe. A
numpy model of its PTX, step by step in fp32 with the module's own constants, checks the
constants and the exponent-bits trick: relative error under 8.6e-5 over the softmax's range,
2^k exact for integers, 0 for a masked -inf. The PTX itself runs only on a GPU (the sweep of
``gpu_tune_d.sh d64poly``); its SASS is checked in test_fmha_sass.py."""

import numpy as np
import pytest

from stages.fmha import softmax


def _f32(hex_literal: str) -> np.float32:
    return np.array([int(hex_literal[2:], 16)], dtype=np.uint32).view(np.float32)[0]


def exp2_poly_model(x: np.ndarray) -> np.ndarray:
    """The asm block of softmax._EXP2_POLY_ASM in numpy fp32 (fma as one rounding)."""
    a1, a2, a3 = (_f32(h) for h in softmax.EXP2_POLY)
    xc = np.maximum(x.astype(np.float32), np.float32(-127.0))
    k = np.floor(xc)  # add.rm of 1.5 * 2^23: the sum's low mantissa bits are floor(xc)
    fr = (xc - k).astype(np.float32)

    def fma(a, b, c):
        return (a.astype(np.float64) * np.float64(b) + np.float64(c)).astype(np.float32)

    p = fma(fma(fma(fr, a3, a2), fr, a1), fr, 1.0)
    bits = p.view(np.int32) + (k.astype(np.int32) << 23)
    return bits.view(np.float32)


def test_relative_error_over_the_softmax_range():
    x = np.concatenate([np.linspace(-126.0, 0.0, 200_001, dtype=np.float32), np.float32(-np.arange(0, 126, 1 / 64))])
    got = exp2_poly_model(x).astype(np.float64)
    want = np.exp2(x.astype(np.float64))
    rel = np.abs(got / want - 1)
    assert rel.max() < 8.7e-5, rel.max()
    assert rel.max() > 1e-5  # a cubic, not an exact exp2: the model computes what the PTX does


@pytest.mark.parametrize("k", [0, -1, -7, -64, -126])
def test_integer_powers_are_exact(k):
    assert exp2_poly_model(np.array([k], dtype=np.float32))[0] == np.float32(2.0**k)


def test_masked_scores_give_zero():
    out = exp2_poly_model(np.array([-np.inf, -127.0, -1e30], dtype=np.float32))
    assert (out == 0).all() and not np.signbit(out).any()
