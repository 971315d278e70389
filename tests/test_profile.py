"""`wb profile STAGE`: Nsight Compute's raw CSV -> the record's counters (workbench/run/profile.py).

On the CPU: the parser on a report in ncu's `--csv --page raw` format, and the whole command
with a stand-in for ncu (it starts the worker as its child and writes the report into the log
it was given). The real ncu runs on the GPU (tests/test_profile_gpu.py)."""

import json
from pathlib import Path
import sys

import pytest

from conftest import executable

from workbench.compile.resources import short_kernel_name
from workbench.run import profile

HEADER = [
    "ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size", "Grid Size", "Device", "CC",
    "gpu__time_duration.sum", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed", "sm__warps_active.avg.pct_of_peak_sustained_active",
    "launch__registers_per_thread", "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum",
    "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
    "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio",
    "dram__bytes_read.sum", "dram__bytes_write.sum", "dram__bytes_read.sum.per_second", "dram__bytes_read.sum.pct_of_peak_sustained_elapsed",
]
UNITS = ["", "", "", "", "", "", "", "", "", "", "", "usecond", "%", "%", "%", "register/thread", "", "%", "ratio", "ratio", "ratio", "ratio",
         "byte", "byte", "byte/s", "%"]


def report(duration="1,089.5", conflicts="4,096", kernel="kernel_cutlass_kernel_stagesfmhastage_d_fmhaFmhaForward_0") -> str:
    row = ["0", "4242", "python3.12", "127.0.0.1", kernel, "1", "7", "(384, 1, 1)", "(132, 1, 1)", "0", "9.0",
           duration, "71.2", "40.5", "18.7", "168", conflicts, "63.4", "0.41", "1.92", "0.88", "0.12",
           "6,144", "2,048", "480,000,000,000", "10"]
    quote = lambda cells: ",".join(f'"{c}"' for c in cells)
    return (
        "==PROF== Connected to process 4242 (/usr/bin/python3.12)\n"
        f'==PROF== Profiling "{kernel}" - 0: 0%....50%....100% - 38 passes\n'
        f"{quote(HEADER)}\n{quote(UNITS)}\n{quote(row)}\n"
    )


def test_the_raw_csv_becomes_headline_counters_and_the_top_stalls():
    (kernel,) = profile.parse_log(report())
    assert kernel["grid"] == "(132, 1, 1)" and len(kernel["metrics"]) == 15
    counters = profile.headline(kernel["metrics"])
    assert counters["duration_us"] == pytest.approx(1089.5)  # "1,089.5" usecond
    assert counters["tensor_pipe_pct"] == pytest.approx(63.4)
    assert counters["tensor_pipe_metric"] == "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active"
    assert counters["smem_bank_conflicts"] == 4096 and counters["registers_per_thread"] == 168
    assert counters["dram_throughput_pct"] is None  # not in this report: missing, not zero
    assert counters["dram_bytes"] == 8192 and counters["dram_peak_gbps"] == pytest.approx(4800)  # 480 GB/s is 10% of it
    roof = profile.roofline(counters, 2.0e9)
    assert roof["tflops"] == pytest.approx(2.0e9 / 1089.5e-6 / 1e12) and roof["intensity"] == pytest.approx(2.0e9 / 8192)
    assert profile.roofline(counters, None) is None
    assert [s["reason"] for s in counters["stalls_top5"]] == ["barrier", "wait", "long_scoreboard", "not_selected"]


def test_bank_conflicts_counted_apart_for_loads_and_stores_are_summed():
    metrics = {"l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum": ("1,000", ""),
               "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum": ("24", "")}
    assert profile.headline(metrics)["smem_bank_conflicts"] == 1024
    assert profile.headline({})["smem_bank_conflicts"] is None


