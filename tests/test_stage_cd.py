"""Stages C (online softmax over many KV tiles) and D (full FMHA) of stages/fmha.

CPU (this machine has no GPU; CUTE_DSL_ARCH=sm_90a): every configuration compiles to a cubin
for sm_90a; the probed layouts are the ones verified by hand (see the stage modules); the
P hand-over from the QK accumulator to the PV MMA's A operand is proven register by register
from the MMA atoms' TV layouts (and the bug variants' mappings match their torch models);
the fake tensors used to compile have the exact type of the tensors passed at launch; the
torch references and the kernel model agree; the GPU check script's matrix covers every
axis, and its verdict / diagnosis / hang watchdog work on the CPU model of the kernel.

GPU (``-m gpu``, skipped here): the whole matrix of benchmarks/gpu_check_cd.py, one test per
case, compiled kernels shared across sequence lengths.
"""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

CHECK_PATH = ROOT / "benchmarks" / "gpu_check_cd.py"


def _gpu_check():
    name = "wb_gpu_check_cd"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CHECK_PATH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _params(**kw):
    from workbench.kernels.stage import Params

    return Params(kw)


def _compile(stage, p, variants):
    from workbench.compile.probe import capture

    with capture() as records:
        compiled = stage.compile(p, variants, "sm_90a")
    probes = {r["name"]: r["layout"] for r in records}
    return compiled, probes


# --------------------------------------------------------------------------------------
# Compile for sm_90a + probed layouts
# --------------------------------------------------------------------------------------
C_COMPILES = [
    (128, "bf16", {}),
    (128, "fp16", {}),
    (64, "bf16", {}),
    (64, "fp16", {}),
    (128, "bf16", {"softmax": "identity"}),
    (64, "fp16", {"softmax": "identity"}),
    (128, "bf16", {"rescale": "off"}),
    (128, "bf16", {"bug": "kv_tile0"}),
    (128, "bf16", {"bug": "no_rescale"}),
    (128, "bf16", {"bug": "pv_layout"}),
    (128, "bf16", {"bug": "pv_rowmajor"}),
    (64, "bf16", {"bug": "stuck_pipeline"}),
]


def _expected_common(d, consumer_wgs=2):
    """Probes verified by hand (per consumer warpgroup: 64 x 128 S tile, 64 x d O tile)."""
    boxes = d // 64  # TMA boxes per tile: 128-byte swizzle -> 64 elements of d per box
    stages = 2 if d == 128 else 3
    return {
        # S accumulator: ((2 cols, 2 rows +8, 16 column chunks of 8), MMA_M, MMA_N), fp32
        "tSrS": "((2,2,16),1,1):((1,2,4),0,0)",
        # P as the PV A operand: ((2 k, 2 rows +8, 2 k +8), 1, 8 k-blocks of 16)
        "tOrP": "((2,2,2),1,8):((1,2,4),0,8)",
        "tOrO_acc": f"((2,2,{d // 8}),1,1):((1,2,4),0,0)",
        # TMA destinations: (box elements, boxes per tile), (1, stages)
        "tQsQ": f"((4096,{boxes}),(1,{consumer_wgs})):((1,{4096 if boxes > 1 else 0}),(0,{64 * d}))",
        "tKsK": f"((8192,{boxes}),(1,{stages})):((1,{8192 if boxes > 1 else 0}),(0,{128 * d}))",
        "tVsV": f"((8192,{boxes}),(1,{stages})):((1,{8192 if boxes > 1 else 0}),(0,{128 * d}))",
        # epilogue: 64 x d O half of one WG, TMA store source
        "tOsO_tma": f"((4096,{boxes})):((1,{4096 if boxes > 1 else 0}))",
    }


