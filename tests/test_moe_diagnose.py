"""MoE diagnosis (stages/moe/mutants.py, fixtures/moe.py) on the CPU: each mutant differs
from the reference on a fixture where its bug shows, is named when the kernel's output IS its
prediction (plus bf16 noise), and a correct output is never blamed on a bug."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import moe_cases as M  # noqa: E402

torch = pytest.importorskip("torch")

from workbench.diagnose import MutantContext, Pred, diagnose  # noqa: E402
from workbench.diagnose import core  # noqa: E402
from workbench.kernels.fixtures import get_fixture  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEN = 0.05

#: (stage config, fixture) -> mutants whose bug that fixture must show (prediction >= SEEN
#: from the reference) and that the diagnosis must name from their own output
MUST_NAME = {
    ("a", "random"): {"gate-up-swapped"},
    ("b", "random"): {"gate-up-swapped", "silu-on-up", "tail-rows-unwritten"},
    ("c", "random"): {"gate-up-swapped", "silu-on-up", "expert-offset-off-by-one", "gather-ignored",
                      "tail-rows-unwritten", "tail-rows-from-next-expert"},
    ("c", "tail-plus-one"): {"tail-rows-unwritten", "tail-rows-from-next-expert", "expert-offset-off-by-one"},
    ("d", "random"): {"gate-up-swapped", "silu-on-up", "expert-offset-off-by-one", "gather-ignored",
                      "topk-weights-not-applied", "topk-weights-applied-twice", "combine-overwrites",
                      "tail-rows-from-next-expert"},
    ("d-given", "unit-topk-weights"): {"combine-overwrites", "gather-ignored", "expert-offset-off-by-one"},
    ("d-given", "onehot-routing"): {"gate-up-swapped", "topk-weights-not-applied", "combine-overwrites", "gather-ignored"},
}
#: claims of the fixture docs: these bugs are invisible there
MUST_BE_UNSEEN = {
    ("d-given", "unit-topk-weights"): {"topk-weights-applied-twice", "topk-weights-not-applied"},
    ("d-given", "onehot-routing"): {"topk-weights-applied-twice"},
}
CASES = sorted(set(MUST_NAME) | set(MUST_BE_UNSEEN))


def _predictions(cfg, fixture):
    inputs, expected, outs, params = M.case(cfg, fixture)
    _, mutants = M.load()
    moe = {n: m for n, m in mutants.items() if not m.generic}
    cx = MutantContext(inputs=inputs, expected=expected, params=params, variants={}, fixture=fixture)
    preds = {}
    for name, m in moe.items():
        try:
            res = m.fn(cx)
        except core.NotApplicable:
            continue
        if res:
            preds[name] = res
    assert not cx.notes, cx.notes  # the bug-free model reproduced the reference
    return inputs, expected, outs, params, preds


def _distance(pred, expected, outs):
    refc = {n: core.classify(expected[n]) for n in outs}
    cls = {n: core._pred_classes(core._as_pred(pred[n]), expected[n].shape, expected[n].device) for n in outs if n in pred}
    return core._pred_distance(cls, {}, refc, list(outs))


@pytest.mark.parametrize("key", CASES, ids=lambda k: f"{k[0]}-{k[1]}")
def test_mutants_differ_where_their_bug_shows(key):
    inputs, expected, outs, params, preds = _predictions(*key)
    for m in MUST_NAME.get(key, ()):
        assert m in preds, f"{key}: {m} made no prediction"
        d = _distance(preds[m], expected, outs)
        assert d >= SEEN, f"{key}: {m} is not clearly visible (distance {d:.3f})"
    for m in MUST_BE_UNSEEN.get(key, ()):
        d = _distance(preds[m], expected, outs) if m in preds else 0.0
        assert d < core.DISTINCT, f"{key}: {m} is visible (distance {d:.3f})"


@pytest.mark.parametrize("key", sorted(MUST_NAME), ids=lambda k: f"{k[0]}-{k[1]}")
def test_each_mutant_is_named_from_its_own_output(key):
    """The kernel output IS the mutant's prediction (bf16, one-ulp noise, poison where it
    never stores, garbage where its value is unknown): the diagnosis names it first, or a
    twin with the same prediction here that lists it in same_as."""
    inputs, expected, outs, params, preds = _predictions(*key)
    _, mutants = M.load()
    refc = {n: core.classify(expected[n]) for n in outs}
    cache: dict = {}
    failures = []
    for i, m in enumerate(sorted(MUST_NAME[key])):
        out = M.kernel_like({**expected, **preds[m]}, outs, seed=i)
        d = diagnose(out, expected, inputs, params, {}, key[1], mutants, prediction_cache=cache)
        top = d.explanations[0] if d.explanations else None
        if top is None:
            failures.append(f"{m}: not explained: {d.headline}")
        elif top.name != m and m not in top.same_as:
            failures.append(f"{m}: explained as {top.name} (same_as {top.same_as}): {d.headline}")
    assert not failures, f"{key}:\n" + "\n".join(failures)


NO_ALARM = [("a", "random"), ("b", "random"), ("b", "large-gates"), ("c", "random"), ("c", "tail-plus-one"),
            ("d", "random"), ("d", "onehot-routing"), ("d-given", "unit-topk-weights"), ("d", "identity-w2")]


@pytest.mark.parametrize("key", NO_ALARM, ids=lambda k: f"{k[0]}-{k[1]}")
def test_correct_outputs_name_no_bug(key):
    """A correct kernel's outputs (the reference rounded as the kernels round, plus one-ulp
    noise) are diagnosed 'ok', and even forced past FAIL_MIN no mutant explains them."""
    cfg, fixture = key
    fixtures, mutants = M.load()
    ins, outs, params = M.configs()[cfg]
    for seed in range(3):
        inputs = get_fixture(fixtures, fixture, ins).make(ins, params, seed, "cpu")
        expected = M.reference(cfg, inputs, params)
        lowp = M.reference(cfg, inputs, params, torch.bfloat16)
        out = M.kernel_like(lowp, outs, seed)
        d = diagnose(out, expected, inputs, params, {}, fixture, mutants)
        assert d.status == "ok" and not d.explanations, f"seed {seed}: {d.headline}"
    forced = diagnose(out, expected, inputs, params, {}, fixture, mutants, force=True)
    assert not forced.explanations, forced.headline


# ---- evidence: read map, grids, hints ----------------------------------------------------------
def test_onehot_read_map_names_what_each_row_read():
    """Under onehot-routing the read map decodes every row of the reference; a correct output
    reads all intended (expert, token) pairs, gather-ignored's output reads the right experts
    but other tokens, expert-offset-off-by-one's reads expert e-1's weights."""
    from stages.moe import evidence

    inputs, expected, outs, params, preds = _predictions("d-given", "onehot-routing")
    ok = evidence.onehot_read_map(expected["y"], expected["y"], inputs, params)
    assert ok["correct"] == ok["rows"] == M.T
    g = evidence.onehot_read_map(preds["gather-ignored"]["y"], expected["y"], inputs, params)
    assert g["wrong_token"] > 0.9 * M.T and g["wrong_expert"] == 0 and g["examples"][0]["read_tokens"]
    off = preds["expert-offset-off-by-one"]["y"]
    o = evidence.onehot_read_map(off.values if isinstance(off, Pred) else off, expected["y"], inputs, params)
    assert o["wrong_expert"] > 0 and all(b == a - 1 for a, b, _ in o["expert_confusion"])
    rnd_inputs, rnd_expected, *_ = M.case("d", "random")
    assert evidence.onehot_read_map(rnd_expected["y"], rnd_expected["y"], rnd_inputs, {}) is None


def test_expert_error_grid_points_at_tail_tiles():
    from stages.moe import evidence
    from stages.moe.plan import make_plan

    inputs, expected, outs, params, preds = _predictions("c", "tail-plus-one")
    cu = make_plan(inputs["topk_ids"], M.E).cu_seqlens
    pred = preds["tail-rows-unwritten"]["h"]
    bad = pred.unwritten
    err = torch.zeros_like(expected["h"])
    grid = evidence.expert_error_grid(err, bad, cu, ok_level=1e-3)
    assert "only partial tail tiles" in grid["summary"], grid["summary"]
    assert evidence.token_grid((1000, 2048))["tile"] == (128, 256)
    blocks = evidence.expert_row_blocks([0, 129, 129, 300])
    assert blocks == [(0, 128, "e0 t0"), (128, 129, "e0 t1"), (129, 257, "e2 t0"), (257, 300, "e2 t1")]


def test_evidence_hook_reads_the_other_fixtures():
    from workbench.diagnose import EvidenceContext

    from stages.moe import evidence

    ev = EvidenceContext(fixture="random", outputs_right={"y": False},
                         fixtures={"unit-topk-weights": {"y": True}, "onehot-routing": {"y": True}})
    hints = evidence.moe_evidence(ev)
    assert any("top-k weight" in h for h in hints) and any("onehot-routing passes" in h for h in hints)
    assert evidence.moe_evidence(EvidenceContext(fixture="random", outputs_right={"y": True})) == []


def test_expert_offset_model_is_stage_cs_walk():
    """expert-offset-off-by-one's writer (mutants.offset_writer) is stage C's tile walk under
    bug=expert_offset_off_by_one (tile_scheduler.walk_model): each row written by the expert
    whose shifted tiles cover it, -1 where no tile stores, -2 where two tiles race."""
    import random as rnd
    from types import SimpleNamespace

    from stages.moe import mutants
    from stages.moe import tile_scheduler as ts

    rng = rnd.Random(7)
    for _ in range(50):
        counts = [rng.choice([0, 1, 5, 127, 128, 129, 200, 300]) for _ in range(rng.randint(1, 9))]
        cu = [0]
        for c in counts:
            cu.append(cu[-1] + c)
        writers = [[] for _ in range(cu[-1])]
        for cta in ts.walk_model(cu, 1, 128, 4, bug="expert_offset_off_by_one"):
            for t in cta:
                for r in range(t.row_start, t.row_start + t.rows):
                    writers[r].append(t.expert)
        want = [-1 if not w else (w[0] if len(set(w)) == 1 else -2) for w in writers]
        P = SimpleNamespace(cu=cu, E=len(counts), R=cu[-1], device="cpu")
        assert mutants.offset_writer(P).tolist() == want, counts
