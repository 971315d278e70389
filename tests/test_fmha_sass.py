"""Every FMHA stage compiles for sm_90a to the fast path: its SASS has tensor-core WGMMA
(HGMMA) and TMA loads (UTMALDG), read by `wb compile` through nvdisasm. A stage that
silently falls back to a slower path fails here, on any machine, no GPU needed."""

import json

import pytest

from workbench.resources import find_nvdisasm

pytestmark = pytest.mark.skipif(find_nvdisasm() is None, reason="nvdisasm not installed (pip install 'cute-wb[sass]')")



@pytest.mark.parametrize("stage", ["a", "b", "c", "d"])
def test_stage_sass_has_wgmma_and_tma(fmha_ws, wb, stage):
    proc = wb("compile", stage, "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = json.loads(proc.stdout)["sass"]["instructions"]
    assert any(name.startswith("HGMMA") for name in found), found
    assert any(name.startswith("UTMALDG") for name in found), found
    assert not any(name.startswith("HMMA") for name in found), found  # no pre-Hopper MMA fallback


@pytest.mark.parametrize("d,causal", [(64, "false"), (64, "true"), (128, "false"), (128, "true")])
def test_stage_d_defaults_do_not_spill(fmha_ws, wb, d, causal):
    """Each default stage-D configuration fits its registers. A spilling schedule ran at a
    third of the speed on an H200 (d=64 with 3 consumer WGs and pingpong: 124 vs 315 TFLOP/s)."""
    proc = wb("compile", "d", "--d", str(d), "-p", f"causal={causal}", "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    (kernel,) = rec["resources"]["kernels"]
    assert (kernel["spill_store_bytes"], kernel["spill_load_bytes"]) == (0, 0), kernel
    # no wgmma serialization (ptxas C7512/C7513 put a WARPGROUP.DEPBAR behind every HGMMA: 32)
    assert rec["sass"]["instructions"].get("WARPGROUP", 0) <= 8, rec["sass"]["instructions"]


@pytest.mark.parametrize("schedule", ["overlap", "pingpong"])
def test_three_consumer_wgs_with_overlap_fit_160_registers(fmha_ws, wb, schedule):
    """d=64 with 3 consumer WGs (160 registers each) and the overlap schedules: no spills.
    The S accumulator must be a fresh tensor per step; when one tensor was reused, the
    previous P (64 fp32) stayed live across the QK^T issue and ptxas spilled 512 B."""
    for causal in ("false", "true"):
        proc = wb("compile", "d", "--d", "64", "-p", f"causal={causal}", "-V", "consumers=3",
                  "-V", f"schedule={schedule}", "-V", "persistent=off", "--json", cwd=fmha_ws, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        (kernel,) = json.loads(proc.stdout)["resources"]["kernels"]
        if causal == "false":
            assert (kernel["spill_store_bytes"], kernel["spill_load_bytes"]) == (0, 0), kernel
        else:  # the extra masked steps of causal 192-row tiles park a few scalars (40-64 B)
            assert kernel["spill_store_bytes"] <= 96, kernel