@pytest.mark.parametrize("d,dtype,variants", C_COMPILES, ids=lambda x: str(x))
def test_stage_c_compiles_for_sm90a(d, dtype, variants):
    from stages.fmha.stage_c_online import StageC

    compiled, probes = _compile(StageC(), _params(m=256, n=512, d=d, dtype=dtype), variants)
    assert compiled.fn is not None
    for name, layout in _expected_common(d).items():
        assert probes[name] == layout, (name, probes[name])
    # P view of the S accumulator == the PV A-operand fragment's shape; proven at trace time
    assert probes["tOrP_view_of_S"] == "((2,2,2),1,8):((1,2,4),0,8)"
    assert "verified" in compiled.p_check and "128 threads x 64 registers" in compiled.p_check
    import pickle

    meta = pickle.loads(pickle.dumps({k: v for k, v in vars(compiled).items() if k != "fn"}))
    assert meta["d"] == d
    # the KV tile index is the last (dynamic) mode of the TMA source (loop index j)
    if not probes["tKgK"].startswith("<probe failed"):
        assert probes["tKgK"].endswith(",?):(((1@0,1@1),64@0),128@1)") or probes["tKgK"].endswith("128@1)")


D_COMPILES = [
    (128, "bf16", False, 4, 4, {}),
    (128, "bf16", True, 8, 2, {}),
    (128, "fp16", True, 2, 1, {}),
    (64, "fp16", False, 6, 2, {}),
    (64, "fp16", True, 4, 4, {}),
    (64, "bf16", False, 4, 4, {}),
    (128, "bf16", True, 4, 2, {"softmax": "identity"}),
]


@pytest.mark.parametrize("d,dtype,causal,heads,kv_heads,variants", D_COMPILES, ids=lambda x: str(x))
def test_stage_d_compiles_for_sm90a(d, dtype, causal, heads, kv_heads, variants):
    from stages.fmha.stage_d_fmha import StageD

    p = _params(m=1000, n=17, d=d, dtype=dtype, batch=2, heads=heads, kv_heads=kv_heads, causal=causal)
    compiled, probes = _compile(StageD(), p, variants)
    consumer_wgs = 3 if d == 64 and not causal else 2  # d=64 non-causal: 192-row Q tiles
    for name, layout in _expected_common(d, consumer_wgs).items():
        assert probes[name] == layout, (name, probes[name])
    assert "verified" in compiled.p_check
    assert (compiled.heads, compiled.kv_heads, compiled.causal) == (heads, kv_heads, causal)


def test_compile_time_and_smem_budget():
    """One compile serves every m, n (dynamic); report the time; smem fits 227 KiB."""
    import time

    from stages.fmha.stage_c_online import FmhaOnline
    import cutlass

    t0 = time.perf_counter()
    from stages.fmha.stage_c_online import StageC

    compiled = StageC().compile(_params(m=128, n=128, d=128, dtype="bf16"), {}, "sm_90a")
    elapsed = time.perf_counter() - t0
    print(f"\nstage C d=128 bf16 compile: {elapsed:.2f} s (cute.compile {compiled.compile_s:.2f} s)")
    for d in (64, 128):
        k = FmhaOnline(cutlass.BFloat16, d)
        stages = k.kv_stages
        smem = 2 * (2 * 64 * d) + 2 * stages * (128 * d * 2) + 2 * 64 * d * 2  # Q, K+V ring, O
        assert smem + 1024 <= 227 * 1024, (d, smem)


# --------------------------------------------------------------------------------------
# P hand-over: proven from the TV layouts; bug variants match their torch models
# --------------------------------------------------------------------------------------
def _p_maps():
    """(pairs for none / chunk / rowmajor) computed by the helpers inside a traced function."""
    import cutlass
    import cutlass.cute as cute

    from stages.fmha import common
    from stages.fmha import softmax as sm
    from stages.fmha.stage_c_online import make_pv_tiled_mma

    out = {}

    @cute.jit
    def trace():
        qk = common.make_qk_tiled_mma(cutlass.BFloat16, 128, 1)
        pv = make_pv_tiled_mma(cutlass.BFloat16, 128)
        acc_shape = qk.get_slice(0).partition_shape_C((64, 128))
        p_shape = pv.get_slice(0).partition_shape_A((64, 128))
        for bug in sm.P_BUGS:
            out[bug] = sm.p_source_map(qk, pv, acc_shape, p_shape, bug)[0]
        out["check"] = sm.check_p_operand_mapping(qk, pv, acc_shape, p_shape)

    # Name the arch: a compile for another arch earlier in the process (wb shapes --arch
    # sm_100a tests) changes the DSL's default.
    cute.compile[cute.GPUArch("sm_90a")](trace)
    return out


