"""On a GPU: stage C compiled with a bug injected inside the CuTe kernel is caught, and wb
names the bug as its top explanation (issue: diagnostics, proof on real kernels)."""

import json

import pytest

from conftest import run_wb

pytestmark = pytest.mark.gpu



def run_c(ws, n, *variants, timeout=60):
    args = ["run", "c", "--n", n, "-p", "m=256", "--fixture", "random", "--seeds", "1", "--timeout", "30", "--json"]
    for v in variants:
        args += ["-V", v]
    proc = run_wb(*args, cwd=ws, timeout=timeout + 120)
    record = json.loads(proc.stdout)
    return proc, record


def top_explanation(record):
    case = next(c for c in record["results"] if c["verdict"] == "FAIL")
    explanations = case["diagnosis"]["explanations"]
    return explanations[0]["name"] if explanations else None


@pytest.mark.parametrize(
    "n, variant, expected",
    [
        (256, "bug=kv_tile0", "kv-tile0"),
        (1024, "bug=no_rescale", "no-o-rescale"),
        (1024, "rescale=off", "no-rescale"),
        (256, "bug=pv_layout", "p-layout"),
        (256, "bug=pv_rowmajor", "pv-rowmajor"),
        (256, "bug=stuck_pipeline", "kv-tile0"),  # at 2 tiles a stuck consumer re-reads tile 0
    ],
)
def test_injected_bug_is_the_top_explanation(fmha_ws, n, variant, expected):
    proc, record = run_c(fmha_ws, n, variant)
    assert proc.returncode == 1 and record["verdict"] == "FAIL"
    assert top_explanation(record) == expected


def test_kv_tile_pinned_passes_one_tile_and_fails_two(fmha_ws):
    _, one = run_c(fmha_ws, 128, "bug=kv_tile0")
    _, two = run_c(fmha_ws, 256, "bug=kv_tile0")
    assert one["verdict"] == "PASS" and two["verdict"] == "FAIL"


@pytest.mark.parametrize("variant", ["bug=no_rescale", "rescale=off", "bug=stuck_pipeline"])
def test_multi_tile_bugs_pass_at_one_kv_tile(fmha_ws, variant):
    """These bugs live in the KV loop's hand-over from one tile to the next: with one KV tile
    the kernel is right (so a PASS at n = 128 says nothing about them)."""
    _, one = run_c(fmha_ws, 128, variant)
    assert one["verdict"] == "PASS"


def test_stalled_pipeline_hangs_and_wb_records_hang(fmha_ws):
    proc, record = run_c(fmha_ws, 1024, "bug=stuck_pipeline")
    assert proc.returncode == 1 and record["verdict"] == "HANG"
    assert record["provenance"]["gpu"] and "NVIDIA" in record["provenance"]["gpu"]  # it said "cpu"
    _, after = run_c(fmha_ws, 256)
    assert after["verdict"] == "PASS"  # the next run starts clean


def test_correct_kernel_gets_no_bug_explanation(fmha_ws):
    proc, record = run_c(fmha_ws, 1024)
    assert proc.returncode == 0 and record["verdict"] == "PASS"
    assert all("diagnosis" not in c for c in record["results"])
