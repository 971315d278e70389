"""The FMHA reference of O and LSE (stages/fmha/reference.py): streamed over KV blocks.

It must hold no b·h·m·n tensor (the dense reference of a stage D run at n=16384, batch 8,
16 heads held 138 GB), give today's dense formula's results within fp32 rounding (every
block boundary, causal alignment and softmax variant), leave the tolerance the runner
calibrates from it where it was, and say its causal alignment explicitly.
"""

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stages.fmha import reference as R  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _qkv(lead, m, n, d, dv=None, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*lead, rows, cols, generator=g) * sd).to(dtype)
            for rows, cols, sd in ((m, d, 1.5), (n, d, 1.5), (n, dv or d, 1.0))]


def _visible(m, n, offset):
    return torch.arange(n)[None, :] <= torch.arange(m)[:, None] + offset


def _dense(q, k, v, compute_dtype, softmax="exp", offset=None):
    """The reference as it was before streaming: the whole S, then logsumexp and P V."""
    import torch.nn.functional as F

    scale = R.default_scale(q.shape[-1])
    allowed = None if offset is None else _visible(q.shape[-2], k.shape[-2], offset)
    lowp = compute_dtype in (torch.bfloat16, torch.float16)
    if softmax == "identity":
        qc, kc, vc = (x.to(compute_dtype) for x in (q, k, v))
        s = (qc @ kc.transpose(-1, -2)) * scale
        if allowed is not None:
            s = s.masked_fill(~allowed, 0.0)
        return s @ vc, None
    if lowp:
        o = F.scaled_dot_product_attention(*(x.to(compute_dtype) for x in (q, k, v)), attn_mask=allowed, scale=scale)
        s = (q.float() @ k.float().transpose(-1, -2)) * scale
    else:
        qc, kc, vc = (x.to(compute_dtype) for x in (q, k, v))
        s = (qc @ kc.transpose(-1, -2)) * scale
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    if not lowp:
        o = torch.exp(s - lse[..., None]) @ vc
    return o, lse


def _max_err(a, b):
    return float((a.double() - b.double()).abs().max())


def _assert_rounding_close(got, want, ulps=16):
    """|got - want| within ``ulps`` units of roundoff of the largest |want| (summation order
    differs between the streamed and the dense formula; nothing else may)."""
    eps = torch.finfo(want.dtype).eps
    assert got.shape == want.shape and got.dtype == want.dtype
    assert _max_err(got, want) <= ulps * eps * float(want.abs().max()), (_max_err(got, want), float(want.abs().max()))


# (lead dims, m, n, d, dv, block): m != n both ways, blocks that divide nothing, a
# single-block case, and an n that is not a multiple of the KV block
SHAPES = [
    ((2, 3), 100, 300, 64, 64, (37, 53)),
    ((), 129, 77, 32, 48, (16, 32)),
    ((3,), 64, 64, 16, 16, (64, 64)),
    ((1, 2), 200, 131, 64, 32, (128, 128)),
]


@pytest.mark.parametrize("lead,m,n,d,dv,block", SHAPES)
@pytest.mark.parametrize("softmax", ["exp", "identity"])
@pytest.mark.parametrize("causal", [False, True])
def test_streamed_fp32_equals_the_dense_formula(lead, m, n, d, dv, block, softmax, causal):
    """Streaming over (Q block, KV block) pairs with an online softmax gives the dense
    formula's O and LSE within fp32 rounding, causal (top-left) or not, whatever the block
    boundaries; the identity variant sums S_blk V_blk and returns LSE = 0."""
    q, k, v = _qkv(lead, m, n, d, dv, seed=m + n)
    o_want, lse_want = _dense(q, k, v, torch.float32, softmax, 0 if causal else None)
    o, lse = R.attention(q, k, v, torch.float32, softmax=softmax, causal=causal, block=block)
    assert o.dtype == lse.dtype == torch.float32 and o.shape == (*lead, m, dv) and lse.shape == (*lead, m)
    _assert_rounding_close(o, o_want)
    if softmax == "exp":
        _assert_rounding_close(lse, lse_want)
    else:
        assert not lse.any()


def test_float64_streams_in_float64():
    """compute_dtype=float64 keeps every step in float64 (no silent fp32 accumulator)."""
    q, k, v = _qkv((2,), 70, 90, 32, seed=5)
    o_want, lse_want = _dense(q, k, v, torch.float64, offset=0)
    o, lse = R.attention(q, k, v, torch.float64, causal=True, block=(16, 24))
    assert o.dtype == lse.dtype == torch.float64
    _assert_rounding_close(o, o_want)
    _assert_rounding_close(lse, lse_want)


