"""The attention fixtures (fixtures/attention.py): determinism, shapes, and every claim a
fixture makes about its data (exactness, one-hotness, margins, overflow); and the registry's
rule for one name defined by several files (resolved by the stage's inputs)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_cases as A  # noqa: E402

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")

from workbench.errors import UserError  # noqa: E402
from workbench.kernels import fixtures as F  # noqa: E402
from workbench.kernels.stage import Params, TensorSpec  # noqa: E402

ALL = ["random", "identity-softmax", "ones-v", "single", "onehot-p", "iota", "uniform-logits", "onehot-logits", "large-logits",
       "softcap-logits"]


@pytest.fixture(scope="module")
def workspace_fixtures():
    return A.load()[0]


@pytest.fixture(scope="module")
def registry(workspace_fixtures):
    """attention.py's fixtures by name."""
    return {f.name: f for f in workspace_fixtures if f.where == "fixtures/attention.py"}


def specs2(m, n, d=64, v=True, dtype="bf16"):
    s = {"q": TensorSpec((m, d), dtype), "k": TensorSpec((n, d), dtype)}
    if v:
        s["v"] = TensorSpec((n, d), dtype)
    return s


def specs4(b, m, n, h, hk, d=64, dtype="bf16"):
    return {
        "q": TensorSpec((b, m, h, d), dtype),
        "k": TensorSpec((b, n, hk, d), dtype),
        "v": TensorSpec((b, n, hk, d), dtype),
    }


SHAPES = [
    ("2d", specs2(256, 384), Params({"d": 64})),
    ("2d-tail", specs2(200, 333), Params({"d": 64})),
    ("2d-n1", specs2(1, 1), Params({"d": 64})),
    ("2d-noV", specs2(256, 640, v=False), Params({"d": 64})),
    ("4d-gqa-causal", specs4(2, 200, 333, 4, 2, d=128), Params({"causal": True})),
    ("4d-fp16", specs4(1, 128, 256, 2, 2, dtype="fp16"), Params({"causal": False})),
]


def _bits(t):
    return t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t


