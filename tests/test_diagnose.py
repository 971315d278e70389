"""Diagnostics (workbench/diagnose, stages/fmha/mutants.py): each mutant is recognised from
its own output plus kernel-like bf16 noise, correct outputs never get a bug explanation,
what each fixture cannot see, error/read maps, pictures, serialisation and rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_cases as A  # noqa: E402

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")

from workbench.diagnose import Diagnosis, MutantContext, diagnose, diagnosis_markdown, mutants_for, render_diagnosis  # noqa: E402
from workbench.diagnose import core  # noqa: E402
from workbench.kernels.fixtures import get_fixture  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [(c, f) for c, fs in A.STAGE_FIXTURES.items() for f in fs]
SEEN = 0.05  # a mutant this far (score) from the reference must be named first


def _classified(preds, expected, names):
    return {
        m: {n: core._pred_classes(core._as_pred(r[n]), expected[n].shape, expected[n].device) for n in names if n in r}
        for m, r in preds.items()
    }


@pytest.mark.slow  # ~35 full diagnoses per case, 34 cases: the bulk of the diagnostics' CPU time
@pytest.mark.parametrize("cfg_name,fixture", SWEEP, ids=[f"{c}-{f}" for c, f in SWEEP])
def test_each_mutant_is_recognised(cfg_name, fixture):
    """Each mutant's prediction, perturbed like a bf16 kernel's output (A.kernel_like), is
    diagnosed as that mutant: where the fixture sees it clearly (prediction >= 0.05 from the
    reference) it comes first, or a mutant with the same prediction on this fixture (a twin,
    < DISTINCT apart) does and lists it in same_as; where it is faint (0.02-0.05) any
    explanation is it or a twin; where the fixture cannot see it (< 0.02) nothing else is
    blamed."""
    fixtures, mutants = A.load()
    cfg, inputs, expected, outs, params, variants = A.case(cfg_name, fixture)
    preds, _ = A.predictions(cfg_name, fixture)
    names = list(outs)
    refc = {n: core.classify(expected[n].float()) for n in names}
    cls = _classified(preds, expected, names)
    dist = {m: core._pred_distance(c, {}, refc, names) for m, c in cls.items()}
    cache: dict = {}
    failures = []
    for i, (m, res) in enumerate(sorted(preds.items())):
        out = A.kernel_like({**expected, **res}, outs, seed=i)
        d = diagnose(out, expected, inputs, params, variants, fixture, mutants, prediction_cache=cache)
        top = d.explanations[0].name if d.explanations else None

        def twin(x):
            return x == m or core._pred_distance(cls[x], cls[m], refc, names) < core.DISTINCT

        if dist[m] >= SEEN:
            if top is None:
                failures.append(f"{m} (dist {dist[m]:.3f}): not explained: {d.headline}")
            elif not twin(top):
                failures.append(f"{m} (dist {dist[m]:.3f}): explained as {top}: {d.headline}")
            elif top != m and m not in d.explanations[0].same_as:
                failures.append(f"{m}: twin {top} first but same_as = {d.explanations[0].same_as}")
        elif top is not None and not twin(top):
            failures.append(f"{m} (faint/unseen, dist {dist[m]:.3f}): wrongly explained as {top}")
    assert not failures, f"{cfg_name}/{fixture}:\n" + "\n".join(failures)


# What the fixtures cannot see (docs/diagnostics.md has the full table,
# `python tests/attention_cases.py` prints it). Each entry is a claim of the fixture docs.
MUST_BE_UNSEEN = {
    ("c", "ones-v"): {"kv-tile0", "kv-stall-2", "v-tile0", "p-layout", "transposed", "col-stride2", "q-tile0", "q-tiles-swapped"},
    ("d", "ones-v"): {"gqa-mod", "bhsd-store", "transposed", "kv-tile0", "v-tile0"},
    ("b", "uniform-logits"): {"kv-tile0", "scale-twice", "no-log2e", "no-scale", "exp-not-exp2", "no-max", "p-layout", "transposed"},
    ("c", "onehot-p"): {"no-final-div", "no-max"},
    ("c", "iota"): {"no-rescale", "no-o-rescale", "no-max"},
    ("c", "random"): {"no-max"},
    ("b", "random"): {"no-max"},
    ("c", "single"): {"no-o-rescale"},
    ("d", "random"): {"kv-tail-unmasked"},  # bottom-right causal masks every key past n anyway
    ("a", "large-logits"): {"kv-tile0", "q-tile0", "p-layout"},
    ("d-softcap", "random"): {"softcap-missing", "softcap-clamp", "softcap-after-max"},  # |S·scale| << c = 50
}
MUST_BE_SEEN = {
    ("c", "random"): {"kv-tile0", "kv-stall-2", "kv-skip-1", "v-tile0", "v-tile-lag", "no-rescale", "no-o-rescale", "no-final-div",
                      "no-log2e", "exp-not-exp2", "scale-twice", "no-scale", "p-layout", "transposed", "col-stride2", "q-tile0"},
    ("c", "large-logits"): {"no-max"},
    ("b", "large-logits"): {"no-max"},
    ("c", "ones-v"): {"no-final-div", "no-o-rescale", "zeros", "unwritten"},
    ("c", "onehot-p"): {"v-tile-lag", "v-tile0", "p-layout", "q-tile0"},
    ("d-plain", "random"): {"kv-tail-unmasked", "heads-head0", "batch0", "bhsd-input", "bhsd-store", "causal-spurious",
                            "qk-d-first-half", "qk-d-last-half"},
    ("b", "random"): {"softmax-per-tile", "p-first-tile-only", "quad-sum-missing", "softmax-missing", "no-final-div"},
    ("d", "random"): {"gqa-mod", "causal-missing", "causal-misaligned", "causal-diag-excluded", "heads-head0"},
    ("a", "random"): {"no-scale", "scale-twice", "exp-not-exp2", "kv-tile0", "p-layout", "transposed"},
    ("d-softcap", "softcap-logits"): {"softcap-missing", "softcap-before-scale", "softcap-clamp"},
    ("d-softcap5", "softcap-logits"): {"softcap-missing", "softcap-before-scale", "softcap-after-max", "softcap-clamp"},
}
MUST_BE_TWINS = {
    ("a", "random"): [("kv-col-tile0", "kv-tile0")],  # S has no softmax: pinning K = copying columns
    ("c", "uniform-logits"): [("kv-tile0", "v-tile0")],  # equal logits: only V tells tiles apart
    ("c", "large-logits"): [("kv-skip-1", "kv-tile0")],  # same O; LSE differs by log(T) on LSE ~ 100
    ("c", "single"): [("kv-tile0", "zeros"), ("v-tile-lag", "zeros")],  # the one V element is never read
    # c = 50: exp(c tanh((z - m) / c)) ~ exp(z - m) wherever P is not ~0 (a small cap tells them apart)
    ("d-softcap", "softcap-logits"): [("softcap-after-max", "softcap-missing")],
}


@pytest.mark.parametrize("key", sorted(set(MUST_BE_UNSEEN) | set(MUST_BE_SEEN) | set(MUST_BE_TWINS)), ids=lambda k: f"{k[0]}-{k[1]}")
def test_what_fixtures_can_and_cannot_see(key):
    """The distinguishability claims of the fixtures and docs hold: listed mutants are (un)seen
    by the fixture (prediction within DISTINCT of the reference), listed pairs look alike."""
    cfg, inputs, expected, outs, params, variants = A.case(*key)
    preds, _ = A.predictions(*key)
    names = list(outs)
    refc = {n: core.classify(expected[n].float()) for n in names}
    cls = _classified(preds, expected, names)
    for m in MUST_BE_UNSEEN.get(key, ()):
        dist = core._pred_distance(cls[m], {}, refc, names)
        assert dist < core.DISTINCT, f"{key}: {m} is visible (dist {dist:.3f})"
    for m in MUST_BE_SEEN.get(key, ()):
        dist = core._pred_distance(cls[m], {}, refc, names)
        assert dist >= SEEN, f"{key}: {m} is not clearly visible (dist {dist:.3f})"
    for a, b in MUST_BE_TWINS.get(key, ()):
        dist = core._pred_distance(cls[a], cls[b], refc, names)
        assert dist < core.DISTINCT, f"{key}: {a} and {b} are distinguishable ({dist:.3f})"


NO_ALARM = [(c, f) for c, fs in A.STAGE_FIXTURES.items() for f in fs]


@pytest.mark.parametrize("cfg_name,fixture", NO_ALARM, ids=[f"{c}-{f}" for c, f in NO_ALARM])
def test_correct_outputs_get_no_bug_explanation(cfg_name, fixture):
    """No false alarm: 50 seeds of a correct kernel's outputs (even seeds: the fp32 reference
    with one-ulp bf16 noise and bf16 rounding; odd seeds: P rounded to bf16 before P·V,
    fp32 accumulation, then the same noise) are diagnosed 'ok' and name no bug."""
    fixtures, mutants = A.load()
    cfg = A.CONFIGS[cfg_name]
    ins, outs, params = A.specs_for(cfg)
    fx = get_fixture(fixtures, fixture, ins)
    variants = dict(fx.variants)
    worst = 0.0
    for seed in range(50):
        inputs = fx.make(ins, params, seed, "cpu")
        expected = A.reference(cfg, inputs, variants)
        values = expected if seed % 2 == 0 else A.lowp_kernel(cfg, inputs, variants, outs)
        out = A.kernel_like(values, outs, seed)
        d = diagnose(out, expected, inputs, params, variants, fixture, mutants)
        worst = max(worst, d.reference_score)
        assert d.status == "ok" and not d.explanations, f"seed {seed}: {d.headline}"
    assert worst < core.fail_min(2.0**-8) / 2  # and with a margin of 2x


def test_explanations_need_a_failing_reference_even_when_forced():
    """The second guard: even with FAIL_MIN out of the way, a correct output is explained by
    no mutant, since none fits 4x better than the reference (RATIO)."""
    fixtures, mutants = A.load()
    cfg, inputs, expected, outs, params, variants = A.case("c", "random")
    out = A.kernel_like(expected, outs, 0)
    d = diagnose(out, expected, inputs, params, variants, "random", mutants, force=True)
    assert d.thresholds["fail_min"] == 0.0 and len(d.candidates) >= 5  # the mutants were really tried
    assert d.candidates and not d.explanations and d.status == "unexplained"


# ---- specific diagnoses ---------------------------------------------------------------------

# The hypotheses the retired benchmarks/gpu_check_ab.py tested by hand, as mutants (the others
# were mutants already: kv-tile0, q-tile0, transposed, no-scale, scale-twice, no-final-div).
GPU_CHECK_HYPOTHESES = [
    ("b", "random", "softmax-per-tile"),
    ("b", "iota", "p-first-tile-only"),
    ("b", "uniform-logits", "quad-sum-missing"),  # P = 4/n exactly: the script's "x4 too big"
    ("b", "single", "softmax-missing"),
    ("d-plain", "random", "qk-d-first-half"),
    ("d-plain", "iota", "qk-d-last-half"),
]


@pytest.mark.parametrize("cfg_name,fixture,name", GPU_CHECK_HYPOTHESES, ids=[h[2] for h in GPU_CHECK_HYPOTHESES])
def test_gpu_check_hypotheses_are_named(cfg_name, fixture, name):
    """Each bug model carried over from the retired GPU check script is the top explanation of
    its own output (correct outputs get none: test_correct_outputs_get_no_bug_explanation runs
    every mutant, these included)."""
    d = A.diagnose_mutant(cfg_name, fixture, name)
    assert d.status == "explained" and d.best.name == name, d.headline


def test_headline_names_the_bug_and_the_reference_fit():
    d = A.diagnose_mutant("c", "random", "kv-tile0")
    assert d.status == "explained" and d.best.name == "kv-tile0"
    assert "'kv-tile0'" in d.headline and "true reference gives cos" in d.headline
    assert d.best.cos > 0.9999 and d.reference["o"].cos < 0.9


def test_nan_rows_of_a_missing_max_are_explained():
    """no-max on large-logits: NaN rows (inf/inf, 0/0) are matched class by class."""
    d = A.diagnose_mutant("c", "large-logits", "no-max")
    assert d.best.name == "no-max"
    assert d.reference["o"].mismatch > 0.3 and d.best.mismatch == 0.0


def test_unwritten_rows_are_matched_against_poison(tmp_path):
    """Rows 64-127 of each tile left as poison: explained, and the error map points at the
    second warpgroup."""
    d = A.diagnose_mutant("c", "random", "half-rows-unwritten", tmp_path)
    assert d.best.name == "half-rows-unwritten"
    emap = next(e for e in d.error_maps if e.output == "o")
    assert "second warpgroup" in emap.summary
    assert [row[0] > 0 for row in emap.bad] == [i % 2 == 1 for i in range(len(emap.bad))]


def test_under_initcheck_leftover_poison_bytes_are_not_read_as_unwritten_rows():
    """poisoned=False (the worker under initcheck leaves outputs as allocated): bytes that
    happen to match the poison are NaN, not 'unwritten', so the unwritten-rows mutant no
    longer explains them; the same output poisoned by the worker is that mutant's."""
    _, mutants = A.load()
    _, inputs, expected, outs, params, variants = A.case("c", "random")
    preds, _ = A.predictions("c", "random")
    out = A.kernel_like({**expected, **preds["half-rows-unwritten"]}, outs)
    poisoned = diagnose(out, expected, inputs, params, variants, "random", mutants)
    assert poisoned.best is not None and poisoned.best.name == "half-rows-unwritten"
    left = diagnose(out, expected, inputs, params, variants, "random", mutants, poisoned=False)
    assert left.best is None or left.best.name != "half-rows-unwritten", left.headline
    assert left.reference["o"].mismatch == poisoned.reference["o"].mismatch > 0  # still seen, as NaN


