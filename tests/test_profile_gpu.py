"""On a GPU with Nsight Compute: `wb profile` measures the stage's own kernel (not torch's) and
its counters are consistent with what the compile reports (registers) and with a Hopper
attention kernel (the tensor pipe busy, a real duration)."""

import json
import shutil

import pytest

from conftest import run_wb

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(shutil.which("ncu") is None and shutil.which("/usr/local/cuda/bin/ncu") is None, reason="ncu is not installed"),
]


def test_profile_of_stage_d_measures_its_kernel(fmha_ws):
    proc = run_wb("profile", "d", "--n", "2048", "-p", "batch=2", "-p", "heads=16", "--json", cwd=fmha_ws)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    found = record["profile"]
    assert found["kernel"].startswith("kernel_cutlass"), found
    counters = found["counters"]
    assert counters["duration_us"] > 1.0
    compiled = json.loads(run_wb("compile", "d", "--n", "2048", "-p", "batch=2", "-p", "heads=16", "--json", cwd=fmha_ws).stdout)
    (kernel,) = compiled["resources"]["kernels"]
    assert counters["registers_per_thread"] == kernel["registers"]  # ncu's launch figure = the cubin's
    assert counters["shared_mem_per_block"] >= kernel["dynamic_smem_bytes"]
    assert counters["tensor_pipe_pct"] is not None and counters["tensor_pipe_pct"] > 10, counters
    assert counters["stalls_top5"] and "selected" not in [s["reason"] for s in counters["stalls_top5"]], counters
    assert counters["smem_bank_conflicts"] is not None, counters
