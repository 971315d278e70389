"""On a GPU: stage D's short tile shared by the consumer WGs (``-V short_tile=split``;
stages/fmha/short_tile.py), d = 64 non-causal (3 WGs, 3 K/V ring stages).

* Every row of a launch whose last Q tile is short (m mod 192 in 1 ... 64) is written (the
  outputs start as NaN), and O and LSE are the whole-tile kernel's up to rounding, as close
  to the fp32 reference: with every WG at zero, one, two or three visits of a short tile
  (n = 128, 256, 384 keys), with many tiles per persistent CTA (so a short tile starts at
  every ring slot and follows a whole one or another short one), with a softcap, GQA and
  softmax=identity (whose partials add plainly).
* A WG's visits are fixed by its index, and WG 0 adds the others in WG order, so launches
  give the same bits every time.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CPU machines
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from stages.fmha import reference, short_tile  # noqa: E402
from stages.fmha import stage_d_fmha as sd  # noqa: E402
from workbench.kernels.stage import Params  # noqa: E402

from stage_d_gpu import launch, random_inputs  # noqa: E402

#: the kernel it is measured against: the same scheduler, the short tile whole
WHOLE = {"persistent": "dynamic", "split_tail": "off", "short_tile": "whole"}
SPLIT = {"persistent": "dynamic", "short_tile": "split"}


def _params(**kw):
    base = dict(m=1024, n=1000, d=64, dtype="bf16", batch=2, heads=4, kv_heads=4, causal=False, softcap=0.0)
    base.update(kw)
    return Params(base)


CASES = [  # m, n, batch, heads, kv_heads, dtype, softcap
    (1024, 1000, 2, 4, 4, "bf16", 0.0),  # one tile in six short, 8 visits: 3 / 3 / 2
    (1000, 4100, 1, 3, 3, "fp16", 0.0),  # 40 real rows, a key tail
    (17, 128, 8, 64, 64, "bf16", 0.0),  # every tile short, one visit: WGs 1 and 2 idle
    (17, 256, 8, 64, 64, "fp16", 0.0),  # two visits
    (17, 384, 8, 64, 64, "bf16", 0.0),  # three: one each
    (1024, 1000, 4, 64, 64, "bf16", 0.0),  # 1536 tiles on the persistent CTAs
    (1024, 130, 4, 64, 64, "fp16", 0.0),  # 2 visits a tile: short tiles start at every ring slot
    (4096, 4096, 1, 8, 2, "bf16", 0.0),  # GQA
    (1024, 1000, 2, 4, 4, "bf16", 30.0),  # softcap: the max in log2 units
]


@pytest.mark.parametrize("m,n,batch,heads,kv_heads,dtype,softcap", CASES, ids=lambda x: str(x))
def test_a_shared_short_tile_matches_the_whole_one(m, n, batch, heads, kv_heads, dtype, softcap):
    assert short_tile.is_short_rows(m, 192, 64)
    st = sd.StageD()
    p = _params(m=m, n=n, batch=batch, heads=heads, kv_heads=kv_heads, dtype=dtype, softcap=softcap)
    inputs = random_inputs(p)
    whole = st.compile(p, WHOLE, "sm_90a")
    split = st.compile(p, SPLIT, "sm_90a")
    want = launch(st, whole, p, inputs)
    got = launch(st, split, p, inputs)
    for _ in range(3):
        again = launch(st, split, p, inputs)
        assert all(torch.equal(again[name], got[name]) for name in got), "the bits changed between launches"

    o_ref, lse_ref = reference.attention_bshd(
        inputs["q"], inputs["k"], inputs["v"], torch.float32, causal=False, softcap=softcap,
    )
    for name, ref in (("o", o_ref), ("lse", lse_ref)):
        a, b = got[name].float(), want[name].float()
        assert torch.isfinite(a).all(), f"{name}: rows never written"
        err_split = (a - ref.float()).abs().max().item()
        err_whole = (b - ref.float()).abs().max().item()
        assert err_split <= 1.5 * err_whole + 1e-3, (name, err_split, err_whole)
        assert (a - b).abs().max().item() <= (2e-2 if name == "o" else 1e-3), name


def test_identity_softmax_adds_the_partials_plainly():
    st = sd.StageD()
    p = _params(m=1024, n=1000)
    inputs = random_inputs(p)
    want = launch(st, st.compile(p, {**WHOLE, "softmax": "identity"}, "sm_90a"), p, inputs)
    got = launch(st, st.compile(p, {**SPLIT, "softmax": "identity"}, "sm_90a"), p, inputs)
    a, b = got["o"].float(), want["o"].float()
    assert torch.isfinite(a).all()
    assert (a - b).abs().max().item() <= 1e-2 * b.abs().max().item() + 1e-3