def test_read_map_shows_the_lagging_v_tile(tmp_path):
    """onehot-p with V one tile behind: each query read the same row one KV tile earlier."""
    d = A.diagnose_mutant("c", "onehot-p", "v-tile-lag", tmp_path)
    rm = d.readmap
    assert rm is not None and rm.correct == 0
    assert "exactly -1 tile(s) away" in rm.summary
    # queries that should read tile 0 meet a zero V buffer: no V row matches
    zero_tile = sum(c for e, g, c in rm.confusion if e == 0)
    assert rm.unmatched == zero_tile
    assert all(g == e - 1 for e, g, c in rm.confusion if e > 0)
    assert rm.picture and (tmp_path / rm.picture).exists()


def test_read_map_of_a_correct_output_is_all_correct():
    fixtures, mutants = A.load()
    cfg, inputs, expected, outs, params, variants = A.case("d", "onehot-p")
    d = diagnose(A.kernel_like(expected, outs), expected, inputs, params, variants, "onehot-p", mutants)
    assert d.readmap.correct == d.readmap.queries > 0 and d.status == "ok"


def test_read_map_counts_only_rows_that_read_something_and_names_a_row_shift():
    """The read map's own rules on made-up rows: a row the reference leaves all zero (a query
    that sees no key) is not a query of the map, so a quarter of such rows still gives one;
    every row read 5 rows late (not a whole KV tile) is stated as exactly +5 rows away."""
    import torch

    from workbench.diagnose.readmap import read_map

    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 300, 16, generator=g)
    want = torch.randint(0, 290, (1, 200), generator=g)
    exp = v[0, want[0]].unsqueeze(0).clone()
    exp[:, 150:] = 0  # 50 queries that see no key
    got = v[0, want[0] + 5].unsqueeze(0).clone()
    got[:, 150:] = 0
    rm = read_map("o", got, exp, v)
    assert rm is not None and rm.queries == 150 and rm.correct == 0
    assert "150/150 wrong reads are exactly +5 rows away" in rm.summary, rm.summary
    assert read_map("o", exp, exp, v).correct == 150
    assert read_map("o", exp[:, 150:], exp[:, 150:], v) is None  # no row read anything