def test_p_operand_mapping_and_bug_models():
    import torch

    from stages.fmha.stage_c_online import p_bug_permute

    maps = _p_maps()
    assert "verified" in maps["check"]
    assert len(maps["none"]) == 128 * 64
    assert all(want == got for want, got in maps["none"]), "correct view must be the identity"
    # every (row, k) of the 64 x 128 tile is covered exactly once
    assert len({want for want, _ in maps["none"]}) == 64 * 128
    # each bug variant's register mapping == the torch model used by the diagnosis
    rows, cols = torch.arange(64)[:, None].expand(64, 128), torch.arange(128)[None, :].expand(64, 128)
    code = rows * 1000 + cols
    for variant, mode in (("pv_layout", "chunk"), ("pv_rowmajor", "rowmajor")):
        seen = p_bug_permute(code, variant)
        wrong = 0
        for (wm, wk), (gm, gk) in maps[mode]:
            assert int(seen[wm, wk]) == gm * 1000 + gk, (variant, (wm, wk), (gm, gk), int(seen[wm, wk]))
            wrong += (wm, wk) != (gm, gk)
        assert wrong > 0, f"{variant} must move some P elements"


def test_p_mapping_check_rejects_a_wrong_view(monkeypatch):
    from stages.fmha import softmax as sm

    real = sm.p_operand_layout
    monkeypatch.setattr(sm, "p_operand_layout", lambda acc, bug="none": real(acc, "chunk"))
    sm._maps.clear()
    with pytest.raises(Exception, match="expects P"):
        _p_maps()
    monkeypatch.undo()
    sm._maps.clear()


# --------------------------------------------------------------------------------------
# Fake tensors for compile == the tensors passed at launch
# --------------------------------------------------------------------------------------
def test_fake_tensor_types_match_launch_tensors():
    import cutlass
    import torch
    from cutlass._mlir import ir

    from stages.fmha.stage_c_online import fake_tensor, to_cute

    with ir.Context(), ir.Location.unknown():
        for shape, tdt, cdt in [
            ((256, 128), torch.bfloat16, cutlass.BFloat16),
            ((384,), torch.float32, cutlass.Float32),
            ((2, 17, 6, 64), torch.float16, cutlass.Float16),
            ((1, 1, 1, 128), torch.bfloat16, cutlass.BFloat16),
            ((2, 4, 1000), torch.float32, cutlass.Float32),
        ]:
            fake = str(fake_tensor(cdt, len(shape)).mlir_type)
            real = str(to_cute(torch.zeros(shape, dtype=tdt)).mlir_type)
            # CPU tensors are "generic"; CUDA tensors are gmem like the fake ones
            assert fake.replace("gmem", "*") == real.replace("generic", "*").replace("gmem", "*"), (shape, fake, real)


