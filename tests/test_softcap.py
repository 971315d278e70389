"""Stage D's softcap (Gemma 2): s = scale q.k becomes c tanh(s / c) before the mask and the
softmax. On CPU: the torch reference against an independent float64 formula, the one-line
errors, the fixture that makes the cap matter, the mutants' calibration against the stage's
reference, the kernel's cap arithmetic (ex2 + rcp) accurate far inside LSE's 1e-4, and the
sm_90a compiles of the defaults that spilled at 3 consumer WGs' 160 registers, now without.
The mutants' distinguishability and naming are in tests/test_diagnose.py (d-softcap,
d-softcap5). GPU: benchmarks/gpu_verify_parity.sh softcap."""

import json
import math
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
import attention_cases as A  # noqa: E402

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dense64(q, k, v, softcap, causal, align="top-left", softmax="exp"):
    """float64, dense, from scratch: (O, LSE) in the bshd layout (GQA by repetition)."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    m, n, d = q.shape[2], k.shape[2], q.shape[3]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if causal:
        off = 0 if align == "top-left" else n - m
        hidden = torch.arange(n)[None, :] > torch.arange(m)[:, None] + off
        s = s.masked_fill(hidden, -math.inf if softmax == "exp" else 0.0)
    if softmax == "identity":
        return (s @ v).transpose(1, 2), None
    return (torch.softmax(s, -1) @ v).transpose(1, 2), torch.logsumexp(s, -1)


@pytest.mark.parametrize("softcap", [0.0, 5.0, 30.0])
@pytest.mark.parametrize("causal,align", [(False, "top-left"), (True, "top-left"), (True, "bottom-right")])
def test_reference_matches_float64_formula(softcap, causal, align):
    """attention_bshd(softcap=c) in fp64 (and fp32, streamed in small blocks) is the dense
    float64 c tanh(s / c) -> mask -> softmax; logits large enough that the cap matters."""
    from stages.fmha import reference as R

    g = torch.Generator().manual_seed(1)
    b, m, n, h, hk, d = 2, 70, 150, 4, 2, 64
    q = torch.randn(b, m, h, d, generator=g) * 6.0  # |s| up to ~25: the tanh bends
    k, v = torch.randn(b, n, hk, d, generator=g), torch.randn(b, n, hk, d, generator=g)
    o_ref, lse_ref = _dense64(q, k, v, softcap, causal, align)
    o, lse = R.attention_bshd(q, k, v, torch.float64, causal=causal, causal_align=align, softcap=softcap)
    assert torch.allclose(o, o_ref, atol=1e-10) and torch.allclose(lse, lse_ref, atol=1e-10)
    qt, kt, vt = (x.transpose(1, 2).repeat_interleave(1, 1) for x in (q, k, v))
    kt, vt = kt.repeat_interleave(2, 1), vt.repeat_interleave(2, 1)
    o32, lse32 = R.attention(qt, kt, vt, torch.float32, causal=causal, causal_align=align, softcap=softcap, block=(64, 64))
    assert (o32.transpose(1, 2).double() - o_ref).abs().max() < 1e-4
    assert (lse32.double() - lse_ref).abs().max() < 1e-4
    if softcap:  # the cap really changes the answer here
        o0, _ = _dense64(q, k, v, 0.0, causal, align)
        assert (o0 - o_ref).abs().max() > 0.1
    # identity: O = capped(S) V, masked logits 0
    oi, _ = R.attention_bshd(q, k, v, torch.float64, softmax="identity", causal=causal, causal_align=align, softcap=softcap)
    oi_ref, _ = _dense64(q, k, v, softcap, causal, align, softmax="identity")
    assert torch.allclose(oi, oi_ref, atol=1e-8)


def test_low_precision_calibration_rounds_p_like_a_kernel():
    """bf16 with softcap (no SDPA softcap): fp32 capped logits and softmax, P rounded to bf16
    before P V: an error of bf16 size against the true reference, not zero and not more."""
    from stages.fmha import reference as R

    g = torch.Generator().manual_seed(2)
    q = (torch.randn(1, 300, 2, 64, generator=g) * 40).bfloat16()
    k, v = torch.randn(1, 300, 2, 64, generator=g).bfloat16(), torch.randn(1, 300, 2, 64, generator=g).bfloat16()
    o, lse = R.attention_bshd(q, k, v, torch.float32, softcap=30.0)
    ol, lsel = R.attention_bshd(q, k, v, torch.bfloat16, softcap=30.0)
    assert ol.dtype == torch.bfloat16
    err = (ol.float() - o).abs().max().item()
    assert 1e-4 < err < 0.05, err
    assert (lsel - lse).abs().max().item() < 1e-5  # LSE stays fp32 (the kernel keeps it in fp32)


def test_negative_softcap_is_a_one_line_error(fmha_ws, wb):
    from stages.fmha import reference as R

    with pytest.raises(ValueError, match="softcap must be >= 0"):
        R.attention_bshd(torch.zeros(1, 1, 1, 64), torch.zeros(1, 1, 1, 64), torch.zeros(1, 1, 1, 64), torch.float32, softcap=-1.0)
    from stages.fmha.stage_d_fmha import FmhaForward
    import cutlass

    with pytest.raises(ValueError, match="softcap must be >= 0"):
        FmhaForward(cutlass.BFloat16, 128, 2, 2, softcap=-3.0)
    with pytest.raises(ValueError, match="needs softcap > 0"):
        FmhaForward(cutlass.BFloat16, 128, 2, 2, softcap_bug="before_scale")
    proc = wb("compile", "d", "-p", "softcap=-1", cwd=fmha_ws)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0 and "softcap=-1.0 is below the minimum 0" in err, err
    proc = wb("compile", "d", "-p", "softcap=1e39", cwd=fmha_ws)  # c log2(e) past fp32: NaN logits
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0 and "softcap=1e+39 is above the maximum 10000" in err, err
    proc = wb("compile", "d", "-V", "softcap_bug=before_scale", cwd=fmha_ws)  # a bug of a cap that is off
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("wb: error: softcap_bug=before_scale needs softcap > 0"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cap_arithmetic_is_accurate():
    """The kernel's cap, c' - 2 c' / (1 + 2^(S k)) (softmax.cap_logits, with ex2 and rcp
    each ~2^-22 relative), in float32 with both off by 2^-22: within 4e-5 natural-log units
    of c tanh(S scale / c) at c = 50, d = 64 over the whole logit range, ends included (no
    NaN for |S| -> huge), so LSE (a weighted mean of the logit errors) stays inside its 1e-4
    tolerance; tanh.approx.f32 (2^-11 relative) would be ~0.025 off at c = 50."""
    from stages.fmha.softmax import softcap_constants

    scale, c = 1 / 8, 50.0
    k_in, k_out = softcap_constants(scale, c)
    s = torch.linspace(-4000, 4000, 200001, dtype=torch.float64)
    want = k_out * torch.tanh(s * scale / c)
    jitter = 1 + 2.0**-22 * torch.sign(torch.sin(s * 7))  # a worst-case-sized relative error
    e = torch.exp2((s * k_in).float()).double() * jitter
    r = (1.0 / (e + 1.0).float()).double() * jitter
    got = (r * (-2 * k_out) + k_out).float().double()
    assert (got - want).abs().max() * math.log(2) < 4e-5
    assert softcap_constants(scale, c, "before_scale") == (2 * math.log2(math.e) / c, c * scale * math.log2(math.e))


def test_fixture_makes_the_cap_matter():
    """softcap-logits: logits ~N(0, (1.5 c)^2), so capping changes O by O(1) and the cap's
    bending range is populated (|s| in [c/2, 3c] for most keys)."""
    from workbench.kernels.fixtures import get_fixture

    fixtures, _ = A.load()
    for name in ("d-softcap", "d-softcap5"):
        cfg = A.CONFIGS[name]
        ins, outs, params = A.specs_for(cfg)
        x = get_fixture(fixtures, "softcap-logits", ins).make(ins, params, 0, "cpu")
        q, k = x["q"].float().transpose(1, 2), x["k"].float().transpose(1, 2)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        c = cfg["softcap"]
        assert 1.2 * c < s.std().item() < 1.8 * c
        bend = ((s.abs() > c / 2) & (s.abs() < 3 * c)).float().mean().item()
        assert bend > 0.6, bend
        capped = A.reference(cfg, x, {})["o"]
        plain = A.reference({**cfg, "softcap": 0.0}, x, {})["o"]
        assert (capped - plain).abs().max() > 1.0


def test_mutants_calibrate_against_the_stage_reference():
    """The FMHA mutants reproduce stages/fmha/reference.py with a softcap (O and LSE), so
    the softcap mutants predict from the stage's own convention."""
    from stages.fmha import reference as R
    from stages.fmha.mutants import Problem
    from workbench.diagnose import MutantContext
    from workbench.kernels.fixtures import get_fixture

    fixtures, _ = A.load()
    cfg = A.CONFIGS["d-softcap"]
    ins, outs, params = A.specs_for(cfg)
    inputs = get_fixture(fixtures, "softcap-logits", ins).make(ins, params, 0, "cpu")
    o, lse = R.attention_bshd(inputs["q"], inputs["k"], inputs["v"], torch.float32, causal=True, softcap=cfg["softcap"])
    cx = MutantContext(inputs, {"o": o, "lse": lse}, params, {"softmax": "exp"}, "softcap-logits")
    assert {"o", "lse"} <= Problem(cx).calibrated, cx.notes