def test_p_layout_permutation_model():
    """p-layout: a permutation within each 128 tile that keeps 8-column chunks whole and
    pairs chunk j with chunk j + 8 in k-block j (documented model)."""
    from stages.fmha.mutants import p_layout_perm

    perm = p_layout_perm()
    assert sorted(perm.tolist()) == list(range(128))
    assert perm[:16].tolist() == list(range(0, 8)) + list(range(64, 72))
    assert perm[16:32].tolist() == list(range(8, 16)) + list(range(72, 80))
    assert all(int(perm[8 * c]) % 8 == 0 for c in range(16))


def test_calibrates_against_the_stage_reference_module():
    """The FMHA mutants reproduce stages/fmha/reference.py for S, P, O and LSE (exp and
    identity), so they model the stage's own conventions."""
    R = pytest.importorskip("stages.fmha.reference")
    from stages.fmha.mutants import Problem

    fixtures, _ = A.load()
    for kind, softmax in [("a", "exp"), ("b", "exp"), ("b", "identity"), ("c", "exp"), ("c", "identity")]:
        cfg = A.CONFIGS[kind]
        ins, outs, params = A.specs_for(cfg)
        inputs = get_fixture(fixtures, "random", ins).make(ins, params, 0, "cpu")
        if kind == "a":
            expected = {"s": R.scores(inputs["q"], inputs["k"], torch.float32)}
        elif kind == "b":
            expected = {"p": R.softmax_probs(inputs["q"], inputs["k"], torch.float32, softmax=softmax)}
        else:
            o, lse = R.attention(inputs["q"], inputs["k"], inputs["v"], torch.float32, softmax=softmax)
            expected = {"o": o, "lse": lse}
        cx = MutantContext(inputs, expected, params, {"softmax": softmax}, "random")
        P = Problem(cx)
        want = set(expected) - ({"lse"} if softmax == "identity" else set())
        assert want <= P.calibrated, (kind, softmax, cx.notes)


