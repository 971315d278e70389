"""Fill wb's compile cache for a sweep before it runs: every combination of the given values,
compiled by parallel `wb compile --in-process` processes (one per core by default).

A sweep's lane compiles its cases one after another in its one warm worker: on the H100 of
2026-12-05 cold compiles were 640 s of 984 s of sweep time while 15 of 16 cores idled
(docs/perf-notes.md, round 12). A run's worker takes a configuration from the disk cache that
`wb compile` writes, so compiling ahead on every core leaves the sweep only its runs.

    python benchmarks/compile_ahead.py d -p d=64,128 -p dtype=bf16,fp16 -p causal=false,true \\
        -p kv_heads=4,2 -V softmax=exp,identity [--jobs 16] [--dry-run]

Give the compile-time parameters only (not n: one compile serves every length), and the
variants the stage's fixtures ask for (fmha D's identity-softmax fixture: softmax=identity).
Run from the workspace's root. Prints one line per configuration and the wall time; exit 1
when one did not compile (the sweep's case then says why). The compile records are removed:
the disk cache is what is wanted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def combinations(pairs: list[str], flag: str) -> list[list[str]]:
    """["k=a,b", "j=c"] -> [[flag, "k=a", flag, "j=c"], [flag, "k=b", flag, "j=c"]]."""
    axes = []
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not key or not values:
            sys.exit(f"compile_ahead: {flag} {pair!r} must look like key=v1,v2")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [[x for kv in combo for x in (flag, kv)] for combo in itertools.product(*axes)]


def forget_record(stdout: str) -> None:
    """Remove the run folder `wb compile` wrote (its record and cubin): only the disk cache is
    wanted here, and 30-odd cubins would crowd the runs/ a GPU call brings back."""
    try:
        run_id = json.loads(stdout)["id"]
    except (ValueError, KeyError, TypeError):
        return
    if isinstance(run_id, str) and run_id and "/" not in run_id and not run_id.startswith("."):
        shutil.rmtree(os.path.join("runs", run_id), ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage")
    ap.add_argument("-p", "--param", action="append", default=[], help="key=v1,v2 (repeatable)")
    ap.add_argument("-V", "--variant", action="append", default=[], help="key=v1,v2 (repeatable)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: the cores)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    commands = [
        [sys.executable, "-m", "workbench", "compile", args.stage, *p, *v, "--in-process", "--json"]
        for p in combinations(args.param, "-p") for v in combinations(args.variant, "-V")
    ]
    if args.dry_run:
        for command in commands:
            print(" ".join(command[2:]))
        return 0
    start = time.perf_counter()

    def compile_one(command: list[str]) -> tuple[str, int, float]:
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        forget_record(done.stdout)
        return " ".join(command[5:-2]), done.returncode, time.perf_counter() - t0

    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for label, rc, seconds in pool.map(compile_one, commands):
            failed += rc != 0
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {seconds:6.1f} s  {label}", flush=True)
    print(f"{len(commands)} configuration(s) in {time.perf_counter() - start:.1f} s on {args.jobs} job(s); {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
