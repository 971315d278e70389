#!/usr/bin/env python
"""GPU check of FMHA stages A (S = Q K^T scale) and B (P = softmax(S)), the whole matrix.

    python benchmarks/gpu_check_ab.py                 # everything, compact (< ~150 lines)
    python benchmarks/gpu_check_ab.py --per-case      # one line per case
    python benchmarks/gpu_check_ab.py --configs a-64-bf16,b-exp-128-fp16 --n 128,4096

Matrix: configs (stage a; stage b softmax=exp; stage b softmax=identity) x d {64, 128} x
dtype {bf16, fp16}; n in {128, 256, 512, 1024, 4096} with m = n, plus one m != n case
(m=384, n=1024, random) per config; fixtures per config (FIXTURES below), random with seeds
0, 1, 2.

Verdict per case (wb's rule): max|out - ref32| <= 2 * max|ref_low - ref32| + 1e-4, where
ref32 is torch in fp32 and ref_low torch in the kernel's dtype; outputs are filled with NaN
before the launch and every NaN left is counted as unwritten (any unwritten element fails);
an all-zero or constant output fails unless the reference is constant too.

Output (compact mode): a header per config (compile time), then one line per n listing
every fixture as  name:ok(err/tol)  or  name:FAIL(err/tol,nan=N), and the median time of a
launch (t=..us, host launch overhead included; random#0 when it passed), and under a failing case
a few indented diagnosis lines: which 128-column / 128-row tiles are wrong, the first wrong
element, the ratio out/ref, and which simple hypotheses the output matches (K tile 0 only,
transposed, no scale, one half of d, per-tile softmax, unnormalized, ...).

Robustness: the cases run in a child process; before each launch it reports the case it
starts, and the parent kills it when no progress comes for --timeout seconds (a hang),
prints HANG with that case and restarts a child at the next (config, n) group. A CUDA error
(which poisons the context) ends the child the same way.

The functions here (make_inputs, run_case, ...) are also used by tests/test_stage_ab.py.
"""

from __future__ import annotations

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

N_LIST = (128, 256, 512, 1024, 4096)
D_LIST = (64, 128)
DTYPES = ("bf16", "fp16")
SEEDS = (0, 1, 2)
EXTRA_MN = (384, 1024)  # one m != n case per config (random fixture)

# config kind -> (stage letter, variants, fixtures)
KINDS = {
    "a": ("a", {}, ("random", "single", "iota")),
    "b-exp": ("b", {"softmax": "exp"}, ("random", "single", "iota", "uniform", "onehot")),
    "b-identity": ("b", {"softmax": "identity"}, ("random", "single", "iota")),
}
TOL_FACTOR, TOL_ATOL = 2.0, 1e-4

# Self-test of this script without a GPU: WB_GPU_CHECK_SIMULATE=ok|bug-k0|hang|crash runs on
# the CPU, compiles for real, and replaces the launch by a torch emulation (correct, or with
# a K-tile-0 bug, or hanging at n=256 iota, or a "CUDA error" at n=512 single).
SIMULATE = os.environ.get("WB_GPU_CHECK_SIMULATE", "")
DEVICE = "cpu" if SIMULATE else "cuda"


def all_configs():
    return [f"{kind}-{d}-{dt}" for kind in KINDS for d in D_LIST for dt in DTYPES]


def parse_config(name: str):
    kind, d, dt = name.rsplit("-", 2)
    letter, variants, fixtures = KINDS[kind]
    return kind, letter, dict(variants), fixtures, int(d), dt


# --------------------------------------------------------------------------------------
# Inputs (simple, deterministic generators; the fixtures/ library will replace them)
# --------------------------------------------------------------------------------------
def single_position(n: int, d: int):
    """(row of K, column of d) of the single non-zero K element: in the last KV tile (not
    the first one when n > 128), at an odd offset inside the tile, in the second half of d."""
    j0 = (n - 128 + 37) if n > 128 else 37
    return j0, d - 3


def onehot_columns(n: int, d: int):
    """Column of S that carries query-row class k (k = 0..d-1): tile k % T, offset
    (37 k + 11) % 128 (all distinct)."""
    t = n // 128
    return [(k % t) * 128 + (37 * k + 11) % 128 for k in range(d)]