def test_a_stage_of_several_kernels_gets_each_kernels_counters_and_launch_totals(tmp_path):
    one = report(duration="100.0", kernel="kernel_cutlass_up_0")
    two = report(duration="50.0", kernel="kernel_cutlass_down_0").splitlines()[-1]  # its data row only
    log = tmp_path / "ncu.log"
    log.write_text(one + two + "\n")
    _, field = profile.summarize(log, "PASS", {"flops": 3.0e9})
    assert field["kernels"] == 2 and [e["kernel"] for e in field["each"]] == ["kernel_cutlass_up_0", "kernel_cutlass_down_0"]
    assert field["counters"]["duration_us"] == pytest.approx(100.0)  # the headline stays the first kernel's
    roof = field["roofline"]  # the launch: both kernels' time and DRAM bytes
    assert roof["tflops"] == pytest.approx(3.0e9 / 150e-6 / 1e12) and roof["intensity"] == pytest.approx(3.0e9 / (2 * 8192))


def test_nanoseconds_are_converted_and_a_report_without_kernels_says_so(tmp_path):
    units = report().replace('"usecond"', '"nsecond"').replace('"1,089.5"', '"5,312"')
    (kernel,) = profile.parse_log(units)
    assert profile.headline(kernel["metrics"])["duration_us"] == pytest.approx(5.312)
    log = tmp_path / "ncu.log"
    log.write_text("==PROF== Connected to process 1\n==WARNING== No kernels were profiled.\n")
    verdict, field = profile.summarize(log, "PASS")
    assert verdict == "PASS" and field["kernels"] == 0 and field["counters"] is None
    assert field["notes"] == ["==WARNING== No kernels were profiled."]


def test_a_log_csv_cannot_read_is_a_note_and_the_run_keeps_its_verdict(tmp_path):
    """A CSV field past Python's csv limit (128 KiB: a tool printing garbage) was a csv.Error
    traceback inside run_stage, after the run and before its record: the run folder stayed
    with ncu.log alone. Now no counters, a note saying why, the run's verdict."""
    log = tmp_path / "ncu.log"
    log.write_text(f'"Kernel Name","gpu__time_duration.sum"\n"","usecond"\n"kernel_cutlass_x","{"9" * 200_000}"\n')
    verdict, field = profile.summarize(log, "PASS")
    assert verdict == "PASS" and field["kernels"] == 0 and field["counters"] is None
    assert field["notes"] == ["ncu.log is not CSV that wb reads: field larger than field limit (131072)"]


FAKE_NCU = r'''#!{python}
import os, subprocess, sys
args = sys.argv[1:]
log = args[args.index("--log-file") + 1]
code = subprocess.call(args[args.index("--log-file") + 2:])
with open(os.environ["FAKE_NCU_SEEN"], "w") as fh:
    fh.write(" ".join(args[:args.index("--log-file") + 2]))
with open(log, "w") as fh:
    fh.write(open(os.environ["FAKE_NCU_REPORT"]).read())
sys.exit(code)
'''


@pytest.fixture
def fake_ncu(tmp_path, monkeypatch):
    tool = executable(tmp_path / "ncu", FAKE_NCU.format(python=sys.executable))
    monkeypatch.setenv("WB_NCU", str(tool))
    monkeypatch.setenv("FAKE_NCU_SEEN", str(tmp_path / "seen.txt"))
    monkeypatch.setenv("FAKE_NCU_REPORT", str(tmp_path / "report.csv"))
    return tmp_path


