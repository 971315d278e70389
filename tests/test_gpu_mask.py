"""On a GPU: stage D's sliding window and alignment (stages/fmha/mask.py). A windowed kernel
passes the window-edges fixture; each injected mask bug (variant mask_bug) fails it and wb
names the bug's mutant as the top explanation (benchmarks/gpu_verify_parity.sh, section mask)."""

import json

import pytest

from conftest import run_wb

pytestmark = pytest.mark.gpu

# bottom-right, m < n (a query block over a longer KV prefix), a window that crosses KV tiles
WINDOW = ["--n", "1000", "-p", "m=700", "-p", "align=bottom_right", "-p", "window_left=250", "-p", "window_right=64",
          "-p", "kv_heads=2"]


def run_d(ws, *extra, fixture="window-edges", timeout=120):
    args = ["run", "d", *WINDOW, *extra, "--fixture", fixture, "--seeds", "1", "--timeout", "60", "--json"]
    proc = run_wb(*args, cwd=ws, timeout=timeout + 180)
    return proc, json.loads(proc.stdout)


def top_explanation(record):
    case = next(c for c in record["results"] if c["verdict"] == "FAIL")
    explanations = case["diagnosis"]["explanations"]
    return explanations[0]["name"] if explanations else None


@pytest.mark.parametrize("d", ["64", "128"])
def test_windowed_kernel_passes_window_edges(fmha_ws, d):
    proc, record = run_d(fmha_ws, "--d", d)
    assert proc.returncode == 0 and record["verdict"] == "PASS", proc.stdout[-2000:]


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("mask_bug=window_left_plus_one", "window-left-plus-one"),
        ("mask_bug=left_tile_skipped", "window-left-tile-skipped"),
    ],
)
@pytest.mark.parametrize("d", ["64", "128"])
def test_injected_mask_bug_is_the_top_explanation(fmha_ws, variant, expected, d):
    proc, record = run_d(fmha_ws, "--d", d, "-V", variant)
    assert proc.returncode == 1 and record["verdict"] == "FAIL", proc.stdout[-2000:]
    assert top_explanation(record) == expected