def test_uncalibrated_reference_is_reported_not_guessed():
    """A stage whose reference the FMHA mutants cannot reproduce gets a note, and those
    mutants predict nothing (no explanation built on a wrong model)."""
    fixtures, mutants = A.load()
    cfg, inputs, expected, outs, params, variants = A.case("c", "random")
    weird = {"o": expected["o"] * 2.0, "lse": expected["lse"]}  # a reference of another convention
    out = A.kernel_like(expected, outs)  # the kernel disagrees with it
    d = diagnose(out, weird, inputs, params, variants, "random", mutants)
    assert any("cannot reproduce the reference of 'o'" in n for n in d.notes)
    assert d.reference_score > 0.3
    assert not any(not mutants[c.name].generic for c in d.explanations)


# ---- registry ------------------------------------------------------------------------------
def test_registry_generic_and_kernel_mutants():
    generic = mutants_for(None)
    fmha = mutants_for(ROOT / "stages" / "fmha")
    assert {"transposed", "zeros", "unwritten", "q-tile0", "col-stride2"} <= set(generic)
    assert all(m.generic for m in generic.values())
    kernel_only = set(fmha) - set(generic)
    assert {"kv-tile0", "kv-stall-2", "kv-skip-1", "no-rescale", "no-final-div", "p-layout", "no-max",
            "no-log2e", "scale-twice", "exp-not-exp2", "gqa-mod"} <= kernel_only
    for m in fmha.values():
        assert m.description and m.outputs and m.dims