def test_wb_profile_records_shows_and_diffs_the_counters(toy_ws, wb, fake_ncu):
    (fake_ncu / "report.csv").write_text(report(conflicts="4,096"))
    proc = wb("profile", "a", "--json")
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)
    assert first["verdict"] == "PASS" and [c["fixture"] for c in first["results"]] == ["toy-random"]  # the first fixture, one seed
    assert first["profile"]["counters"]["smem_bank_conflicts"] == 4096
    seen = (fake_ncu / "seen.txt").read_text()
    assert "--clock-control none" in seen and "--kernel-name regex:kernel_cutlass" in seen and "--page raw" in seen
    run_dir = toy_ws / "runs" / first["id"]
    assert (run_dir / "ncu.log").exists() and "## Nsight Compute" in (run_dir / "report.md").read_text()
    roof = first["profile"]["roofline"]  # the toy stage's flops(): one per element, 128 x 64
    assert roof["flops"] == 128 * 64 and roof["intensity"] == pytest.approx(128 * 64 / 8192)
    if first["profile"]["picture"]:  # matplotlib installed
        assert (run_dir / "roofline.png").exists() and "![the kernel on the card's roofline](roofline.png)" in (run_dir / "report.md").read_text()

    (fake_ncu / "report.csv").write_text(report(conflicts="1,024", duration="1,000.0"))
    proc = wb("profile", "a")
    assert proc.returncode == 0
    assert "shared-memory bank conflicts (LSU)" in proc.stdout and "1024" in proc.stdout and "stall: barrier" in proc.stdout
    diff = wb("diff-run")  # the last two runs of the stage: the two profiles
    assert "ncu counters (wb profile)" in diff.stdout
    assert "smem_bank_conflicts" in diff.stdout and "0.250" in diff.stdout  # 4x fewer conflicts


def test_counters_ncu_cannot_read_are_one_line_with_exit_2(toy_ws, wb, fake_ncu):
    """A runtime where ncu cannot read the device (no permission to the counters) leaves no
    counters: one line naming ncu's error, exit 2, the run kept with the log."""
    (fake_ncu / "report.csv").write_text(
        "==PROF== Connected to process 1\n==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters\n"
    )
    proc = wb("profile", "a")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "wb profile: ncu measured nothing (ERR_NVGPUCTRPERM - The user does not have permission" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_log_wb_cannot_read_is_the_reason_it_gives_for_no_counters(toy_ws, wb, fake_ncu):
    """ncu's log that wb could not read (a CSV field past csv's limit) was reported as 'no stage
    kernel (kernel_cutlass_*) was launched'; the one line gives wb's reason."""
    (fake_ncu / "report.csv").write_text(f'"Kernel Name","gpu__time_duration.sum"\n"","usecond"\n"kernel_cutlass_x","{"9" * 200_000}"\n')
    proc = wb("profile", "a")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "ncu measured nothing (ncu.log is not CSV that wb reads: field larger than field limit" in proc.stderr, proc.stderr


def test_refusals_are_one_line_with_exit_2(toy_ws, wb, monkeypatch, tmp_path):
    monkeypatch.setenv("WB_NCU", str(tmp_path / "missing"))
    proc = wb("profile", "a")
    assert proc.returncode == 2 and "WB_NCU=" in proc.stderr and "Traceback" not in proc.stderr
    monkeypatch.delenv("WB_NCU")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    import os

    if not os.access("/usr/local/cuda/bin/ncu", os.X_OK):
        proc = wb("profile", "a")
        assert proc.returncode == 2 and "needs NVIDIA Nsight Compute's ncu" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_peers_are_profiled_first_and_stand_beside_the_stage(toy_ws, wb, fake_ncu):
    """--peers: one ncu run per peer (its own kernel filter, the same inputs; not a run of the
    stage: no MEMORY.md status line), then the stage's, whose record lists the peers' points."""
    (fake_ncu / "report.csv").write_text(report())
    proc = wb("profile", "a", "--peers", "torch-mul,absent", "--json")
    assert proc.returncode == 0, proc.stderr
    stage = json.loads(proc.stdout)
    peers = stage["profile"]["peers"]
    assert [(p["peer"], p["verdict"]) for p in peers] == [("torch-mul", "PASS"), ("absent", "SKIPPED")]
    peer_run = json.loads((toy_ws / "runs" / peers[0]["run"] / "run.json").read_text())
    assert peer_run["kind"] == "profile_peer" and peer_run["profile"]["peer"] == "torch-mul"
    assert peers[0]["tflops"] == pytest.approx(128 * 64 / 1089.5e-6 / 1e12)  # the stage's FLOPs over the peer's time
    missing = json.loads((toy_ws / "runs" / peers[1]["run"] / "run.json").read_text())
    assert "it exists only to be missing" in missing["error"]["message"]
    memory = (toy_ws / "MEMORY.md").read_text()
    assert stage["id"] in memory and peers[0]["run"] not in memory
    shown = wb("profile", "a", "--peers", "torch-mul")
    assert "beside its peers" in shown.stdout and "torch-mul" in shown.stdout
    assert profile.peer_kernel_filter(toy_ws / "stages" / "toy", "torch-mul") == "regex:mul"
    assert profile.peer_kernel_filter(toy_ws / "stages" / "toy", "absent") == "regex:."  # no filter named: every kernel
    assert profile.command(Path("ncu.log"), "ncu", "regex:mul")[5:7] == ["--kernel-name", "regex:mul"]
    # a peer's warm-up call launches its kernel too: ncu measures only the worker's profiler range
    peer_args = " ".join(profile.instrument("regex:mul", peer="torch-mul").command(Path("ncu.log")))
    stage_args = " ".join(profile.instrument().command(Path("ncu.log")))
    assert "--profile-from-start off" in peer_args and "--profile-from-start" not in stage_args
    proc = wb("profile", "a", "--peers", "fa5")
    assert proc.returncode == 2 and "unknown peer 'fa5' of kernel toy: choose from torch-mul" in proc.stderr


