"""End-to-end time of `wb run stage-c --n 256` on a GPU machine, process start included:
cold (new worker, empty compile cache), new worker with the disk compile cache, and warm
(the worker reused: imports and compiled kernel in memory). Target: warm under 3 s.

    python benchmarks/bench_warm_run.py          (on the GPU machine, from the repo root)
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def wb_run(*extra, env):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "workbench", "run", "c", "--n", "256", "--json", *extra],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    record = json.loads(proc.stdout)
    return wall, record


def main():
    env = dict(os.environ, WB_HOME=tempfile.mkdtemp(prefix="wb-home-"))  # empty compile cache
    subprocess.run([sys.executable, "-m", "workbench", "kill", "--all"], capture_output=True, env=env)
    rows = []
    wall, rec = wb_run("--fresh", env=env)
    rows.append(("cold: new worker, empty compile cache", wall, rec))
    wall, rec = wb_run("--fresh", env=env)
    rows.append(("new worker, disk compile cache", wall, rec))
    wb_run(env=env)  # starts the warm worker
    warm = [wb_run(env=env) for _ in range(5)]
    wall = statistics.median(w for w, _ in warm)
    rows.append(("warm worker (median of 5)", wall, warm[-1][1]))
    print(f"card: {rows[0][2]['provenance'].get('gpu')}")
    for label, wall, rec in rows:
        t = rec["timing"]
        print(f"{label:40s} {wall:6.2f} s end to end · compile {t['compile_s']:.2f} s"
              f"{' (cached)' if t['compile_cached'] else ''} · kernels {t['run_s']:.3f} s · {rec['verdict']}")


if __name__ == "__main__":
    main()