@pytest.mark.parametrize("shape_name,specs,params", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_determinism(workspace_fixtures, name, shape_name, specs, params):
    """Every fixture fills every input with the spec's shape and dtype, the same seed gives
    bit-identical tensors, and nothing is NaN/Inf. Attention inputs resolve every name to
    attention.py's fixture (moe.py's "random" does not apply to them)."""
    fx = workspace_fixtures.resolve(name, specs)
    if fx is None:
        pytest.skip(f"{name} needs {workspace_fixtures.variants(name)[0].needs}")
    assert fx.where == "fixtures/attention.py"
    a = fx.make(specs, params, 3, "cpu")
    b = fx.make(specs, params, 3, "cpu")
    assert set(a) == set(specs)
    for n, spec in specs.items():
        assert tuple(a[n].shape) == spec.shape, n
        assert a[n].dtype == spec.torch_dtype(), n
        assert torch.equal(_bits(a[n]), _bits(b[n])), f"{name}: {n} differs between two calls with seed 3"
        assert torch.isfinite(a[n].float()).all(), n


@pytest.mark.parametrize("name", ["random", "identity-softmax", "onehot-p", "onehot-logits"])
def test_seed_changes_random_data(registry, name):
    """Fixtures with random content draw different data for different seeds."""
    specs = specs2(256, 384)
    a = registry[name].make(specs, Params({}), 0, "cpu")
    b = registry[name].make(specs, Params({}), 1, "cpu")
    assert not torch.equal(a["k"].float(), b["k"].float())


def test_fills_inputs_it_does_not_know(registry):
    """Inputs beyond q/k/v are filled: floats with N(0,1), integers with zeros."""
    specs = {**specs2(128, 128), "bias": TensorSpec((128,), "fp32"), "seqlens": TensorSpec((2,), "int32")}
    out = registry["ones-v"].make(specs, Params({}), 0, "cpu")
    assert out["bias"].shape == (128,) and out["bias"].std() > 0.5
    assert out["seqlens"].dtype == torch.int32 and int(out["seqlens"].abs().sum()) == 0


def test_metadata(registry):
    """Each fixture says what a pass proves and what it hides; needs/variants are declared."""
    for name in ALL:
        fx = registry[name]
        assert len(fx.isolates) > 40 and len(fx.hides) > 40, name
        assert {"q", "k"} <= set(fx.needs), name  # no attention fixture applies to another kernel's stage
    assert registry["random"].seeds == 3
    assert registry["identity-softmax"].variants == {"softmax": "identity"}
    for name in ("ones-v", "onehot-p"):
        assert "v" in registry[name].needs
    assert not registry["ones-v"].applies_to(["q", "k"])


# ---- claims about the data -------------------------------------------------------------
def _scale(d):
    return 1 / math.sqrt(d)


def _canon(t):
    return t.float().permute(0, 2, 1, 3) if t.dim() == 4 else t.float()[None, None]


def _logits(q, k, d):
    q4, k4 = _canon(q), _canon(k)
    if k4.shape[1] != q4.shape[1]:
        k4 = k4.repeat_interleave(q4.shape[1] // k4.shape[1], dim=1)
    return q4 @ k4.transpose(-1, -2) * _scale(d)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_iota_is_exact(registry, dtype):
    """iota: inputs are exact in the dtype, S = QKᵀ is an integer exact in fp32 whatever the
    accumulation order, V's column sums are exact, and 128 is not a period (tiles differ)."""
    specs = specs2(256, 640, d=128, dtype=dtype)
    x = registry["iota"].make(specs, Params({}), 0, "cpu")
    q, k, v = (x[n] for n in ("q", "k", "v"))
    s32 = q.float() @ k.float().T
    s64 = q.double() @ k.double().T
    assert torch.equal(s32.double(), s64)
    assert torch.equal(s64, s64.round())
    assert s64.abs().max() <= 6 * 128
    # a different accumulation order (reversed d) gives bit-identical fp32
    s_rev = q.float().flip(1) @ k.float().flip(1).T
    assert torch.equal(s_rev, s32)
    assert torch.equal(v.float().sum(0).double(), v.double().sum(0))
    assert not torch.equal(s32[:128], s32[128:256])  # Q tiles differ
    assert not torch.equal(s32[:, :128], s32[:, 128:256])  # KV tiles differ


def test_ones_v_gives_ones(registry):
    """ones-v: O = 1 everywhere (reference)."""
    cfg, inputs, expected, outs, params, variants = A.case("d", "ones-v")
    assert torch.allclose(expected["o"], torch.ones_like(expected["o"]), atol=1e-5)
    cfg, inputs, expected, outs, params, variants = A.case("c", "ones-v")
    assert torch.allclose(expected["o"], torch.ones_like(expected["o"]), atol=1e-5)


@pytest.mark.parametrize("n", [1, 128, 333, 640])
def test_single_element_is_in_the_last_tile(registry, n):
    """single: with v, one non-zero V element, in the last KV tile (last batch, last KV
    head); without v, one non-zero K element in a KV tile other than the first when n > 128."""
    x = registry["single"].make(specs2(128, n), Params({}), 0, "cpu")
    nz = x["v"].nonzero()
    assert len(nz) == 1
    assert int(nz[0, 0]) // 128 == (n - 1) // 128
    x = registry["single"].make(specs2(128, n, v=False), Params({}), 0, "cpu")
    nz = x["k"].nonzero()
    assert len(nz) == 1
    if n > 128:
        assert int(nz[0, 0]) // 128 >= 1
    x = registry["single"].make(specs4(2, 64, n, 4, 2), Params({}), 0, "cpu")
    nz = x["v"].nonzero()
    assert len(nz) == 1 and nz[0].tolist()[0] == 1 and nz[0].tolist()[2] == 1
    assert int(nz[0, 1]) // 128 == (n - 1) // 128


@pytest.mark.parametrize("case", ["2d", "4d-causal", "4d-tail"])
def test_onehot_p_is_one_hot_in_bf16(registry, case):
    """onehot-p: P rounds to exactly one 1.0 per row in bf16, so O rows are V rows; the chosen
    key is visible under causal masking (both conventions); consecutive queries read
    different KV tiles; query i and i + 128 read different keys."""
    if case == "2d":
        specs, params, causal = specs2(256, 640), Params({}), False
    elif case == "4d-causal":
        specs, params, causal = specs4(2, 300, 333, 4, 2, d=128), Params({"causal": True}), True
    else:
        specs, params, causal = specs4(1, 128, 700, 2, 1), Params({"causal": False}), False
    x = registry["onehot-p"].make(specs, params, 0, "cpu")
    d = specs["q"].shape[-1]
    s = _logits(x["q"], x["k"], d)
    M, N = s.shape[-2:]
    if causal:
        i = torch.arange(M).view(M, 1)
        j = torch.arange(N).view(1, N)
        s = s.masked_fill(j > torch.minimum(i, i + N - M), float("-inf"))
    p = torch.softmax(s, -1).to(torch.bfloat16).float()
    assert ((p == 1.0).sum(-1) == 1).all()
    # the rest is far below bf16 resolution next to 1.0 (2^-9): O rows are V rows
    assert float(torch.where(p == 1.0, torch.zeros_like(p), p).sum(-1).max()) < 1e-6
    top2 = s.topk(2, dim=-1).values
    assert float((top2[..., 0] - top2[..., 1]).min()) > 20  # margin in natural-log units
    keys = s.argmax(-1)
    if N > 128:
        tiles = keys // 128
        assert (tiles[..., 1:] != tiles[..., :-1]).float().mean() > 0.5
    if M > 128:
        # (causal rows near the diagonal may be clamped onto the same key)
        assert (keys[..., :128] != keys[..., 128:256]).float().mean() > 0.9


def test_uniform_logits(registry):
    """uniform-logits: S·scale is the same non-zero constant everywhere, so P = 1/n."""
    for d in (64, 128):
        x = registry["uniform-logits"].make(specs2(256, 384, d=d), Params({}), 0, "cpu")
        s = _logits(x["q"], x["k"], d)
        assert bool((s == s.flatten()[0]).all()) and float(s.flatten()[0]) != 0.0
        assert torch.allclose(torch.softmax(s, -1), torch.full_like(s, 1 / 384))


def test_onehot_logits(registry):
    """onehot-logits: each row's largest logit exceeds the others by a clear margin (>= 5),
    and the argmax moves across KV tiles."""
    x = registry["onehot-logits"].make(specs2(256, 640, v=False), Params({}), 0, "cpu")
    s = _logits(x["q"], x["k"], 64)
    top2 = s.topk(2, dim=-1).values
    assert float((top2[..., 0] - top2[..., 1]).min()) >= 5
    assert len(set((s.argmax(-1) // 128).flatten().tolist())) == 5


def test_large_logits_overflow_without_max(registry):
    """large-logits: exp(S·scale) overflows on some rows and underflows to 0 on all keys of
    others, so softmax without the max subtraction is NaN there; with it, finite."""
    x = registry["large-logits"].make(specs2(256, 384), Params({}), 0, "cpu")
    s = _logits(x["q"], x["k"], 64)[0, 0]
    e = torch.exp(s)
    assert torch.isinf(e).any(-1).sum() >= 256 * 3 // 8 - 2
    assert (e.sum(-1) == 0).sum() >= 256 * 2 // 8 - 2
    naive = e / e.sum(-1, keepdim=True)
    assert torch.isnan(naive).any(-1).float().mean() > 0.5
    assert torch.isfinite(torch.softmax(s, -1)).all()


# ---- one name in several fixture files -------------------------------------------------
PICK = """
from workbench.kernels.fixtures import fixture


@fixture("pick", needs={needs!r}, isolates="{who}", hides="-")
def pick(specs, p, seed, device):
    return {{"who": "{who}"}}
"""


@pytest.fixture
def fixture_dir(tmp_path):
    """A fixtures folder of its own: its modules are forgotten after the test."""
    folder = tmp_path / "fixtures"
    folder.mkdir()
    yield folder
    for path in folder.glob("*.py"):
        sys.modules.pop(f"wb_fixtures_{path.stem}", None)
        F._by_module.pop(f"wb_fixtures_{path.stem}", None)


def test_one_name_resolves_by_the_stage_inputs(fixture_dir):
    """Two files define "pick": the stage's inputs choose, the most specific applicable one
    (largest needs) wins, the generic one serves every other stage; the name alone is ambiguous."""
    (fixture_dir / "tmpfx_generic.py").write_text(PICK.format(needs=(), who="generic"))
    (fixture_dir / "tmpfx_special.py").write_text(PICK.format(needs=("x", "w1"), who="special"))
    reg = F.load_fixtures(fixture_dir)
    assert [f.isolates for f in reg.variants("pick")] == ["special", "generic"]
    for inputs, who in [(["x", "w1", "w2"], "special"), (["w1", "x"], "special"), (["x"], "generic"), (["q", "k"], "generic")]:
        assert reg.resolve("pick", inputs).make({}, None, 0, "cpu") == {"who": who}, inputs
        assert F.get_fixture(reg, "pick", inputs).isolates == who
    with pytest.raises(UserError, match="2 variants"):
        reg["pick"]
    with pytest.raises(UserError, match="unknown fixture 'pik'.*did you mean pick"):
        reg.resolve("pik", ["x"])


def test_a_fixture_that_needs_what_the_stage_lacks_is_not_used(fixture_dir):
    """needs decide alone: a fixture whose needs the stage lacks never serves it, and equal-size
    needs that both apply are refused in one line, naming both files."""
    (fixture_dir / "tmpfx_q.py").write_text(PICK.format(needs=("q",), who="q"))
    (fixture_dir / "tmpfx_x.py").write_text(PICK.format(needs=("x",), who="x"))
    reg = F.load_fixtures(fixture_dir)
    assert reg.resolve("pick", ["q", "k"]).isolates == "q"
    assert reg.resolve("pick", ["x"]).isolates == "x"
    assert reg.resolve("pick", ["k"]) is None
    with pytest.raises(UserError, match="does not apply to inputs k: its variants need q .*tmpfx_q.py.*; x"):
        F.get_fixture(reg, "pick", ["k"])
    with pytest.raises(UserError) as err:
        reg.resolve("pick", ["q", "x"])
    assert "\n" not in str(err.value) and "tmpfx_q.py" in str(err.value) and "tmpfx_x.py" in str(err.value)


def test_equal_needs_under_one_name_are_an_error_naming_both_files(fixture_dir):
    """Two files defining one name with the same needs (in any order) fail the load in one
    line naming both files; one file defining it twice fails naming that file."""
    (fixture_dir / "tmpfx_a.py").write_text(PICK.format(needs=("x", "w1"), who="a"))
    (fixture_dir / "tmpfx_b.py").write_text(PICK.format(needs=("w1", "x"), who="b"))
    with pytest.raises(UserError) as err:
        F.load_fixtures(fixture_dir)
    text = str(err.value)
    assert "\n" not in text and "'pick'" in text and "fixtures/tmpfx_a.py" in text and "fixtures/tmpfx_b.py" in text

    (fixture_dir / "tmpfx_b.py").unlink()
    (fixture_dir / "tmpfx_a.py").write_text(PICK.format(needs=("x",), who="a") + PICK.format(needs=("x",), who="a2"))
    sys.modules.pop("wb_fixtures_tmpfx_a")
    with pytest.raises(UserError, match="defined twice in fixtures/tmpfx_a.py"):
        F.load_fixtures(fixture_dir)


def test_wb_runs_the_variant_that_fits_and_lists_each(toy_ws, wb):
    """End to end on the toy kernel (input x): a second "toy-random" that needs nothing does not
    replace toy.py's (needs x) for stage a; one needing an input the stage lacks is skipped;
    `wb fixtures` lists each variant with its file; an equal-needs clash exits 2 in one line."""
    (toy_ws / "fixtures" / "generic.py").write_text(
        "from workbench.kernels.fixtures import fixture\n\n\n"
        '@fixture("toy-random", isolates="the generic one", hides="-")\n'
        "def generic(specs, p, seed, device):\n    raise AssertionError('the generic toy-random ran')\n\n\n"
        '@fixture("toy-random", needs=("x", "bias"), isolates="the biased one", hides="-")\n'
        "def biased(specs, p, seed, device):\n    raise AssertionError('the biased toy-random ran')\n"
    )
    proc = wb("run", "a", "--fixture", "toy-random", "--seeds", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((toy_ws / "runs" / json.loads(proc.stdout)["id"] / "run.json").read_text())
    assert record["verdict"] == "PASS"
    assert record["fixture_notes"]["toy-random"]["isolates"] == "every element, with distinct values"

    listed = json.loads(wb("fixtures", "--json").stdout)
    assert sorted((f["file"], tuple(f["needs"])) for f in listed if f["name"] == "toy-random") == [
        ("fixtures/generic.py", ()), ("fixtures/generic.py", ("x", "bias")), ("fixtures/toy.py", ("x",))]
    table = wb("fixtures")
    assert table.returncode == 0 and "(generic.py)" in table.stdout and "(toy.py)" in table.stdout

    (toy_ws / "fixtures" / "twin.py").write_text(
        "from workbench.kernels.fixtures import fixture\n\n\n"
        '@fixture("toy-ones", needs=("x",))\n'
        "def ones(specs, p, seed, device):\n    return {}\n"
    )
    proc = wb("fixtures")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "fixtures/toy.py" in proc.stderr and "fixtures/twin.py" in proc.stderr
