"""On a GPU with NVIDIA compute-sanitizer: `wb run c --sanitize TOOL` catches stage C's injected
bugs at their source line, and the correct stage C epilogues are clean under all four tools.

What the tools do not see is in docs/inside.md: an uninitialized shared-memory read (initcheck
checks global memory only) and a "full" mbarrier waited with the wrong phase (the kernel hangs
under every tool, and wb's watchdog records HANG)."""

import json
import shutil

import pytest

from conftest import run_wb

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        shutil.which("compute-sanitizer") is None and shutil.which("/usr/local/cuda/bin/compute-sanitizer") is None,
        reason="compute-sanitizer is not installed",
    ),
]


def sanitized(ws, tool, *variants, timeout=150):
    args = ["run", "c", "--n", "256", "--fixture", "random", "--seeds", "1", "--sanitize", tool, "--timeout", timeout, "--json"]
    for v in variants:
        args += ["-V", v]
    proc = run_wb(*args, cwd=ws)
    return proc, json.loads(proc.stdout)


def stage_lines(record):
    return {(f["file"].rsplit("/", 1)[-1], f["line"]) for f in record["sanitizer"]["findings"] if f["stage_kernel"] and f["file"]}


def lines_of(text: str) -> set[int]:
    from conftest import REPO

    lines = (REPO / "stages/fmha/stage_c_online.py").read_text().splitlines()
    return {i + 1 for i, line in enumerate(lines) if text in line}


def test_out_of_bounds_lse_store_is_memcheck_at_its_line(fmha_ws):
    proc, record = sanitized(fmha_ws, "memcheck", "bug=lse_oob")
    assert proc.returncode == 1
    assert record["verdict"] == "MEMCHECK"
    assert {("stage_c_online.py", n) for n in lines_of("mLSE[row + 1] = lse[r]")} <= stage_lines(record)
    assert "Invalid __global__ write of size 4 bytes" in record["sanitizer"]["findings"][0]["message"]


def test_missing_barrier_between_warpgroups_is_a_race_between_its_two_lines(fmha_ws):
    proc, record = sanitized(fmha_ws, "racecheck", "bug=o_race")
    assert record["verdict"] == "RACE"
    first = record["sanitizer"]["findings"][0]
    assert first["line"] in lines_of("cute.autovec_copy(rO, tOsO)")  # the write: O staged in smem
    (read,) = lines_of("= sO[row % self.wg_rows")  # the read: the copy-out, before the barrier that is not there
    assert any(f"stage_c_online.py:{read}" in d for d in first["details"])


def test_reading_the_never_zeroed_output_is_initcheck_at_the_read(fmha_ws):
    proc, record = sanitized(fmha_ws, "initcheck", "bug=o_accumulate")
    assert record["verdict"] == "INITCHECK", (record["sanitizer"], record.get("error"))
    assert {("stage_c_online.py", n) for n in lines_of("previous = gO[")} <= stage_lines(record)
    assert "Uninitialized __global__ memory read" in record["sanitizer"]["findings"][0]["message"]


def test_a_syncwarp_whose_mask_leaves_out_a_calling_lane_is_synccheck_at_its_line(fmha_ws):
    proc, record = sanitized(fmha_ws, "synccheck", "bug=warp_mask")
    assert record["verdict"] == "SYNCCHECK", (record["sanitizer"], record.get("error"))
    assert {("stage_c_online.py", n) for n in lines_of("cute.arch.sync_warp(mask=0x7FFFFFFF)")} <= stage_lines(record)


@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "synccheck", "initcheck"])
@pytest.mark.parametrize("variant", ["o_store=tma", "o_store=threads"])
def test_correct_epilogues_are_clean(fmha_ws, tool, variant):
    proc, record = sanitized(fmha_ws, tool, variant)
    assert record["verdict"] == "PASS", (record["sanitizer"], record.get("error"))
    assert record["sanitizer"]["verdict"] == "CLEAN" and record["sanitizer"]["findings_in_stage"] == 0
