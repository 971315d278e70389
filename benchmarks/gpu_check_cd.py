#!/usr/bin/env python
"""GPU check of FMHA stages C (online softmax, multi-tile TMA) and D (full FMHA), one matrix.

    python benchmarks/gpu_check_cd.py                  # everything (~3 min on an H100)
    python benchmarks/gpu_check_cd.py --only c         # c | d | bugs (comma list)
    python benchmarks/gpu_check_cd.py --only d --match causal   # cases whose tag contains it
    python benchmarks/gpu_check_cd.py --hang-demo      # also bug=stuck_pipeline at n=512 (hangs)

Matrix (fixtures from fixtures/attention.py, the same generators wb uses):
  C  n in 128 256 384 512 1024 4096 16384 32768 (m = n up to 512, then 512); d 64/128 x
     bf16/fp16; random (3 seeds) every n, ones-v / single / onehot-p / iota on part of n;
     softmax=identity with the identity-softmax fixture.
  D  seqlens 1 17 128 1000 1024 4096 8192 (m = n) plus m != n pairs; causal and not; d 64/128;
     bf16/fp16; MHA and GQA; random every seqlen, the other fixtures at 1000 and 4096;
     softmax=identity.
  bugs  stage C bug variants with the outcome they must have (kv_tile0 passes at n=128 and
     fails at n=256, ...); a bug variant that passes where it must fail is a harness failure.

Rule (wb's): max|out - ref32| <= 2 * max|ref_low - ref32| + 1e-4 per output (o and lse),
ref32 = torch in fp32, ref_low = torch SDPA in the kernel dtype (LSE: fp32 logsumexp of the
low-precision inputs). Outputs are poisoned (NaN payload) before the launch and unwritten
elements fail; all-zero / constant outputs fail unless the reference is constant.

Output: one line per case: stage, shape, variant, fixture, PASS/FAIL, o err/tol, lse
err/tol, unwritten counts; under a failure up to 4 diagnosis lines (where the error is,
which simple model of a bug the output matches, which KV tile onehot-p queries read).

Robustness: cases run in a child process that prints "@@start <case>" before each launch;
the parent kills it after --timeout s without progress, prints HANG with the case and
restarts after it. A CUDA error poisons the context: the child exits and is restarted.
Self-test without a GPU: WB_GPU_CHECK_SIMULATE=1 runs everything on the CPU with the launch
replaced by a torch model of the kernel (with its bug variants; stuck_pipeline n >= 512
sleeps, i.e. hangs); WB_GPU_CHECK_SIMULATE=d:NAME makes stage D output the diagnosis
hypothesis NAME (e.g. d:bottom-right). tests/test_stage_cd.py imports this file.
"""

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIMULATE_MODE = os.environ.get("WB_GPU_CHECK_SIMULATE", "")
SIMULATE = SIMULATE_MODE not in ("", "0")
DEVICE = "cpu" if SIMULATE else "cuda"
TOLERANCE = {"factor": 2.0, "atol": 1e-4}

C_N = (128, 256, 384, 512, 1024, 4096, 16384, 32768)
D_SEQ = (1, 17, 128, 1000, 1024, 4096, 8192)
D_MN = ((17, 1000), (1000, 17), (1024, 4096), (4096, 1000))  # m != n (causal: top-left)
FIX_ALL = ("ones-v", "single", "onehot-p", "iota")

# D compile configs: name -> (d, dtype, heads, kv_heads, causal, softmax)
D_CFG = {
    "d128-bf16-h4/4": (128, "bf16", 4, 4, False, "exp"),
    "d128-bf16-h8/2-causal": (128, "bf16", 8, 2, True, "exp"),
    "d64-fp16-h6/2": (64, "fp16", 6, 2, False, "exp"),
    "d64-fp16-h4/4-causal": (64, "fp16", 4, 4, True, "exp"),
    "d128-fp16-h2/1-causal": (128, "fp16", 2, 1, True, "exp"),
    "d64-bf16-h4/4": (64, "bf16", 4, 4, False, "exp"),
    "d128-bf16-h4/2-causal-id": (128, "bf16", 4, 2, True, "identity"),
    "d64-fp16-h4/4-id": (64, "fp16", 4, 4, False, "identity"),
}
# C bug cases: (variants, n, expected outcome)
C_BUGS = (
    ({"bug": "kv_tile0"}, 128, "pass"), ({"bug": "kv_tile0"}, 256, "fail"),
    ({"bug": "no_rescale"}, 128, "pass"), ({"bug": "no_rescale"}, 1024, "fail"),
    ({"rescale": "off"}, 128, "pass"), ({"rescale": "off"}, 1024, "fail"),
    ({"bug": "pv_layout"}, 128, "fail"), ({"bug": "pv_rowmajor"}, 128, "fail"),
    ({"bug": "stuck_pipeline"}, 128, "pass"), ({"bug": "stuck_pipeline"}, 256, "fail"),
)