def test_load_mutants_reloads_a_changed_file(tmp_path):
    from workbench.diagnose import load_mutants

    f = tmp_path / "mutants.py"
    f.write_text("from workbench.diagnose import mutant\n@mutant('t-one', 'first')\ndef a(cx):\n    return None\n")
    load_mutants(tmp_path)
    assert "t-one" in mutants_for(tmp_path)
    import os
    import time

    f.write_text("from workbench.diagnose import mutant\n@mutant('t-two', 'second')\ndef a(cx):\n    return None\n")
    later = time.time() + 5
    os.utime(f, (later, later))
    names = set(mutants_for(tmp_path))
    assert "t-two" in names and "t-one" not in names


def test_import_is_cheap():
    """`import workbench.diagnose` loads no torch (the CLI must start fast)."""
    code = "import sys, workbench.diagnose as d; d.mutants_for(None); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


# ---- data, rendering, pictures --------------------------------------------------------------
def test_to_dict_from_dict_roundtrip(tmp_path):
    d = A.diagnose_mutant("c", "onehot-p", "v-tile-lag", tmp_path)
    data = d.to_dict()
    text = json.dumps(data, allow_nan=False)  # JSON-safe: no NaN/inf anywhere
    back = Diagnosis.from_dict(json.loads(text))
    assert back.to_dict() == data
    assert back.best.name == d.best.name and back.readmap.summary == d.readmap.summary
    assert back.error_maps[0].grid == d.error_maps[0].grid