def test_the_roofline_gives_a_share_of_the_roof_only_against_a_compute_roof(tmp_path, monkeypatch):
    """Without a compute roof (no `wb bench` on this machine, a card not in the datasheet
    table) the DRAM line is no ceiling for a compute-bound kernel: no "% of the roof"."""
    pytest.importorskip("matplotlib")
    from workbench.records import charts

    legends = []
    monkeypatch.setattr(charts, "save", lambda fig, path: legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()]) or path)
    point = [{"label": "k", "intensity": 2000.0, "tflops": 700.0}]
    charts.draw_roofline(tmp_path / "a.png", point, 4800.0, None, "t")
    charts.draw_roofline(tmp_path / "b.png", point, 4800.0, 1000.0, "t", peak_source="datasheet")
    assert legends[0][1] == "k: 700 TFLOP/s" and "no compute roof known" in legends[0][0]
    assert legends[1][1] == "k: 700 TFLOP/s (70% of the roof)" and legends[1][0].endswith("1000 TFLOP/s (datasheet)")
    assert short_kernel_name("kernel_cutlass_kernel_stagesfmhastage_d_fmhaFmhaForward_object_at__CopyAtom_1") == "stagesfmhastage_d_fmhaFmhaForward"


def test_compile_and_shapes_name_each_kernel_of_a_stage_apart():
    """Stage D's two kernels (the long one, geometry.long_kernel) differ only in their tile,
    which `wb compile`'s middle cut of the generated name left out: both rows read
    kernel_cutlass_kernel_stagesfmhastage_d_…youtSrc18…; `wb shapes` said only "kernel:"."""
    import io

    from rich.console import Console

    from workbench import terminal
    from workbench.cli import compile as compile_cli
    from workbench.cli import shapes as shapes_cli

    tail = "_CopyAtom_ThrID10_TVLayoutSrc1409601_TVLayoutDst1409601_Valuetypebf16_tensor0000o11101213_CopyAtom_ThrID10_TVLayoutSrc1819_0"
    names = [f"kernel_cutlass_kernel_stagesfmhastage_d_fmhaFmhaForward_{tile}{tail}" for tile in ("128x128", "128x176")]
    assert [compile_cli._short(n) for n in names] == [
        "stagesfmhastage_d_fmhaFmhaForward_128x128", "stagesfmhastage_d_fmhaFmhaForward_128x176",
    ]
    out = io.StringIO()
    saved = terminal.console
    terminal.console = Console(file=out, width=200)
    try:
        shapes_cli.render_resources({"kernels": [{"name": n, "registers": 168} for n in names]}, brief=True)
    finally:
        terminal.console = saved
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0].strip() for line in lines] == [
        "kernel stagesfmhastage_d_fmhaFmhaForward_128x128", "kernel stagesfmhastage_d_fmhaFmhaForward_128x176",
    ], lines