# --------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------
def _case(stage, tag_cfg, fixture, seed, m, n, *, d, dtype, variants=None, batch=1, heads=1, kv_heads=1,
          causal=False, expect="pass"):
    variants = dict(variants or {})
    vtxt = ",".join(f"{v}" if k == "softmax" else f"{k}={v}" for k, v in sorted(variants.items())) or "exp"
    shape = f"m={m} n={n}" + (f" b={batch}" if stage == "d" else "")
    return {
        "stage": stage, "cfg": tag_cfg, "fixture": fixture, "seed": seed, "m": m, "n": n, "d": d,
        "dtype": dtype, "variants": variants, "batch": batch, "heads": heads, "kv_heads": kv_heads,
        "causal": causal, "expect": expect,
        "tag": f"{stage.upper()} {tag_cfg:21s} {shape:20s} {vtxt:17s} {fixture}#{seed}",
    }


def c_cases():
    """64 cases: every n for the two main configs, a subset for the other d x dtype pairs."""
    out = []
    for d, dtype, full in ((128, "bf16", True), (64, "fp16", True), (128, "fp16", False), (64, "bf16", False)):
        cfg = f"d{d}-{dtype}"
        for n in (C_N if full else (128, 384, 4096, 32768)):
            m = min(n, 512)
            seeds = (0, 1, 2) if full and n in (256, 4096) else (0,)
            out += [_case("c", cfg, "random", seed, m, n, d=d, dtype=dtype) for seed in seeds]
            fixtures = FIX_ALL if full and n in (256, 1024, 32768) else ("onehot-p",) if n == 4096 else ()
            out += [_case("c", cfg, fx, 0, m, n, d=d, dtype=dtype) for fx in fixtures]
    for d, dtype in ((128, "bf16"), (64, "fp16")):
        for n in (128, 4096, 32768):
            out.append(_case("c", f"d{d}-{dtype}", "identity-softmax", 0, min(n, 512), n, d=d, dtype=dtype,
                             variants={"softmax": "identity"}))
    return out


def d_cases():
    """104 cases: every seqlen for every config, all fixtures for two configs, m != n pairs."""
    out = []
    for name, (d, dtype, h, hk, causal, softmax) in D_CFG.items():
        kw = dict(d=d, dtype=dtype, heads=h, kv_heads=hk, causal=causal, variants={"softmax": softmax})
        main_fx = "random" if softmax == "exp" else "identity-softmax"
        for s in D_SEQ:
            b = 2 if s <= 1024 else 1
            out.append(_case("d", name, main_fx, 0, s, s, batch=b, **kw))
            if s in (1000, 4096) and name in ("d128-bf16-h8/2-causal", "d64-fp16-h6/2"):
                out += [_case("d", name, fx, 0, s, s, batch=b, **kw) for fx in FIX_ALL]
        if causal or name == "d64-fp16-h6/2":
            for m, n in D_MN:
                out.append(_case("d", name, main_fx, 1, m, n, batch=2, **kw))
                if softmax == "exp" and causal:
                    out.append(_case("d", name, "onehot-p", 1, m, n, batch=2, **kw))
    return out


def bug_cases(hang_demo=False):
    out = []
    for variants, n, expect in C_BUGS:
        out.append(_case("c", "d128-bf16", "random", 0, 256, n, d=128, dtype="bf16", variants=variants,
                         expect=expect))
    if hang_demo:
        out.append(_case("c", "d128-bf16", "random", 0, 256, 512, d=128, dtype="bf16",
                         variants={"bug": "stuck_pipeline"}, expect="hang"))
    return out


def all_cases(only=("c", "d", "bugs"), match=None, hang_demo=False):
    cases = []
    if "c" in only:
        cases += c_cases()
    if "d" in only:
        cases += d_cases()
    if "bugs" in only:
        cases += bug_cases(hang_demo)
    if match:
        cases = [c for c in cases if all(tok in c["tag"] for tok in match.split(","))]
    return cases


