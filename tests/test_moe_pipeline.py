"""MoE host pipeline on the CPU (stages/moe): the routing plan, the references, the fixtures,
the torch peers and stage D's host side with a torch GEMM test double; GPU tests run stage D
itself at small and real shapes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from stages.moe.plan import make_plan  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- plan ----------------------------------------------------------------------------------
def _random_ids(T, k, E, seed, skip=()):
    """(T, k) ids, distinct per token (as top-k gives), never using experts in `skip`."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(E) if e not in skip])
    scores = torch.rand(T, allowed.numel(), generator=g)
    return allowed[scores.topk(k, dim=1).indices]


@pytest.mark.parametrize("T,k,E", [(1, 1, 1), (1, 2, 8), (7, 2, 8), (33, 4, 16), (128, 8, 128), (0, 2, 4)])
def test_plan_invariants(T, k, E):
    """Every routed (token, k) row appears exactly once, sorted by expert (stable: token order
    within an expert), cu_seqlens is monotone from 0 to R and counts each expert's rows,
    rows/order/inverse agree."""
    ids = _random_ids(T, k, E, seed=T * 31 + E, skip=(E - 1,) if E > k else ())
    p = make_plan(ids, E)
    R = T * k
    assert p.rows.dtype == p.cu_seqlens.dtype == p.inverse.dtype == torch.int32
    assert p.cu_seqlens.shape == (E + 1,) and p.rows.shape == (R,) and p.inverse.shape == (T, k)
    assert sorted(p.order.tolist()) == list(range(R))  # a permutation: every routed row once
    cu = p.cu_seqlens.tolist()
    assert cu[0] == 0 and cu[-1] == R and all(a <= b for a, b in zip(cu, cu[1:]))
    counts = torch.bincount(ids.flatten(), minlength=E)
    assert p.counts().tolist() == counts.tolist()
    flat = ids.flatten()
    for e in range(E):
        seg = p.order[cu[e]:cu[e + 1]].long()
        assert (flat[seg] == e).all()
        assert seg.tolist() == sorted(seg.tolist())  # stable
    assert (p.rows.long() == p.order.long() // k).all()
    t = torch.arange(T).view(T, 1).expand(T, k)
    assert (p.rows.long()[p.inverse.long()] == t).all()  # inverse finds (t, j)'s row
    assert (p.expert.long()[p.inverse.long()] == ids).all()


def test_plan_empty_and_all_to_one_expert():
    """Experts nobody picked own empty ranges (cu_seqlens repeats), also the first and last."""
    ids = torch.full((5, 1), 2)
    p = make_plan(ids, 4)
    assert p.cu_seqlens.tolist() == [0, 0, 0, 5, 5]
    assert p.rows.tolist() == [0, 1, 2, 3, 4]