def _run_d(ws, *args):
    from conftest import run_wb

    proc = run_wb("run", "d", "--n", "1000", "-p", "m=700", "--d", "64", "-p", "batch=1", "-p", "heads=2", "-p", "kv_heads=1",
                  "-p", "causal=true", "-p", "softcap=30", "--fixture", "softcap-logits", "--timeout", "60", "--json", *args,
                  cwd=ws, timeout=400)
    return proc, json.loads(proc.stdout)


@pytest.mark.gpu
def test_gpu_softcap_before_scale_is_caught_and_named(fmha_ws):
    """On a GPU: the kernel with the cap applied before the scale FAILs softcap-logits and
    the diagnosis names softcap-before-scale; the same case without the bug PASSes."""
    proc, record = _run_d(fmha_ws, "-V", "softcap_bug=before_scale")
    assert proc.returncode == 1 and record["verdict"] == "FAIL", record["verdict"]
    case = next(c for c in record["results"] if c["verdict"] == "FAIL")
    explanations = case["diagnosis"]["explanations"]
    assert explanations and explanations[0]["name"] == "softcap-before-scale", explanations[:2]
    proc, record = _run_d(fmha_ws)
    assert proc.returncode == 0 and record["verdict"] == "PASS"


@pytest.mark.slow  # cold sm_90a compiles of stage D with its long kernels
@pytest.mark.parametrize("args,built", [(["--d", "64", "-p", "causal=true"], 1), (["--d", "128", "-p", "causal=false"], 2)])
def test_softcap_defaults_compile_without_spills(fmha_ws, wb, args, built):
    """Every kernel a softcap's default compiles (the default and its long kernels) fits its
    registers: d = 64 causal's 192-row long kernel spilled 112 B, d = 128's 24 B, before a
    softcap kept them off 3 consumer WGs (geometry.long_kernels)."""
    proc = wb("compile", "d", *args, "-p", "softcap=30", "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    kernels = json.loads(proc.stdout)["resources"]["kernels"]
    assert kernels and all((k["spill_store_bytes"], k["spill_load_bytes"]) == (0, 0) for k in kernels), kernels
    assert len(kernels) == built  # d = 128: its 176-key kernel stays