def make_inputs(fixture: str, m: int, n: int, d: int, dtype: str, seed: int = 0, device=None):
    """Q (m, d) and K (n, d) for a fixture:

    random   Q, K ~ N(0, 1) (seeded).
    single   Q random; K zero except K[j0, d-3] = 4 sqrt(d) (j0 in the last KV tile), so
             S has one non-zero column (j0): a misplaced column/tile shows at once.
    iota     index-encoded, exact in bf16/fp16 and in fp32 sums:
             S[i, j] = (j % 128) + 128 (i % 16) + 2048 ((j // 128) % 8)  (before the scale)
             so a wrong value decodes to (column in tile, row mod 16, KV tile mod 8).
    uniform  K rows all equal: every row of S is constant, P = 1/n exactly.
    onehot   Q[i] = e_(i % d), K[c_k] = 100 sqrt(d) e_k: logit 100 at one column per row,
             0 elsewhere; P is one-hot, and exp without the max subtracted overflows.
    """
    import torch

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(seed)
    if fixture == "random":
        q = torch.randn(m, d, generator=g)
        k = torch.randn(n, d, generator=g)
    elif fixture == "single":
        q = torch.randn(m, d, generator=g)
        k = torch.zeros(n, d)
        j0, c0 = single_position(n, d)
        k[j0, c0] = 4.0 * math.sqrt(d)
    elif fixture == "iota":
        i = torch.arange(m, dtype=torch.float32)
        j = torch.arange(n, dtype=torch.float32)
        q = torch.zeros(m, d)
        k = torch.zeros(n, d)
        q[:, 0] = 1.0
        k[:, 0] = j % 128
        q[:, 1] = i % 16
        k[:, 1] = 128.0
        q[:, 2] = 2048.0
        k[:, 2] = torch.div(j, 128, rounding_mode="floor") % 8
    elif fixture == "uniform":
        q = torch.randn(m, d, generator=g)
        k = torch.randn(1, d, generator=g).expand(n, d).contiguous()
    elif fixture == "onehot":
        q = torch.zeros(m, d)
        q[torch.arange(m), torch.arange(m) % d] = 1.0
        k = torch.zeros(n, d)
        cols = onehot_columns(n, d)
        k[cols, torch.arange(d)] = 100.0 * math.sqrt(d)
    else:
        raise ValueError(f"unknown fixture {fixture!r}")
    device = device or DEVICE
    return {"q": q.to(tdt).to(device).contiguous(), "k": k.to(tdt).to(device).contiguous()}


# --------------------------------------------------------------------------------------
# Compile / launch / compare
# --------------------------------------------------------------------------------------
def load_stage(letter: str):
    from stages.fmha.stage_a_qk import StageA
    from stages.fmha.stage_b_softmax import StageB

    return {"a": StageA, "b": StageB}[letter]()


def params(m, n, d, dtype):
    from workbench.kernels.stage import Params

    return Params({"m": m, "n": n, "d": d, "dtype": dtype})


def compile_stage(letter: str, variants: dict, d: int, dtype: str, arch: str = "sm_90a"):
    """(stage, compiled, seconds). m and n are dynamic: one compile per (stage, variant, d, dtype)."""
    stage = load_stage(letter)
    t0 = time.perf_counter()
    compiled = stage.compile(params(128, 128, d, dtype), variants, arch)
    return stage, compiled, time.perf_counter() - t0


def out_name(letter):
    return {"a": "s", "b": "p"}[letter]


def run_case(stage, compiled, letter, variants, fixture, m, n, d, dtype, seed=0, on_start=None, time_it=False):
    """Run one case on the GPU; returns a result dict (verdict, err, tol, unwritten, ...)."""
    import torch

    p = params(m, n, d, dtype)
    inputs = make_inputs(fixture, m, n, d, dtype, seed)
    name = out_name(letter)
    spec = stage.outputs(p)[name]
    out = torch.full(spec.shape, float("nan"), dtype=spec.torch_dtype(), device=DEVICE)
    if on_start:
        on_start()
    if SIMULATE:
        _simulated_launch(letter, variants, fixture, inputs, out)
    else:
        stage.launch(compiled, inputs, {name: out})
        torch.cuda.synchronize()
    ref32 = stage.reference(inputs, p, variants, torch.float32)[name].float()
    reflow = stage.reference(inputs, p, variants, inputs["q"].dtype)[name].float()
    res = compare(out.float(), ref32, reflow)
    res.update(fixture=fixture, seed=seed, m=m, n=n, d=d, dtype=dtype)
    res["_tensors"] = (inputs, out, ref32)
    if time_it and res["ok"] and not SIMULATE:
        res["us"] = _time_launch(stage, compiled, inputs, {name: out})
    return res


