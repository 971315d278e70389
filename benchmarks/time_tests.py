"""Time the test suite: README's test command and the quick `-m "not slow"` subset.

    python benchmarks/time_tests.py                 # both commands
    python benchmarks/time_tests.py --only quick    # just `pytest -m "not slow"`
    python benchmarks/time_tests.py -- -k "not gpu_check"   # extra pytest arguments for both

For each command it prints the wall time, the CPU time (user + sys of the whole process tree),
the pass/skip/fail counts and the 15 slowest tests. CPU time is the figure to compare on a
shared or loaded machine; wall time is the budget (docs/testing.md).

Warm workers outlive the `wb` process that started them, so they are re-parented away from
pytest and their CPU would go uncounted. This script makes itself the child subreaper
(Linux): orphans come back to it, and once pytest has exited it ends the ones still idling
and reaps them, so their CPU is counted. It runs from the repository root with the current
interpreter (use the venv's python).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = ["-n", "2", "--dist", "loadfile"]  # README.md: `.venv/bin/python -m pytest -n 2 --dist loadfile`
COMMANDS = {
    "readme": README,
    "quick": [*README, "-m", "not slow"],
}
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def my_children() -> list[int]:
    me = os.getpid()
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            kids.append(int(entry))
    return kids


def end_leftovers() -> int:
    """Kill and reap the processes the test run left behind (idle warm workers); returns how many."""
    left = 0
    for _ in range(50):
        kids = my_children()
        if not kids:
            break
        for pid in kids:
            left += 1
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return left


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(name: str, extra: list[str], durations: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", *COMMANDS[name], f"--durations={durations}", "-p", "no:cacheprovider", *extra]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    cpu0, t0 = children_cpu(), time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    leftovers = end_leftovers()
    cpu = children_cpu() - cpu0
    out = proc.stdout + proc.stderr
    summary = next((line for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|error)", line)), "")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|skipped|failed|errors?|deselected|xfailed)", summary)}
    slowest = []
    in_durations = False
    for line in out.splitlines():
        if "slowest" in line and "durations" in line:
            in_durations = True
            continue
        if in_durations:
            if not re.match(r"^\d+\.\d+s ", line):
                if slowest:
                    break
                continue
            slowest.append(line)
    print(f"wall {wall:.1f} s   cpu {cpu:.1f} s (user+sys, whole tree)   exit {proc.returncode}")
    print("counts:", ", ".join(f"{v} {k}" for k, v in counts.items()) or summary)
    if leftovers:
        print(f"left behind: {leftovers} process(es) still running after pytest exited (ended here)")
    print("slowest:")
    for line in slowest[:15]:
        print("  " + line)
    if proc.returncode not in (0, 5):
        print(out[-4000:])
    return {"name": name, "wall": wall, "cpu": cpu, "counts": counts, "rc": proc.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(COMMANDS), help="time just this command")
    parser.add_argument("--durations", type=int, default=15, help="pytest --durations (0: every test)")
    parser.add_argument("--no-subreaper", action="store_true", help="count only waited-for processes, as /usr/bin/time does")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args()
    # Started in the background (`cmd &`), a shell hands its children SIGINT ignored; pytest
    # would pass that on to the wb it starts and the Ctrl-C test would fail.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not args.no_subreaper and not become_subreaper():
        print("note: not a subreaper here; CPU of workers that outlive their wb is not counted")
    results = [run(name, args.pytest_args, args.durations) for name in COMMANDS if args.only in (None, name)]
    return max(r["rc"] if r["rc"] != 5 else 0 for r in results)


if __name__ == "__main__":
    sys.exit(main())
