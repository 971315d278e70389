"""benchmarks/stall_map.py: the hot loop is the execution count holding the most samples, its
samples are split by instruction kind and stall reason as shares of that loop, and a file that
is not Nsight Compute's per-instruction export is a one-line exit 2."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("stall_map", ROOT / "benchmarks" / "stall_map.py")
stall_map = importlib.util.module_from_spec(spec)
sys.modules["stall_map"] = stall_map  # its dataclass looks its module up
spec.loader.exec_module(stall_map)

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)",'
          '"Instructions Executed","stall_wait","stall_barrier","stall_wait (Not Issued)"')


def export(tmp_path, rows, name="k.csv"):
    lines = ['"Kernel Name","kernel_cutlass_x"', HEADER]
    lines += [",".join(f'"{c}"' for c in row) for row in rows]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = [
    # the prologue: executed once per warp, many samples in one instruction but fewer in all
    ("0x10", "LDC R1, c[0x0][0x28]", "30", "30", "100", "30", "0", "0"),
    ("0x20", "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR20], RZ, !UPT", "10", "0", "100", "0", "0", "0"),
    # the loop body: 3 instructions run 4000 times
    ("0x30", "MUFU.EX2 R20, R15", "20", "15", "4000", "15", "0", "15"),
    ("0x40", "@!P0 BRA 0x30", "10", "10", "4000", "0", "0", "0"),
    ("0x50", "WARPGROUP.DEPBAR.LE gsb0, 0x1", "30", "30", "4000", "0", "30", "0"),
]


def test_hot_loop_shares_by_kind_and_reason(tmp_path):
    s = stall_map.summary(stall_map.read_export(export(tmp_path, ROWS)))
    assert s["loop_executions"] == 4000 and s["loop_instructions"] == 3
    assert s["loop_samples"] == 60 and s["kernel_samples"] == 100
    assert s["kinds"]["tensor-core wait / arrive"] == {"share": 50.0, "instructions": 1}
    assert s["kinds"]["MUFU (exp2)"]["share"] == pytest.approx(100 * 20 / 60)
    assert s["kinds"]["branch (mbarrier retry)"]["share"] == pytest.approx(100 * 10 / 60)  # the predicate skipped
    assert "tensor-core issue" not in s["kinds"]  # the prologue's HGMMA is not in the loop
    # reasons: the "(Not Issued)" columns are not counted twice; what no column explains is said
    assert s["reasons"]["barrier"] == pytest.approx(50.0)
    assert s["reasons"]["wait"] == pytest.approx(25.0)
    assert s["reasons"][stall_map.UNATTRIBUTED] == pytest.approx(100 * 15 / 60)
    assert s["top"][0]["source"].startswith("WARPGROUP.DEPBAR")


def test_side_by_side_rendering_names_each_kernel(tmp_path, capsys):
    a, b = export(tmp_path, ROWS, "a.csv"), export(tmp_path, ROWS[2:], "b.csv")
    assert stall_map.main([f"ours={a}", f"peer={b}", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "ours" in out and "peer" in out and "MUFU (exp2)" in out


def test_a_file_that_is_not_an_export_is_one_line_and_exit_2(tmp_path, capsys):
    wrong = tmp_path / "details.csv"
    wrong.write_text('"ID","Metric Name","Metric Value"\n"0","x","1"\n')
    assert stall_map.main([str(wrong)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stall_map:") and "SourceCounters" in err and "\n" not in err
    assert stall_map.main([str(tmp_path / "missing.csv")]) == 2