def test_render_short_full_and_markdown(tmp_path):
    from rich.console import Console

    d = A.diagnose_mutant("d", "random", "gqa-mod", tmp_path)
    assert d.best.name == "gqa-mod"
    for full in (False, True):
        console = Console(record=True, width=140)
        console.print(render_diagnosis(d.to_dict(), full=full))
        text = console.export_text()
        assert "gqa-mod" in text
        if full:
            assert "mutant references" in text and "read map" not in text
            assert ("this fixture cannot see" in text) == bool(d.unseen)
    md = diagnosis_markdown(d.to_dict(), "pics")
    assert "**Diagnosis (explained):**" in md and "`gqa-mod`" in md
    for pic in d.pictures:
        assert f"(pics/{pic})" in md
    assert render_diagnosis({"not": "a diagnosis"}) is None


def test_error_map_grid_for_4d_is_per_head():
    """4-D O: one grid column per (batch, head), 64-row blocks; heads-head0 leaves head 0
    correct and every other head wrong."""
    d = A.diagnose_mutant("d-plain", "random", "heads-head0")
    emap = next(e for e in d.error_maps if e.output == "o")
    assert emap.col_names == ["b0h0", "b0h1", "b1h0", "b1h1"]
    assert len(emap.grid) == -(-256 // 64) and len(emap.grid[0]) == 4
    ok = [max(row[c] for row in emap.grid) / emap.ref_max <= emap.ok_level for c in range(4)]
    assert ok == [True, False, True, False]


def _pixels(path: Path):
    """The picture as an (H, W, 3) float array in [0, 1] (matplotlib reads PNGs back)."""
    import matplotlib.image

    return matplotlib.image.imread(str(path))[..., :3]


def _has(img, rgb, tol=0.05) -> bool:
    import numpy as np

    return bool((np.abs(img - np.array(rgb)).max(axis=-1) < tol).any())


def test_pictures_show_what_the_data_says(tmp_path):
    """Error maps and the read map are PNGs of a size people read, and their colours follow the
    data: a NaN where the reference is finite draws magenta, an unwritten element cyan, a wrong
    read red; a correct output draws none of them."""
    pytest.importorskip("matplotlib")
    from workbench.diagnose import pictures

    d = A.diagnose_mutant("c", "onehot-p", "p-layout", tmp_path)
    assert len(d.pictures) == 3  # o and lse error maps, read map
    for name in d.pictures:
        img = _pixels(tmp_path / name)
        assert img.shape[0] >= 400 and img.shape[1] >= 400, (name, img.shape)
    readmap = _pixels(tmp_path / next(p for p in d.pictures if p.endswith("readmap.png")))
    assert _has(readmap, (0.9, 0.15, 0.15))  # p-layout: queries read other rows

    import torch

    err = torch.zeros(256, 128)
    bad = torch.zeros(256, 128, dtype=torch.bool)
    unwritten = torch.zeros(256, 128, dtype=torch.bool)
    drawing = {"err": err, "bad": bad, "unwritten": unwritten, "scale": 1.0, "tile": (64, 128), "group": None}
    clean = _pixels(pictures.draw_error_map(tmp_path / "clean.png", drawing, title="clean"))
    bad[70, 5] = True
    unwritten[200:210, 100:110] = True
    err[10:20, 10:20] = 0.5
    broken = _pixels(pictures.draw_error_map(tmp_path / "broken.png", drawing, title="broken", row_label="64-row block"))
    # the legend shows both swatches in every picture: count the drawn pixels, not their presence
    import numpy as np

    def count(img, rgb):
        return int((np.abs(img - np.array(rgb)).max(axis=-1) < 0.05).sum())

    assert count(broken, pictures.CYAN) > count(clean, pictures.CYAN) + 50
    assert count(broken, pictures.MAGENTA) > count(clean, pictures.MAGENTA)


def test_without_matplotlib_the_diagnosis_says_so_and_draws_nothing(tmp_path, monkeypatch):
    from workbench.diagnose import pictures

    monkeypatch.setattr(pictures, "available", lambda: False)
    d = A.diagnose_mutant("c", "onehot-p", "p-layout", tmp_path)
    assert d.pictures == [] and d.best.name == "p-layout"  # the diagnosis itself is whole
    assert any("matplotlib" in note for note in d.notes)
    assert not list(tmp_path.glob("*.png"))


def test_run_diagnosis_entry_point(tmp_path):
    """The runner's entry point returns JSON-safe data with pictures under pictures/."""
    from workbench.diagnose import run_diagnosis

    cfg, inputs, expected, outs, params, variants = A.case("c", "random")
    preds, _ = A.predictions("c", "random")
    out = A.kernel_like({**expected, **preds["no-rescale"]}, outs)
    data = run_diagnosis(outputs=out, expected=expected, inputs=inputs, params=params, variants=variants,
                         fixture="random", kernel_dir=ROOT / "stages" / "fmha", picture_dir=tmp_path, label="random#1")
    json.dumps(data, allow_nan=False)
    assert data["status"] == "explained" and data["explanations"][0]["name"] == "no-rescale"
    assert data["pictures"] and all(p.startswith("pictures/random-1-") for p in data["pictures"])
    assert all((tmp_path / p).exists() for p in data["pictures"])


def test_two_bugs_are_not_forced_into_one():
    """gqa-mod in O plus rows 64-127 left unwritten: no single mutant explains it, but the
    diagnosis says gqa-mod fits every written element and a second bug left the rest."""
    from workbench.diagnose import Pred

    fixtures, mutants = A.load()
    cfg, inputs, expected, outs, params, variants = A.case("d", "random")
    preds, _ = A.predictions("d", "random")
    o = preds["gqa-mod"]["o"]
    rows = torch.arange(o.shape[1])
    unw = ((rows % 128) >= 64).view(1, -1, 1, 1).expand_as(o)
    out = A.kernel_like({**expected, "o": Pred(o, unwritten=unw), "lse": preds["gqa-mod"]["lse"]}, outs)
    d = diagnose(out, expected, inputs, params, variants, "random", mutants)
    assert d.status == "unexplained" and not d.explanations
    assert d.masked_match == "gqa-mod" and "plus a second bug" in d.headline


def test_garbage_is_not_explained():
    """Random numbers in place of O and LSE: nothing fits, nothing is blamed."""
    fixtures, mutants = A.load()
    cfg, inputs, expected, outs, params, variants = A.case("c", "random")
    g = torch.Generator().manual_seed(5)
    out = {n: torch.randn(expected[n].shape, generator=g).to(outs[n].torch_dtype()) for n in outs}
    d = diagnose(out, expected, inputs, params, variants, "random", mutants)
    assert d.status == "unexplained" and not d.explanations and d.masked_match is None
    assert "no known bug explains it" in d.headline


def test_wb_run_names_the_injected_bug(tmp_path):
    """End to end through the runner: a CPU attention stage with an injected KV-tile bug
    (tests/data/attn_ws, with this repo's fixtures, FMHA mutants and view hooks copied in) fails, and
    run.json, report.md, the pictures and `wb explain` all name 'kv-tile0'."""
    import shutil

    from conftest import run_wb

    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "tests" / "data" / "attn_ws", ws)
    (ws / "fixtures").mkdir(exist_ok=True)
    shutil.copy(ROOT / "fixtures" / "attention.py", ws / "fixtures" / "attention.py")
    shutil.copy(ROOT / "stages" / "fmha" / "mutants.py", ws / "stages" / "attn" / "mutants.py")
    shutil.copy(ROOT / "stages" / "fmha" / "evidence_maps.py", ws / "stages" / "attn" / "evidence_maps.py")
    env = {"WB_WORKER_IDLE": "10"}
    proc = run_wb("run", "c", "-V", "bug=kv-tile0", "--seeds", "1", "--json", cwd=ws, env=env)
    assert proc.returncode == 1, proc.stderr
    run_id = json.loads(proc.stdout)["id"]
    run_dir = ws / "runs" / run_id
    rec = json.loads((run_dir / "run.json").read_text())
    cases = {c["fixture"]: c for c in rec["results"]}
    assert set(cases) == {"random", "onehot-p"} and all(c["verdict"] == "FAIL" for c in cases.values())
    for name, case in cases.items():
        diag = Diagnosis.from_dict(case["diagnosis"])
        assert diag.best is not None and diag.best.name == "kv-tile0", (name, case["diagnosis"])
        assert all((run_dir / p).exists() for p in diag.pictures) and diag.pictures
    assert cases["onehot-p"]["diagnosis"]["readmap"]["queries"] == 256
    report = (run_dir / "report.md").read_text()
    assert "'kv-tile0'" in report and "](pictures/" in report
    proc = run_wb("explain", run_id, cwd=ws, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "kv-tile0" in proc.stdout and "mutant references" in proc.stdout


# stage C's bug variants (kernel.yaml) -> the mutant that must explain them
STAGE_C_BUGS = [
    ("kv_tile0", True, "kv-tile0"),
    ("no_rescale", True, "no-o-rescale"),  # the stage's no_rescale: O not rescaled, l is
    ("pv_layout", True, "p-layout"),
    ("pv_rowmajor", True, "pv-rowmajor"),
    ("none", False, "no-rescale"),  # variant rescale=off: neither O nor l rescaled
]


@pytest.mark.parametrize("bug,rescale,name", STAGE_C_BUGS, ids=[f"{b}-rescale{r}" for b, r, _ in STAGE_C_BUGS])
@pytest.mark.parametrize("fixture", ["random", "onehot-p"])
def test_stage_c_bug_emulation_is_named(bug, rescale, name, fixture):
    """Cross-check with an independent model: stage C's own torch emulation of its injected
    bugs (stage_c_online.emulate_online, written with the kernel) is diagnosed, against the
    stage's own reference, as the matching mutant."""
    sc = pytest.importorskip("stages.fmha.stage_c_online")
    fixtures, mutants = A.load()
    cfg, inputs, _, outs, params, variants = A.case("c", fixture)
    variants = {"softmax": "exp", "rescale": "on" if rescale else "off", "bug": bug}
    expected = sc.StageC().reference(inputs, params, variants, torch.float32)
    o, lse = sc.emulate_online(inputs["q"], inputs["k"], inputs["v"], bug=bug, rescale=rescale)
    out = {"o": o.to(torch.bfloat16), "lse": lse.float()}
    d = diagnose(out, expected, inputs, params, variants, fixture, mutants)
    assert d.status == "explained" and d.best.name == name and not d.best.same_as, d.headline
    assert d.best.score < 0.01  # the two models agree to bf16 rounding


@pytest.mark.parametrize("cfg_name", ["d", "d-plain"])
@pytest.mark.parametrize("softmax", ["exp", "identity"])
def test_calibrates_against_stage_d_reference(cfg_name, softmax):
    """The FMHA mutants reproduce stage D's own reference (4-D, GQA, causal with m != n,
    whichever causal alignment it uses), so stage D failures get FMHA explanations."""
    sd = pytest.importorskip("stages.fmha.stage_d_fmha")
    from stages.fmha.mutants import Problem

    fixtures, _ = A.load()
    ins, outs, params = A.specs_for(A.CONFIGS[cfg_name])
    inputs = get_fixture(fixtures, "random", ins).make(ins, params, 0, "cpu")
    expected = sd.StageD().reference(inputs, params, {"softmax": softmax}, torch.float32)
    cx = MutantContext(inputs, expected, params, {"softmax": softmax}, "random")
    want = {"o"} if softmax == "identity" else {"o", "lse"}
    assert want <= Problem(cx).calibrated, cx.notes