# --------------------------------------------------------------------------------------
# Compile, inputs, launch, compare
# --------------------------------------------------------------------------------------
def stage_of(case):
    from stages.fmha.stage_c_online import StageC
    from stages.fmha.stage_d_fmha import StageD

    return StageC() if case["stage"] == "c" else StageD()


def params_of(case):
    from workbench.kernels.stage import Params

    keys = ("m", "n", "d", "dtype") if case["stage"] == "c" else ("m", "n", "d", "dtype", "batch", "heads", "kv_heads", "causal")
    return Params({k: case[k] for k in keys})


def compile_key(case):
    keys = ("stage", "d", "dtype") + (("heads", "kv_heads", "causal") if case["stage"] == "d" else ())
    return tuple(case[k] for k in keys) + tuple(sorted(case["variants"].items()))


def get_compiled(case, cache):
    """(stage, compiled) for the case's compile key; m, n and batch are runtime values."""
    key = compile_key(case)
    if key not in cache:
        stage = stage_of(case)
        compiled = None
        if not SIMULATE or os.environ.get("WB_GPU_CHECK_COMPILE"):
            compiled = stage.compile(params_of(case), case["variants"], "sm_90a")
        cache[key] = (stage, compiled)
    return cache[key]


_FIXTURES = None


def make_inputs(case, stage, p):
    global _FIXTURES
    from workbench.kernels.fixtures import load_fixtures

    if _FIXTURES is None:
        _FIXTURES = load_fixtures(ROOT / "fixtures")
    return _FIXTURES[case["fixture"]].make(stage.inputs(p), p, case["seed"], DEVICE)


def simulated_launch(case, inputs, outputs):
    """CPU stand-in for the kernel (WB_GPU_CHECK_SIMULATE): a torch model with its bugs."""
    import torch

    from stages.fmha import stage_c_online as sc
    from stages.fmha import stage_d_fmha as sd

    v = case["variants"]
    if v.get("bug") == "stuck_pipeline" and case["n"] >= 512:
        time.sleep(3600)  # the real kernel hangs here
    if case["stage"] == "c" and v.get("softmax", "exp") == "exp":
        o, lse = sc.emulate_online(inputs["q"], inputs["k"], inputs["v"], bug=v.get("bug", "none"),
                                   rescale=v.get("rescale", "on") == "on")
    elif case["stage"] == "c":
        o, lse = sc.attention_ref(inputs["q"], inputs["k"], inputs["v"], torch.float32, softmax="identity")
    else:
        o, lse = sd.fmha_ref(inputs["q"], inputs["k"], inputs["v"], torch.float32, causal=case["causal"],
                             softmax=v.get("softmax", "exp"))
        if SIMULATE_MODE.startswith("d:"):  # a D bug model, by (part of) its hypothesis name
            for name, h in _hypotheses(case, inputs, None).items():
                if SIMULATE_MODE[2:] in name:
                    o = h
    outputs["o"].copy_(o.to(outputs["o"].dtype))
    outputs["lse"].copy_(lse.float())


def run_case(case, cache, on_start=None):
    """Run one case; returns {"verdict", "o": metrics, "lse": metrics, "_t": tensors}."""
    import torch

    from workbench.compare import metrics, poison

    stage, compiled = get_compiled(case, cache)
    p = params_of(case)
    inputs = make_inputs(case, stage, p)
    outputs = {name: torch.empty(spec.shape, dtype=spec.torch_dtype(), device=DEVICE)
               for name, spec in stage.outputs(p).items()}
    for t in outputs.values():
        poison(t)
    if on_start:
        on_start()
    if SIMULATE:
        simulated_launch(case, inputs, outputs)
    else:
        stage.launch(compiled, inputs, outputs)
        torch.cuda.synchronize()
    ref32 = stage.reference(inputs, p, case["variants"], torch.float32)
    reflow = stage.reference(inputs, p, case["variants"], inputs["q"].dtype)
    res = {name: metrics(outputs[name], ref32[name], reflow[name], TOLERANCE) for name in outputs}
    res["verdict"] = "PASS" if all(res[n]["verdict"] == "PASS" for n in outputs) else "FAIL"
    res["_t"] = (inputs, outputs, ref32)
    return res


def fmt(x):
    return "inf" if x is None or not math.isfinite(x) else f"{x:.1e}"


