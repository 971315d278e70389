"""How fast `wb shapes` and the compile cache are (a script, not a timed test).

    python benchmarks/bench_shapes.py [--workspace PATH] [--kernel fmha] [--json]

Measures, with an empty cache of its own (a temporary WB_HOME) and workers of its own:
  1. `wb shapes KERNEL` cold: every stage traced and compiled (targets: <= 10 s for fmha
     on a 2-core machine);
  2. `wb shapes KERNEL` again: answered from the cache without starting a worker (<= 2 s);
  3. per stage, the compile step of a second `wb run` in a NEW process: compile_stage
     reloading the kernel from the disk cache (< 0.2 s), next to its cold compile.
Compiles need no GPU (sm_90a by default, from kernel.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wb(args, env, cwd):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def compile_in_new_process(ws: Path, kernel: str, letter: str, env) -> dict:
    script = textwrap.dedent(
        f"""
        import json, sys, time
        t0 = time.perf_counter()
        from workbench.compile.compiler import compile_stage
        from workbench.kernels.registry import load_kernel
        from workbench.kernels.stage import Params
        from workbench.workspace import find_workspace
        ws = find_workspace({str(ws)!r}); ws.activate()
        spec = load_kernel(ws.stages_dir / {kernel!r} / "kernel.yaml").stage({letter!r})
        stage = spec.load()
        b = compile_stage(spec, stage, Params(spec.resolve_params({{}})), spec.resolve_variants({{}}), None, ws=ws, strict=False)
        print(json.dumps({{"cache": b.cache, "seconds": b.seconds, "cold": b.cold_seconds, "note": b.cache_note,
                          "process": time.perf_counter() - t0}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ws, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=str(REPO))
    parser.add_argument("--kernel", default="fmha")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ws = Path(args.workspace).resolve()
    home = Path(tempfile.mkdtemp(prefix="wb-bench-home-"))
    env = dict(os.environ)
    env["WB_HOME"] = str(home)
    env["WB_WORKER_IDLE"] = "10"
    # a PYTHONPATH of its own gives this script its own warm workers (and current wb code)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(home)])
    cold_s, cold = wb(["shapes", args.kernel, "--json"], env, ws)
    if cold.returncode not in (0, 1):
        sys.exit(f"wb shapes failed: {cold.stderr[-2000:]}")
    stages = json.loads(cold.stdout)["stages"]
    hot_s, hot = wb(["shapes", args.kernel, "--json"], env, ws)
    hot_stages = json.loads(hot.stdout)["stages"]
    per_stage = []
    for s in stages:
        entry = {"stage": s["stage"], "status": s["status"], "cold_compile_s": s.get("seconds")}
        if s["status"] == "ok":
            entry["second_run"] = compile_in_new_process(ws, s["kernel"], s["letter"], env)
        per_stage.append(entry)
    result = {
        "cpus": os.cpu_count(),
        "wb_shapes_cold_s": cold_s,
        "wb_shapes_cached_s": hot_s,
        "cached_stages": [s.get("cache") for s in hot_stages],
        "stages": per_stage,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{os.cpu_count()} cores, workspace {ws}")
    print(f"wb shapes {args.kernel}: cold {cold_s:.2f} s, cached {hot_s:.2f} s ({', '.join(map(str, result['cached_stages']))})")
    print(f"{'stage':<16} {'cold compile':>13} {'2nd run: cache':>15} {'compile step':>13}  note")
    for e in per_stage:
        second = e.get("second_run") or {}
        print(
            f"{e['stage']:<16} {(e['cold_compile_s'] or 0):>11.2f} s {second.get('cache', e['status']):>15} "
            f"{second.get('seconds', float('nan')):>11.3f} s  {second.get('note') or second.get('error') or ''}"
        )


if __name__ == "__main__":
    main()
