"""CLI start-up speed: `wb --help` (target < 0.3 s) and `wb runs` over 500 records (< 0.5 s).

    python benchmarks/bench_cli.py

Median of 7 runs of the real console command each, in a temporary workspace.
"""

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(args, cwd, n=7):
    wb = shutil.which("wb") or f"{sys.executable} -m workbench"
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(wb.split() + args, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        shutil.copytree(REPO / "tests/data/toy_ws", ws)
        runs = ws / "runs"
        runs.mkdir()
        for i in range(500):
            d = runs / f"20261127-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-{i:06d}"
            d.mkdir()
            (d / "run.json").write_text(json.dumps({
                "schema": 1, "stage": "toy/stage-a", "verdict": "PASS", "params": {"n": 128, "dtype": "bf16"},
                "variants": {"bug": "none"}, "provenance": {"commit": "abc", "dirty": False, "gpu": None, "host": "x"},
                "results": [{"fixture": "toy-random", "outputs": {"y": {"cos": 1.0}}}] * 3,
            }))
        help_s = timed(["--help"], ws)
        runs_s = timed(["runs"], ws)
        print(f"wb --help: {help_s * 1000:.0f} ms (target < 300 ms)")
        print(f"wb runs (500 records, lists 20): {runs_s * 1000:.0f} ms (target < 500 ms)")


if __name__ == "__main__":
    main()