def case_line(case, res):
    o, lse = res["o"], res["lse"]
    line = (f"{case['tag']}  {res['verdict']}  o {fmt(o['max_abs_err'])}/{fmt(o['tolerance'])}"
            f"  lse {fmt(lse['max_abs_err'])}/{fmt(lse['tolerance'])}  unw {o['unwritten']}/{lse['unwritten']}")
    if case["expect"] != "pass":
        ok = (res["verdict"] == "FAIL") == (case["expect"] == "fail")
        line += f"  [expected {case['expect'].upper()}: {'ok' if ok else 'UNEXPECTED'}]"
    return line


# --------------------------------------------------------------------------------------
# Diagnosis (failures only): a few lines
# --------------------------------------------------------------------------------------
def _bhsd(x, case):
    """o/q/k/v -> (B, H, S, D); lse (B, H, M) stays; C tensors get B = H = 1."""
    if case["stage"] == "c":
        return x[None, None] if x.dim() == 2 else x[None, None]
    return x.permute(0, 2, 1, 3) if x.dim() == 4 else x


def _blocks(mask, size):
    """Indices of size-row blocks (along dim 0) where mask has any True."""
    rows = mask.reshape(mask.shape[0], -1).any(1)
    idx = sorted({int(i) // size for i in rows.nonzero().flatten().tolist()})
    total = -(-mask.shape[0] // size)
    if len(idx) == total:
        return f"all {total}"
    return f"{len(idx)}/{total} [" + ",".join(map(str, idx[:8])) + (",...]" if len(idx) > 8 else "]")


def _hypotheses(case, inputs, ref32):
    """name -> predicted o, for simple models of bugs (C: the kernel's own bug variants)."""
    import torch

    from stages.fmha import stage_c_online as sc
    from stages.fmha import stage_d_fmha as sd

    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    softmax = case["variants"].get("softmax", "exp")
    hyp = {}
    if case["stage"] == "c" and softmax == "exp" and case["n"] % 128 == 0:
        for bug in ("kv_tile0", "no_rescale", "pv_layout", "pv_rowmajor"):
            hyp[f"bug={bug}"] = sc.emulate_online(q, k, v, bug=bug)[0]
        hyp["rescale=off"] = sc.emulate_online(q, k, v, rescale=False)[0]
    elif case["stage"] == "c":
        n = k.shape[0]
        k0, v0 = k[:128].repeat(-(-n // 128), 1)[:n], v[:128].repeat(-(-n // 128), 1)[:n]
        hyp["KV tile 0 only"] = sc.attention_ref(q, k0, v0, torch.float32, softmax=softmax)[0]
    else:
        causal = case["causal"]
        if causal:
            hyp["not causal"] = sd.fmha_ref(q, k, v, torch.float32, softmax=softmax)[0]
            if case["m"] != case["n"]:
                m, n = case["m"], case["n"]
                qt, kt, vt = (x.float().transpose(1, 2) for x in (q, k, v))
                g = case["heads"] // case["kv_heads"]
                kt, vt = kt.repeat_interleave(g, 1), vt.repeat_interleave(g, 1)
                s = (qt @ kt.transpose(-1, -2)) / math.sqrt(case["d"])
                i, j = torch.arange(m, device=s.device)[:, None], torch.arange(n, device=s.device)[None]
                s = s.masked_fill(j > i + (n - m), float("-inf"))
                hyp["causal bottom-right (flash-attn)"] = torch.softmax(s, -1).nan_to_num(0).matmul(vt).transpose(1, 2)
        if case["n"] % 128:
            pad = 128 - case["n"] % 128
            kp = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad))
            vp = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, pad))
            o_pad = sd.fmha_ref(q, kp, vp, torch.float32, causal=False, softmax=softmax)[0]
            if not causal:
                hyp["KV tail not masked (zero keys count)"] = o_pad
        if case["kv_heads"] != case["heads"]:
            idx = torch.arange(case["heads"], device=k.device) % case["kv_heads"]
            hyp["GQA kv head = h % kv_heads"] = sd.fmha_ref(
                q, k[:, :, idx], v[:, :, idx], torch.float32, causal=causal, softmax=softmax)[0]
    return hyp


def _onehot_reads(case, inputs, out, ref32, bad_rows):
    """For onehot-p: which V row each bad query read (nearest V row of its kv head)."""

    o = _bhsd(out.float(), case)
    r = _bhsd(ref32.float(), case)
    vv = _bhsd(inputs["v"].float(), case)
    g = case["heads"] // case["kv_heads"]
    lines, reads = [], {}
    for b, h, i in bad_rows[:64]:
        vh = vv[b, h // g]
        got = int((vh - o[b, h, i]).abs().amax(-1).argmin())
        want = int((vh - r[b, h, i]).abs().amax(-1).argmin())
        reads[(want // 128, got // 128)] = reads.get((want // 128, got // 128), 0) + 1
        if len(lines) < 2:
            lines.append(f"onehot-p q(b{b},h{h},row {i}) read key {got} (tile {got // 128}, row {got % 128}),"
                         f" expected key {want} (tile {want // 128}, row {want % 128})")
    summary = ", ".join(f"tile {w}->{gt}: {c}" for (w, gt), c in sorted(reads.items())[:6])
    return lines + [f"onehot-p reads of up to 64 bad rows (expected tile -> read tile): {summary}"]


def diagnose(case, res, max_lines=4):

    inputs, outputs, ref32 = res["_t"]
    lines = []
    o, r = outputs["o"].float(), ref32["o"].float()
    tol = res["o"]["tolerance"]
    from workbench.compare import unwritten_mask

    unw = unwritten_mask(outputs["o"])
    err = (o - r).abs().nan_to_num(nan=float("inf"))
    bad = (err > tol) | unw
    bb = _bhsd(bad, case)
    per_bh = bb.flatten(2).any(2)  # (B, H)
    rows = bb.any(-1)  # (B, H, M)
    bad_rows = [tuple(int(x) for x in t) for t in rows.nonzero()[:64]]
    where = f"o: {int(rows.sum())}/{rows.numel()} rows bad"
    if case["stage"] == "d":
        where += f"; (batch,head) bad: {int(per_bh.sum())}/{per_bh.numel()}"
    where += f"; 64-row blocks {_blocks(rows.any(0).any(0), 64)}"
    if int(unw.sum()):
        where += f"; unwritten in 64-row blocks {_blocks(_bhsd(unw, case).any(-1).any(0).any(0), 64)}"
    lines.append(where)
    lse_bad = res["lse"]["verdict"] == "FAIL"
    if lse_bad:
        lo, lr = outputs["lse"].float(), ref32["lse"].float()
        d = (lo - lr).nan_to_num(nan=float("inf"))
        nbad = int((d.abs() > res["lse"]["tolerance"]).sum())
        lines.append(f"lse: {nbad}/{d.numel()} bad, max err {fmt(float(d.abs().max()))} at {res['lse']['max_err_at']},"
                     f" out - ref median {float(d.median()):.3g}")
    try:
        hyp = _hypotheses(case, inputs, ref32)
        scores = []
        for name, h in hyp.items():
            e = float((o - h.float().to(o.device)).abs().nan_to_num(nan=float("inf")).max())
            scores.append((e, name))
        scores.sort()
        ref_err = res["o"]["max_abs_err"]
        match = [f"{name} ({fmt(e)})" for e, name in scores if e <= max(tol, 0.05 * ref_err)]
        best = ", ".join(f"{name} {fmt(e)}" for e, name in scores[:3])
        lines.append("matches: " + (", ".join(match) if match else f"none (closest: {best})"))
    except Exception as exc:  # diagnosis must never break the run
        lines.append(f"(hypotheses failed: {type(exc).__name__}: {exc})")
    if case["fixture"] == "onehot-p" and bad_rows:
        lines += _onehot_reads(case, inputs, o, r, bad_rows)
    return lines[:max_lines + 1]


# --------------------------------------------------------------------------------------
# Child: run cases from index `start`, streaming results
# --------------------------------------------------------------------------------------
def child_main(cases, start, max_diag):
    import torch

    cache = {}
    n_diag = 0
    note = ""
    for idx in range(start, len(cases)):
        case = cases[idx]
        key = compile_key(case)
        if key not in cache:
            print(f"@@start {idx} compile", flush=True)
            t0 = time.perf_counter()
            try:
                get_compiled(case, cache)
            except Exception as exc:
                print(f"{case['tag']}  COMPILE ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                      flush=True)
                cache[key] = None
                continue
            note = f"  (compiled in {time.perf_counter() - t0:.1f}s)"
        if cache.get(key) is None:
            continue
        try:
            res = run_case(case, cache, on_start=lambda: print(f"@@start {idx} launch", flush=True))
        except Exception as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else ""
            print(f"{case['tag']}  ERROR {type(exc).__name__}: {msg}", flush=True)
            if "CUDA" in msg or "cuda" in type(exc).__name__.lower() or "AcceleratorError" in type(exc).__name__:
                sys.exit(3)  # the CUDA context is poisoned: the parent restarts after this case
            print(f"@@done {idx}", flush=True)
            continue
        print(case_line(case, res) + note, flush=True)
        note = ""
        if res["verdict"] == "FAIL" and n_diag < max_diag:
            n_diag += 1
            for ln in diagnose(case, res):
                print(f"    {ln}", flush=True)
        print(f"@@done {idx}", flush=True)
        del res
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------
# Parent: watchdog, restarts, summary
# --------------------------------------------------------------------------------------
def parent_main(args, cases):
    import queue
    import threading

    try:
        import torch

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        print(f"# gpu_check_cd: {len(cases)} cases; torch {torch.__version__}; {dev};"
              f" python {sys.version.split()[0]}; simulate={SIMULATE}", flush=True)
    except Exception as exc:
        print(f"# gpu_check_cd: {len(cases)} cases ({exc})", flush=True)
    counts = {"PASS": 0, "FAIL": 0, "HANG": 0, "ERROR": 0, "bad": 0}
    start, t_start = 0, time.monotonic()
    while start < len(cases):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--start", str(start),
               "--only", args.only, "--max-diag", str(args.max_diag)]
        if args.match:
            cmd += ["--match", args.match]
        if args.hang_demo:
            cmd.append("--hang-demo")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True)
        lines = queue.Queue()  # a reader thread: select() + readline() would strand buffered lines

        def pump(stream=proc.stdout, q=lines):
            for ln in stream:
                q.put(ln)
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
        current, last, hung, tail = (start, "compile"), time.monotonic(), False, []
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() - last > (args.compile_timeout if current[1] == "compile" else args.timeout):
                    hung = True
                    os.killpg(proc.pid, 9)
                    break
                continue
            if line is None:
                break
            last, line = time.monotonic(), line.rstrip("\n")
            if line.startswith("@@start "):
                i, what = line.split()[1:3]
                current = (int(i), what)
            elif line.startswith("@@done "):
                start = int(line.split()[1]) + 1
            elif line.startswith(("C ", "D ", "    ", "## ")):
                print(line, flush=True)
                if line.startswith(("C ", "D ")):
                    for key in ("PASS", "FAIL", "ERROR"):
                        counts[key] += f" {key}" in line
                    expected = "[expected" in line
                    counts["bad"] += ("UNEXPECTED" in line) if expected else (" FAIL " in line or " ERROR" in line)
            else:
                tail = (tail + [line])[-3:]
        proc.wait()
        if hung or proc.returncode:
            c = cases[current[0]]
            what = "HANG" if hung else f"CHILD EXIT {proc.returncode}"
            exp = c["expect"] == "hang"
            print(f"{c['tag']}  {what} during {current[1]}"
                  + (f" after {args.timeout:.0f}s without progress" if hung else f"; last output: {' | '.join(tail)[:200]}")
                  + (f"  [expected HANG: {'ok' if hung else 'UNEXPECTED'}]" if exp else ""), flush=True)
            counts["HANG" if hung else "ERROR"] += 1
            counts["bad"] += not (exp and hung)
            start = current[0] + 1
        elif proc.returncode == 0:
            break
    print(f"# {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['HANG']} HANG, {counts['ERROR']} ERROR;"
          f" {counts['bad']} not as expected (bug cases count when their outcome differs from the"
          f" expected one); {time.monotonic() - t_start:.0f}s", flush=True)
    return 1 if counts["bad"] else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="c,d,bugs", help="comma list of c, d, bugs")
    ap.add_argument("--match", help="only cases whose tag contains every comma-separated token")
    ap.add_argument("--hang-demo", action="store_true", help="add bug=stuck_pipeline n=512 (expected HANG)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without progress in a launch = HANG")
    ap.add_argument("--compile-timeout", type=float, default=300.0)
    ap.add_argument("--max-diag", type=int, default=12, help="failures that get diagnosis lines")
    ap.add_argument("--list", action="store_true", help="print the case tags and exit")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cases = all_cases(tuple(args.only.split(",")), args.match, args.hang_demo)
    if args.list:
        for i, c in enumerate(cases):
            print(i, c["tag"], c["expect"])
        return 0
    if args.child:
        child_main(cases, args.start, args.max_diag)
        return 0
    return parent_main(args, cases)


if __name__ == "__main__":
    sys.exit(main())