def test_causal_alignment_is_a_named_argument():
    """Top-left (key j visible iff j <= i, as the stages and torch's is_causal) is the
    default of reference.attention; bottom-right (j <= i + n - m) is asked for by name.
    Bottom-right with m > n leaves the first m - n rows without any key: they get O = 0 and
    LSE = -inf, never NaN."""
    import torch.nn.functional as F

    q, k, v = _qkv((2,), 48, 80, 32, seed=7)
    o, _ = R.attention(q, k, v, torch.float32, causal=True, block=(16, 16))
    _assert_rounding_close(o, F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True))
    for m, n in ((48, 80), (80, 48)):
        q, k, v = _qkv((2,), m, n, 32, seed=m)
        o, lse = R.attention(q, k, v, torch.float32, causal=True, causal_align="bottom-right", block=(16, 16))
        seen = _visible(m, n, n - m).any(dim=1)
        o_want, lse_want = _dense(q[:, seen], k, v, torch.float32, offset=n - m + int((~seen).sum()))
        _assert_rounding_close(o[:, seen], o_want)
        _assert_rounding_close(lse[:, seen], lse_want)
        assert not o[:, ~seen].any() and bool((lse[:, ~seen] == float("-inf")).all())
        o_low, lse_low = R.attention(q, k, v, torch.bfloat16, causal=True, causal_align="bottom-right")
        assert not o_low.isnan().any() and not o_low[:, ~seen].any()
        _assert_rounding_close(lse_low[:, seen], lse[:, seen])
        assert bool((lse_low[:, ~seen] == float("-inf")).all())
    for causal in (True, False):
        with pytest.raises(ValueError, match="causal_align"):
            R.attention(q, k, v, torch.float32, causal=causal, causal_align="top-right")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_calibrated_tolerance_does_not_move(dtype):
    """The runner's tolerance is factor * max|ref(dtype) - ref(fp32)|: with streamed
    references (several KV blocks) that error moves by less than 1% from the dense
    formula's, for O and LSE, exp and identity, causal or not, m != n; the low-precision O
    itself differs by at most one unit of roundoff of the dtype."""
    for seed, (m, n, causal, softmax) in enumerate([(96, 160, False, "exp"), (160, 96, True, "exp"),
                                                    (128, 200, True, "identity")]):
        q, k, v = _qkv((2, 2), m, n, 64, seed=seed)
        offset = 0 if causal else None
        o32, lse32 = _dense(q, k, v, torch.float32, softmax, offset)
        olow, lselow = _dense(q, k, v, dtype, softmax, offset)
        n32, nlse32 = R.attention(q, k, v, torch.float32, softmax=softmax, causal=causal, block=(32, 48))
        nlow, nlselow = R.attention(q, k, v, dtype, softmax=softmax, causal=causal, block=(32, 48))
        assert nlow.dtype == dtype
        assert _max_err(nlow, olow) <= torch.finfo(dtype).eps * float(olow.abs().max())
        err_old, err_new = _max_err(olow, o32), _max_err(nlow, n32)
        assert err_old > 0 and abs(err_new - err_old) <= 0.01 * err_old, (softmax, err_old, err_new)
        if softmax == "exp":
            _assert_rounding_close(nlselow, lselow)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest storage any torch op returns while it is active."""

    def __init__(self):
        super().__init__()
        self.nbytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.nbytes:
                self.nbytes, self.op = t.untyped_storage().nbytes(), str(func)
        return out


@pytest.mark.parametrize("dtype,softmax,causal,m", [
    (torch.float32, "exp", False, 4096),
    (torch.float32, "exp", True, 4096),
    (torch.bfloat16, "exp", True, 2048),
    (torch.float32, "identity", False, 2048),
])
def test_stage_d_reference_never_holds_the_score_matrix(dtype, softmax, causal, m):
    """Stage D's reference (StageD.reference: reference.attention_bshd) for b=1, h=2, d=64
    (the fp32 truth, the bf16 calibration's LSE, the identity variant) makes no tensor
    larger than O (or the 1 MiB block floor): far below the b·h·m·n·4 bytes of a whole
    score matrix, which it used to hold."""
    from stages.fmha.stage_d_fmha import StageD
    from workbench.kernels.stage import Params

    b, h, d = 1, 2, 64
    q, k, v = (x.transpose(1, 2) for x in _qkv((b, h), m, m, d, seed=1))  # (b, m, h, d)
    with _LargestTensor() as seen:
        out = StageD().reference({"q": q, "k": k, "v": v}, Params({"causal": causal}), {"softmax": softmax}, dtype)
    o, lse = out["o"], out["lse"]
    assert o.shape == q.shape and lse.shape == (b, h, m)
    assert seen.nbytes <= max(R.MIN_BLOCK_BYTES, b * h * m * d * 4), seen.op
    assert seen.nbytes * 8 <= b * h * m * m * 4, seen.op


def test_stage_c_reference_is_the_streamed_one():
    """Stage C's reference (StageC.reference: reference.attention on a single head, 2-D
    tensors) streams too: 1 x 4096 x 4096 scores would be 64 MiB; nothing it makes is above
    the 1 MiB block floor."""
    from stages.fmha.stage_c_online import StageC
    from workbench.kernels.stage import Params

    q, k, v = _qkv((), 4096, 4096, 64, seed=2)
    with _LargestTensor() as seen:
        StageC().reference({"q": q, "k": k, "v": v}, Params({}), {}, torch.float32)
    assert seen.nbytes <= R.MIN_BLOCK_BYTES, seen.op


def test_block_shape_bounds_the_score_block():
    """One S block (all heads) is at most as large as O, never above MAX_BLOCK_BYTES whatever
    m and n are (the H200 run that held 138 GB: b·h = 128, m = n = 16384, d = 128), and
    covers whole small problems in one block."""
    for batch, m, n, dv in ((128, 16384, 16384, 128), (128, 32768, 32768, 128), (1, 4096, 4096, 64),
                            (1, 128, 1 << 20, 128), (4096, 1024, 1024, 64)):
        bm, bn = R.block_shape(batch, m, n, dv, 4)
        assert 0 < bm <= m and 0 < bn <= n
        assert batch * bm * bn * 4 <= min(R.MAX_BLOCK_BYTES, max(R.MIN_BLOCK_BYTES, batch * m * dv * 4))
        assert bm >= min(m, R.MIN_BLOCK_ROWS) and bn >= min(n, R.MIN_BLOCK_ROWS)
    assert R.block_shape(2, 300, 200, 64, 4) == (300, 200)
