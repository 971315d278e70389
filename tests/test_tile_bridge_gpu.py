"""On a GPU: stage D's ``tile_bridge=on`` (the next work tile's first QK^T issued with this
tile's last PV MMA, this tile's epilogue after the next tile's first softmax; stage_d_fmha
``consume_stream``) against the same kernel with the boundary as before (``tile_bridge=off``).

Each tile runs the same operations in the same order either way, only interleaved with its
neighbours', so O and LSE must be bit-equal, and every row written (outputs start as NaN):
with one KV tile per work tile (the bridge right after the first visit), a key tail, many
tiles per persistent CTA, the split tail's pieces (their merge runs in the bridge), round
robin and the dynamic scheduler, GQA, softcap, fp16, 3 consumer WGs (d = 64) and
softmax=identity.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CPU machines
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from stages.fmha import stage_d_fmha as sd  # noqa: E402
from workbench.kernels.stage import Params  # noqa: E402

from stage_d_gpu import launch, random_inputs  # noqa: E402


def _params(**kw):
    base = dict(m=4096, n=4096, d=128, dtype="bf16", batch=2, heads=4, kv_heads=4, causal=False, softcap=0.0)
    base.update(kw)
    return Params(base)


CASES = [  # d, m, n, batch, heads, kv_heads, dtype, softcap, variants
    (128, 4096, 4096, 2, 4, 4, "bf16", 0.0, {}),  # 256 tiles on 132 CTAs: the split tail cuts
    (128, 4096, 4096, 1, 5, 5, "fp16", 0.0, {}),  # 160 tiles: pieces
    (128, 1000, 128, 4, 16, 16, "bf16", 0.0, {}),  # one KV tile per work tile
    (128, 1024, 1000, 4, 32, 8, "bf16", 0.0, {}),  # a key tail, GQA, 8 tiles per CTA
    (128, 2048, 2048, 2, 16, 16, "fp16", 30.0, {}),  # softcap
    (128, 2048, 2048, 2, 16, 16, "bf16", 0.0, {"persistent": "on"}),  # round robin
    (64, 4096, 4096, 2, 8, 8, "bf16", 0.0, {"short_tile": "whole", "split_tail": "off"}),  # 3 consumer WGs
]


@pytest.mark.parametrize("d,m,n,batch,heads,kv_heads,dtype,softcap,variants", CASES, ids=lambda x: str(x))
def test_the_bridged_boundary_gives_the_same_bits(d, m, n, batch, heads, kv_heads, dtype, softcap, variants):
    st = sd.StageD()
    p = _params(d=d, m=m, n=n, batch=batch, heads=heads, kv_heads=kv_heads, dtype=dtype, softcap=softcap)
    inputs = random_inputs(p)
    base = {"q_buffers": "2", **variants}
    want = launch(st, st.compile(p, {**base, "tile_bridge": "off"}, "sm_90a"), p, inputs)
    bridged = st.compile(p, {**base, "tile_bridge": "on"}, "sm_90a")
    for _ in range(2):
        got = launch(st, bridged, p, inputs)
        for name in want:
            assert torch.isfinite(got[name]).all(), f"{name}: rows never written"
            assert torch.equal(got[name], want[name]), (name, (got[name].float() - want[name].float()).abs().max().item())


def test_identity_softmax_through_the_bridge():
    """softmax=identity (the fixtures' O = S V): the same bits as without the bridge."""
    st = sd.StageD()
    p = _params(m=1024, n=1000, batch=2, heads=8, kv_heads=8)
    inputs = random_inputs(p)
    base = {"q_buffers": "2", "softmax": "identity"}
    want = launch(st, st.compile(p, {**base, "tile_bridge": "off"}, "sm_90a"), p, inputs)
    got = launch(st, st.compile(p, {**base, "tile_bridge": "on"}, "sm_90a"), p, inputs)
    assert all(torch.equal(got[name], want[name]) for name in want)