# --------------------------------------------------------------------------------------
# References and the kernel model
# --------------------------------------------------------------------------------------
def _qkv(m, n, d, seed=0, dtype=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.bfloat16
    return [torch.randn(s, d, generator=g).to(dtype) for s in (m, n, n)]


def test_reference_matches_sdpa_and_top_left_causal():
    import torch
    import torch.nn.functional as F

    from stages.fmha.stage_c_online import attention_ref

    q, k, v = _qkv(100, 300, 64)
    for causal in (False, True):
        o, lse = attention_ref(q, k, v, torch.float32, causal=causal)
        o_sdpa = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        assert float((o - o_sdpa).abs().max()) < 1e-5
        s = (q.float() @ k.float().T) / 8.0
        if causal:  # top-left: row i sees keys 0..i (torch SDPA is_causal)
            s = s.masked_fill(torch.ones(100, 300, dtype=torch.bool).tril().logical_not(), float("-inf"))
        assert float((lse - torch.logsumexp(s, -1)).abs().max()) < 1e-5
    o_low, _ = attention_ref(q, k, v, torch.bfloat16)
    assert o_low.dtype == torch.bfloat16
    o_id, lse_id = attention_ref(q, k, v, torch.float32, softmax="identity")
    assert float((o_id - ((q.float() @ k.float().T) / 8.0) @ v.float()).abs().max()) < 1e-3
    assert float(lse_id.abs().max()) == 0.0


def test_fmha_reference_gqa_and_layout():
    import torch

    from stages.fmha.stage_c_online import attention_ref
    from stages.fmha.stage_d_fmha import fmha_ref

    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 37, 6, 64, generator=g)
    k = torch.randn(2, 53, 2, 64, generator=g)
    v = torch.randn(2, 53, 2, 64, generator=g)
    o, lse = fmha_ref(q, k, v, torch.float32, causal=True)
    assert o.shape == q.shape and lse.shape == (2, 6, 37)
    for b, h in ((0, 0), (1, 5), (1, 2)):
        o1, l1 = attention_ref(q[b, :, h], k[b, :, h // 3], v[b, :, h // 3], torch.float32, causal=True)
        assert float((o[b, :, h] - o1).abs().max()) < 1e-5 and float((lse[b, h] - l1).abs().max()) < 1e-5


def test_kernel_model_and_bug_mutants():
    import torch

    from stages.fmha.stage_c_online import attention_ref, emulate_online

    q, k, v = _qkv(128, 512, 128, seed=3)
    o_ref, lse_ref = attention_ref(q, k, v, torch.float32)
    o, lse = emulate_online(q, k, v)
    assert float((o - o_ref).abs().max()) < 2e-2 and float((lse - lse_ref).abs().max()) < 1e-4
    # kv_tile0: attention over tile 0 (softmax is blind to the repetition), LSE + ln(tiles)
    o0, lse0 = emulate_online(q, k, v, bug="kv_tile0")
    o_t0, lse_t0 = attention_ref(q, k[:128], v[:128], torch.float32)
    assert float((o0 - o_t0).abs().max()) < 2e-2
    assert float((lse0 - lse_t0 - math.log(4)).abs().max()) < 1e-4
    # every bug variant is visible at 4 tiles, none at 1 tile except the P layout ones
    for bug in ("kv_tile0", "no_rescale", "pv_layout", "pv_rowmajor"):
        ob, _ = emulate_online(q, k, v, bug=bug)
        assert float((ob - o_ref).abs().max()) > 0.1, bug
        o1, _ = emulate_online(q, k[:128], v[:128], bug=bug)
        r1, _ = attention_ref(q, k[:128], v[:128], torch.float32)
        assert (float((o1 - r1).abs().max()) > 0.1) == bug.startswith("pv_"), bug
    o_off, _ = emulate_online(q, k, v, rescale=False)
    assert float((o_off - o_ref).abs().max()) > 0.1


def test_variant_flags_and_kernel_yaml():
    import yaml

    from stages.fmha.stage_c_online import BUGS, variant_flags

    y = yaml.safe_load((ROOT / "stages" / "fmha" / "kernel.yaml").read_text())
    c = next(s for s in y["stages"] if s["letter"] == "c")
    assert [str(x) for x in c["variants"]["rescale"]] == ["on", "off"]
    assert tuple(c["variants"]["bug"]) == BUGS
    assert variant_flags({})["rescale"] is True
    assert variant_flags({"rescale": "True"})["rescale"] is True  # YAML 1.1 spelled on as a bool
    assert variant_flags({"rescale": "off"})["rescale"] is False
    with pytest.raises(ValueError):
        variant_flags({"bug": "nonsense"})


# --------------------------------------------------------------------------------------
# The GPU check script: matrix coverage, and its machinery on the CPU model
# --------------------------------------------------------------------------------------
def test_gpu_matrix_covers_every_axis():
    gc = _gpu_check()
    cases = gc.all_cases()
    c = [x for x in cases if x["stage"] == "c" and x["expect"] == "pass" and not x["variants"]]
    d = [x for x in cases if x["stage"] == "d"]
    assert {x["n"] for x in c} >= set(gc.C_N)
    assert {x["d"] for x in c} == {64, 128} and {x["dtype"] for x in c} == {"bf16", "fp16"}
    assert {x["m"] for x in d} >= set(gc.D_SEQ) and {x["n"] for x in d} >= set(gc.D_SEQ)
    assert {x["causal"] for x in d} == {False, True}
    assert {x["d"] for x in d} == {64, 128} and {x["dtype"] for x in d} == {"bf16", "fp16"}
    assert {x["heads"] == x["kv_heads"] for x in d} == {True, False}  # MHA and GQA
    fixtures = {"random", "identity-softmax", "ones-v", "single", "onehot-p", "iota"}
    assert {x["fixture"] for x in c} | {"identity-softmax"} >= fixtures
    assert {x["fixture"] for x in d} >= fixtures
    assert any(x["m"] != x["n"] and x["causal"] for x in d)
    bugs = [x for x in cases if x["expect"] in ("fail", "hang") or x["variants"].get("bug")]
    assert {x["variants"].get("bug", "rescale=off") for x in bugs} >= {"kv_tile0", "no_rescale", "pv_layout", "stuck_pipeline"}
    assert len(cases) <= 190  # one line per case: the whole output stays around 200 lines
    # fixtures load and build for D shapes with tails (n = 17) and GQA
    import torch

    case = next(x for x in d if x["fixture"] == "onehot-p" and x["n"] == 1000)
    stage = gc.stage_of(case)
    p = gc.params_of(case)
    old = gc.DEVICE
    gc.DEVICE = "cpu"
    try:
        inputs = gc.make_inputs(case, stage, p)
    finally:
        gc.DEVICE = old
    assert inputs["q"].shape == (case["batch"], case["m"], case["heads"], case["d"])
    assert inputs["k"].dtype == torch.bfloat16 or inputs["k"].dtype == torch.float16


def _run_check(*args, timeout=300):
    env = dict(os.environ, WB_GPU_CHECK_SIMULATE="1")
    proc = subprocess.run([sys.executable, str(CHECK_PATH), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    return proc.returncode, proc.stdout


def test_gpu_check_machinery_on_cpu_model():
    """Verdicts, bug expectations, diagnosis and the hang watchdog, with the launch replaced
    by the torch model of the kernel (and of its bug variants)."""
    rc, out = _run_check("--only", "bugs", "--match", "kv_tile0", "--timeout", "30")
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if ln.startswith("C ")]
    assert len(lines) == 2 and " PASS " in lines[0] and " FAIL " in lines[1], out
    assert "[expected FAIL: ok]" in lines[1]
    assert "matches: bug=kv_tile0" in out
    rc, out = _run_check("--only", "bugs", "--match", "stuck", "--hang-demo", "--timeout", "5")
    assert rc == 0, out
    assert "HANG during launch" in out and "[expected HANG: ok]" in out


def test_gpu_check_diagnoses_d_bug_models_on_cpu():
    env_mode = {"bottom-right": "causal bottom-right", "not causal": "not causal"}
    for mode, expect in env_mode.items():
        env = dict(os.environ, WB_GPU_CHECK_SIMULATE=f"d:{mode}")
        proc = subprocess.run([sys.executable, str(CHECK_PATH), "--only", "d", "--match", "m=17 n=1000,h8/2-causal,random",
                               "--timeout", "60"], capture_output=True, text=True, env=env, timeout=300)
        assert " FAIL " in proc.stdout and f"matches: {expect}" in proc.stdout, proc.stdout


def test_gpu_check_small_cases_pass_on_cpu_model():
    rc, out = _run_check("--only", "c,d", "--match", "n=17 ", "--timeout", "60")
    assert rc == 0, out
    assert out.count(" PASS ") >= 5 and " FAIL " not in out, out


# --------------------------------------------------------------------------------------
# GPU: the whole matrix (one test per case; kernels compiled once per configuration)
# --------------------------------------------------------------------------------------
_GPU_CACHE: dict = {}


def _gpu_cases():
    try:
        return _gpu_check().all_cases()
    except Exception:  # pragma: no cover
        return []


@pytest.mark.gpu
@pytest.mark.parametrize("case", _gpu_cases(), ids=lambda c: " ".join(c["tag"].split()))
def test_gpu_case(case):
    import faulthandler

    gc = _gpu_check()
    faulthandler.dump_traceback_later(180, exit=True)  # a hung kernel must end the run
    try:
        res = gc.run_case(case, _GPU_CACHE)
    finally:
        faulthandler.cancel_dump_traceback_later()
    line = gc.case_line(case, res)
    if case["expect"] == "pass":
        diag = "" if res["verdict"] == "PASS" else "\n".join(gc.diagnose(case, res))
        assert res["verdict"] == "PASS", f"{line}\n{diag}"
    else:
        assert res["verdict"] == "FAIL", f"bug variant not caught: {line}"