def _time_launch(stage, compiled, inputs, outputs, reps=5):
    """Median microseconds of `reps` launches (CUDA events, warm; launch overhead included)."""
    import torch

    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        stage.launch(compiled, inputs, outputs)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return sorted(times)[len(times) // 2]


def _simulated_launch(letter, variants, fixture, inputs, out):
    """CPU stand-in for the kernel (see SIMULATE)."""
    import torch

    from stages.fmha import reference

    q, k = inputs["q"], inputs["k"]
    n = k.shape[0]
    if SIMULATE == "hang" and n == 256 and fixture == "iota":
        time.sleep(3600)
    if SIMULATE == "crash" and n == 512 and fixture == "single":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
    if SIMULATE == "bug-k0":
        k = k[:128].repeat(n // 128, 1)
    if letter == "a":
        res = reference.scores(q, k, torch.float32)
    else:
        res = reference.softmax_probs(q, k, torch.float32, softmax=variants.get("softmax", "exp"))
    out.copy_(res.to(out.dtype))


def compare(out, ref32, reflow):
    """wb's verdict: err = max|out - ref32| (NaN-aware), tol = 2 * max|ref_low - ref32| + 1e-4."""
    import torch

    nan = torch.isnan(out)
    unwritten = int(nan.sum())
    diff = (out - ref32).abs()
    err = float(diff[~nan].max()) if unwritten < out.numel() else float("inf")
    if unwritten:
        err = float("inf") if not math.isfinite(err) else err
    low_err = float((reflow - ref32).abs().max())
    tol = TOL_FACTOR * low_err + TOL_ATOL
    reason = ""
    ok = unwritten == 0 and math.isfinite(err) and err <= tol
    if not math.isfinite(tol):
        ok, reason = False, "tolerance not finite (low-precision reference overflowed)"
    ref_const = bool((ref32 == ref32.flatten()[0]).all())
    if ok and not ref_const:
        if bool((out == 0).all()):
            ok, reason = False, "all-zero output"
        elif bool((out == out.flatten()[0]).all()):
            ok, reason = False, "constant output"
    if unwritten:
        reason = reason or f"{unwritten} unwritten (NaN) elements"
    elif not ok and not reason:
        reason = "error above tolerance"
    return {"ok": ok, "err": err, "tol": tol, "unwritten": unwritten, "reason": reason}


# --------------------------------------------------------------------------------------
# Diagnosis (short, only for failures)
# --------------------------------------------------------------------------------------
def _tile_list(bad, total):
    idx = [i for i, b in enumerate(bad) if b]
    if not idx:
        return "none"
    if len(idx) == total:
        return f"all {total}"
    s = ",".join(str(i) for i in idx[:10]) + (",..." if len(idx) > 10 else "")
    return f"{len(idx)}/{total} [{s}]"


def diagnose(letter, variants, res, max_lines=6):
    """A few lines explaining a failing case."""
    import torch

    inputs, out, ref32 = res["_tensors"]
    out = out.float()
    tol = res["tol"]
    q, k = inputs["q"].float(), inputs["k"].float()
    m, n = ref32.shape
    d = q.shape[1]
    scale = 1.0 / math.sqrt(d)
    lines = []
    bad = (out - ref32).abs().nan_to_num(nan=float("inf")) > tol
    col_bad = bad.view(m, n // 128, 128).any(dim=2).any(dim=0).tolist()
    row_bad = bad.view(m // 128, 128, n).any(dim=2).any(dim=1).tolist()
    nan = torch.isnan(out)
    line = f"bad col tiles {_tile_list(col_bad, n // 128)}; bad row tiles {_tile_list(row_bad, m // 128)}"
    if nan.any():
        nan_cols = nan.view(m, n // 128, 128).any(dim=2).any(dim=0).tolist()
        nan_rows = nan.view(m // 128, 128, n).any(dim=2).any(dim=1).tolist()
        line += f"; NaN in col tiles {_tile_list(nan_cols, n // 128)}, row tiles {_tile_list(nan_rows, m // 128)}"
    lines.append(line)
    if bad.any():
        nz = bad.nonzero()
        i, j = [int(x) for x in nz[0]]
        line = (
            f"first bad (row {i}, col {j}) = tile ({i // 128},{j // 128}) at ({i % 128},{j % 128}): "
            f"out {float(out[i, j]):.6g} ref {float(ref32[i, j]):.6g}; {int(bad.sum())}/{bad.numel()} bad"
        )
        rows16 = sorted(set((nz[:, 0] % 16).tolist()))
        cols8 = sorted(set((nz[:, 1] % 8).tolist()))
        if len(rows16) < 16:
            line += f"; only rows%16 in {rows16}"
        if len(cols8) < 8:
            line += f"; only cols%8 in {cols8}"
        lines.append(line)
        if res.get("fixture") == "iota" and (letter == "a" or variants.get("softmax") == "identity"):
            v = out[i, j].item() / scale
            if math.isfinite(v):
                v = int(round(v))
                lines.append(
                    f"iota decode of out[{i},{j}]: col%128={v % 128} row%16={(v // 128) % 16} "
                    f"ktile%8={v // 2048} (expected {j % 128}, {i % 16}, {(j // 128) % 8})"
                )
    if letter == "b" and variants.get("softmax", "exp") == "exp":
        fin = torch.isfinite(out) & (ref32.abs() > 1e-3)
        if fin.any():
            r = out[fin] / ref32[fin]
            rs = out.nan_to_num(0).sum(1)
            lines.append(
                f"out/ref where ref>1e-3: median {float(r.median()):.4g} min {float(r.min()):.4g} "
                f"max {float(r.max()):.4g}; row sums of out: min {float(rs.min()):.4g} max {float(rs.max()):.4g}"
            )
    # hypotheses: what the output matches instead
    hyps = {}
    s = (q @ k.T) * scale

    def sm(x):
        return torch.softmax(x, dim=-1)

    if letter == "a" or variants.get("softmax") == "identity":
        base = lambda S: S  # noqa: E731
    else:
        base = sm
    k0 = k[:128].repeat(n // 128, 1)
    hyps["K tile 0 for every tile"] = base((q @ k0.T) * scale)
    if m >= 128:
        q0 = q[:128].repeat(m // 128, 1)
        hyps["Q tile 0 for every row block"] = base((q0 @ k.T) * scale)
    if m == n:
        hyps["transposed"] = ref32.T
    hyps["no scale"] = base(q @ k.T)
    hyps["scale applied twice"] = base(s * scale)
    if d > 64:
        hyps["first 64 of d only"] = base((q[:, :64] @ k[:, :64].T) * scale)
        hyps["last 64 of d only"] = base((q[:, 64:] @ k[:, 64:].T) * scale)
    if letter == "b" and variants.get("softmax", "exp") == "exp":
        hyps["softmax per 128-col tile"] = sm(s.view(m, n // 128, 128)).view(m, n)
        hyps["unnormalized exp(S - rowmax)"] = (s - s.amax(1, keepdim=True)).exp()
        hyps["softmax of first tile only, others 0"] = torch.cat(
            [sm(s[:, :128]), torch.zeros(m, n - 128, device=s.device)], 1
        )
        hyps["sum over 1 lane only (x4 too big)"] = 4 * ref32
        hyps["identity (no softmax)"] = s
    matches = []
    for name, h in hyps.items():
        e = float((out - h.float()).abs().nan_to_num(nan=float("inf")).max())
        if e <= max(tol, 1e-3 * float(h.abs().max())):
            matches.append(name)
    lines.append("matches: " + (", ".join(matches) if matches else "no simple hypothesis"))
    return lines[:max_lines]


# --------------------------------------------------------------------------------------
# Child: run groups of cases, stream results
# --------------------------------------------------------------------------------------
def fmt_err(x):
    return "inf" if not math.isfinite(x) else f"{x:.1e}"


def groups_for(configs, n_list, extra=True):
    """Work units: (config, m, n)."""
    out = []
    for c in configs:
        for n in n_list:
            out.append((c, n, n))
        if extra:
            out.append((c, EXTRA_MN[0], EXTRA_MN[1]))
    return out


def child_main(units, per_case):
    import torch

    compiled = {}
    diagnosed_groups = {}
    for config, m, n in units:
        kind, letter, variants, fixtures, d, dtype = parse_config(config)
        if config not in compiled:
            try:
                compiled[config] = compile_stage(letter, variants, d, dtype)
                print(f"## {config}: compiled in {compiled[config][2]:.2f}s", flush=True)
            except Exception as exc:  # a compile error: report, skip the config
                compiled[config] = None
                print(f"## {config}: COMPILE ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
        if compiled[config] is None:
            continue
        stage, fn, _ = compiled[config]
        fx = fixtures if (m == n) else ("random",)
        tokens, diag, timing = [], [], ""
        for fixture in fx:
            seeds = SEEDS if fixture == "random" else (0,)
            worst = None
            for seed in seeds:
                tag = f"{config} m={m} n={n} {fixture}#{seed}"
                try:
                    res = run_case(
                        stage, fn, letter, variants, fixture, m, n, d, dtype, seed,
                        on_start=lambda: print(f"@@start {tag}", flush=True),
                        time_it=(fixture == "random" and seed == 0),
                    )
                    if "us" in res:
                        timing = f"t={res['us']:.0f}us"
                except torch.cuda.OutOfMemoryError as exc:  # noqa: F841
                    print(f"   {tag}: OOM", flush=True)
                    continue
                except Exception as exc:
                    print(f"!! {tag}: ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
                    if "CUDA" in str(exc) or "cuda" in type(exc).__name__.lower():
                        sys.exit(3)  # the context is poisoned: let the parent restart us
                    continue
                if per_case:
                    print(
                        f"{config:18s} m={m:<5d} n={n:<5d} {fixture:8s}#{seed} "
                        f"{'PASS' if res['ok'] else 'FAIL'} err={fmt_err(res['err'])} "
                        f"tol={fmt_err(res['tol'])} unwritten={res['unwritten']}"
                        + (f"  ({res['reason']})" if not res["ok"] else ""),
                        flush=True,
                    )
                if not res["ok"] and not any(x[0].startswith(fixture + "#") for x in diag):
                    diag.append((f"{fixture}#{seed}", res))
                key = (not res["ok"], res["err"] / res["tol"] if res["tol"] > 0 else float("inf"))
                if worst is None or key > worst[0]:
                    worst = (key, res)
            if worst is None:
                tokens.append(f"{fixture}:ERR")
                continue
            r = worst[1]
            label = "rand0-2" if fixture == "random" and len(seeds) > 1 else fixture
            if r["ok"]:
                tokens.append(f"{label}:ok({fmt_err(r['err'])}/{fmt_err(r['tol'])})")
            else:
                nan = f",nan={r['unwritten']}" if r["unwritten"] else ""
                tokens.append(f"{label}:FAIL({fmt_err(r['err'])}/{fmt_err(r['tol'])}{nan})")
            print(f"@@tok {tokens[-1]}", flush=True)  # for the parent, should the group hang
        if not per_case:
            print(f"{config:18s} m={m:<5d} n={n:<5d} " + " ".join(tokens) + (f" {timing}" if timing else ""), flush=True)
        if diag:
            diagnosed_groups[config] = diagnosed_groups.get(config, 0) + 1
        for label, res in (diag[:2] if diagnosed_groups.get(config, 0) <= 2 else []):
            try:
                lines = diagnose(letter, variants, res)
            except Exception as exc:
                lines = [f"(diagnosis failed: {type(exc).__name__}: {exc})"]
            print(f"   - {label}: {res['reason']}", flush=True)
            for ln in lines:
                print(f"     {ln}", flush=True)
        print(f"@@done {config} {m} {n}", flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------
# Parent: watchdog
# --------------------------------------------------------------------------------------
def parent_main(args):
    configs = args.configs.split(",") if args.configs else all_configs()
    for c in configs:
        parse_config(c)
    n_list = [int(x) for x in args.n.split(",")] if args.n else list(N_LIST)
    units = groups_for(configs, n_list, extra=not args.no_extra)
    print(f"# gpu_check_ab: {len(configs)} configs x n {n_list}; timeout {args.timeout}s without progress", flush=True)
    try:
        import torch

        print(f"# torch {torch.__version__}, device {torch.cuda.get_device_name(0)}", flush=True)
    except Exception as exc:
        print(f"# no CUDA device? {exc}", flush=True)
    import cutlass

    print(f"# cutlass-dsl {getattr(cutlass, '__version__', '?')}, python {sys.version.split()[0]}", flush=True)
    n_fail = n_pass = 0
    diag_lines = suppressed = stuck = 0
    while units:
        cmd = [sys.executable, __file__, "--child", "--units", ";".join(f"{c},{m},{n}" for c, m, n in units)]
        if args.per_case:
            cmd.append("--per-case")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        current, done_units, tokens = None, 0, []
        last = time.monotonic()
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        hung = False
        stderr_tail = []
        while True:
            ready = sel.select(timeout=1.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                last = time.monotonic()
                line = line.rstrip("\n")
                if line.startswith("@@start "):
                    current = line[len("@@start "):]
                elif line.startswith("@@tok "):
                    tokens.append(line[len("@@tok "):])
                elif line.startswith("@@done "):
                    done_units += 1
                    current = None
                    tokens = []
                elif line.startswith("   "):
                    if diag_lines < args.max_diag_lines:
                        print(line, flush=True)
                    else:
                        suppressed += 1
                    diag_lines += 1
                elif line.startswith(("## ", "!! ")) or line.startswith(tuple(KINDS)):
                    n_fail += line.count(":FAIL(") + (" FAIL " in line)
                    n_pass += line.count(":ok(") + (" PASS " in line)
                    print(line, flush=True)
                else:
                    stderr_tail.append(line)
                    stderr_tail = stderr_tail[-3:]
            elif time.monotonic() - last > args.timeout:
                hung = True
                proc.kill()
                break
        proc.wait()
        if (hung or proc.returncode) and current:
            # the group line the child could not finish: what ran before the hang / crash
            cfg, m_, n_, fx = current.split()
            n_pass += sum(t.count(":ok(") for t in tokens)
            n_fail += sum(t.count(":FAIL(") for t in tokens)
            bad = fx.split("#")[0] + (":HANG" if hung else ":CRASH")
            print(f"{cfg:18s} {m_:<7s} {n_:<7s} " + " ".join(tokens + [bad]), flush=True)
        if hung:
            print(f"HANG: no progress for {args.timeout}s during [{current or 'compile/reference'}]; child killed", flush=True)
            n_fail += 1
        elif proc.returncode not in (0, None):
            print(f"CHILD EXIT {proc.returncode} during [{current or '-'}]; last stderr: {' | '.join(stderr_tail)[:300]}", flush=True)
            n_fail += 1
        # restart after the (config, n) group that was running
        units = units[done_units + (1 if (hung or proc.returncode) else 0):]
        if proc.returncode == 0 and not hung:
            break
        stuck = stuck + 1 if (done_units == 0 and current is None) else 0
        if stuck >= 2:  # the child dies before doing anything (import error?): stop here
            print(f"ABORT: the child failed twice before its first case; {len(units)} groups not run", flush=True)
            n_fail += 1
            break
    if suppressed:
        print(f"({suppressed} diagnosis lines suppressed; rerun one config with --configs/--n for them)")
    print(f"{n_pass} passed, {n_fail} failed")
    return 1 if n_fail else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", help="comma list, e.g. a-64-bf16,b-exp-128-fp16,b-identity-64-bf16")
    ap.add_argument("--n", help="comma list of n (m = n), default 128,256,512,1024,4096")
    ap.add_argument("--per-case", action="store_true", help="one line per case (long)")
    ap.add_argument("--no-extra", action="store_true", help="skip the m != n case")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds without progress = hang")
    ap.add_argument("--max-diag-lines", type=int, default=60, help="cap on diagnosis lines printed")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--units", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        units = []
        for u in args.units.split(";"):
            c, m, n = u.split(",")
            units.append((c, int(m), int(n)))
        child_main(units, args.per_case)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
