"""`wb bench` pieces that need no GPU: planning from fmha's kernel.yaml `bench:` and hook, case
naming, speed block, docs/perf.md;
and, on a GPU, the timer against a known amount of work."""

import json
from pathlib import Path

import pytest

from workbench.errors import UserError
from workbench.kernels.registry import load_kernels
from workbench.run import bench, bench_report, timing
from workbench.records import memory, speed
from workbench.workspace import Workspace


REPO = Path(__file__).resolve().parents[1]


def fmha():
    kernel = load_kernels(Workspace(REPO))["fmha"]
    return kernel, kernel.stage("d")


def planned(axes, sweep=False, stage="d"):
    kernel, _ = fmha()
    spec = kernel.stage(stage)
    return bench.resolve_cases(spec, kernel, bench.plan_cases(spec, kernel, axes, sweep))


def fake_bench_record(tflops=600.0, fa4=645.0, cudnn=605.0):
    case = planned({"n": ["4096"]})[0]
    return {
        "id": "20261127-120000-000001",
        "stage": "fmha/stage-d",
        "started": "2026-11-27T12:00:00+00:00",
        "peak": {"tflops": 790.0},
        "notes": [],
        "provenance": {"gpu": "NVIDIA H200", "commit": "abc123", "dirty": False, "wb": "0.1.0", "dsl": "4.8.1", "torch": "2.11"},
        "bench": [
            {
                "case": case["name"],
                "row": case["row"],
                "params": case["params"],
                "verdict": "PASS",
                "tflops": tflops,
                "peers": {"fa4": {"tflops": fa4}, "sdpa-cudnn": {"tflops": cudnn}, "sdpa-flash": {"skipped": "not installed"}},
            }
        ],
    }


def test_fmha_bench_hook_follows_design_md_convention_and_keeps_given_values():
    """stages/fmha/bench_hooks.py: batch = 16384/s, heads = 2048/d, m = n; -p values win."""
    p = planned({"n": ["4096"], "causal": ["true"]})[0]["params"]
    assert (p["batch"], p["heads"], p["m"], p["n"], p["causal"]) == (4, 16, 4096, 4096, True)
    odd = planned({"n": ["1024"], "batch": ["64"]})[0]["params"]
    assert (odd["batch"], odd["heads"]) == (64, 16)
    kernel, _ = fmha()
    swept = planned({}, sweep=True)  # every row of the perf doc resolves under the stage's rules
    assert len(swept) == len(kernel.bench.sweep) and len({c["name"] for c in swept}) == len(swept)


def test_p_axes_cross_the_kernel_cases_like_wb_sweep():
    cases = planned({"d": ["64", "128"], "dtype": ["bf16", "fp16"]})
    assert [(c["params"]["d"], c["params"]["dtype"], c["params"]["n"]) for c in cases] == [
        (64, "bf16", 4096), (64, "fp16", 4096), (128, "bf16", 4096), (128, "fp16", 4096)]
    kernel, _ = fmha()
    assert len(planned({"dtype": ["bf16", "fp16"]}, sweep=True)) == 2 * len(kernel.bench.sweep)


def test_a_quiet_parameter_is_named_only_when_it_is_not_its_default():
    """kernel.yaml `bench.quiet`: a parameter added to a stage later (softcap) leaves recorded
    case names as they were."""
    plain = planned({"n": ["4096"]})[0]
    assert "softcap" not in plain["name"] and "softcap" not in plain["row"]
    assert plain["name"] == "d=128 m=4096 n=4096 batch=4 heads=16 kv_heads=16 causal=False dtype=bf16"
    capped = planned({"n": ["4096"], "softcap": ["30"]})[0]
    assert capped["name"].endswith("softcap=30.0") and "softcap=30.0" in capped["row"]


def test_a_smaller_stage_drops_what_the_kernel_gives_but_not_what_the_user_gave():
    assert [c["name"] for c in planned({}, stage="c")] == ["d=128 m=4096 n=4096 dtype=bf16"]
    # stage C takes d 64 and 128 and no causal, varlen or window: the kernel's rows fold into its (d, n)
    kernel, _ = fmha()
    swept = planned({}, sweep=True, stage="c")
    assert sorted((c["params"]["d"], c["params"]["n"]) for c in swept) == sorted(
        {(row["d"], row["n"]) for row in kernel.bench.sweep if row["d"] in (64, 128)})
    with pytest.raises(UserError, match="has no parameter 'batch'"):
        planned({"batch": ["4"]}, stage="c")


def test_unknown_peer_lists_the_kernels_peers():
    kernel, _ = fmha()
    bench.check_peers(kernel, ["fa4", "sdpa-cudnn"])
    with pytest.raises(UserError, match="unknown peer 'fa5' of kernel fmha: choose from sdpa-flash: torch SDPA"):
        bench.check_peers(kernel, ["fa5"])


def test_peer_ratio_is_wb_over_peer():
    ratios = bench_report.peer_ratios(fake_bench_record()["bench"][0])
    assert ratios["fa4"] == pytest.approx(600 / 645) and "sdpa-flash" not in ratios


def test_perf_md_has_the_kernels_columns_and_wb_as_a_column_and_names_the_card():
    kernel, _ = fmha()
    text = bench_report.perf_markdown(fake_bench_record(), kernel)
    assert text.startswith("# FMHA forward speed") and "NVIDIA H200" in text
    assert "| d | n | causal | dtype | fa4 | sdpa-cudnn | sdpa-flash | wb fmha/stage-d | wb / best peer |" in text
    assert "| 128 | 4096 | no | bf16 | 645 | 605 | skipped | 600 | ×0.93 |" in text
    assert "sdpa-flash: not installed" in text and kernel.bench.perf_doc == "docs/perf.md"


def test_perf_md_names_the_quiet_parameters_a_row_sets_in_an_other_column():
    """A row that sets a bench.quiet parameter away from its default (varlen, a window) would
    read like a plain row in the kernel's columns: the perf doc adds a column naming them."""
    kernel, _ = fmha()
    record = fake_bench_record()
    varlen = planned({"n": ["4096"], "varlen": ["true"], "seqlens": ["4096:4096"]})[0]
    record["bench"].append({**record["bench"][0], "case": varlen["name"], "params": varlen["params"]})
    text = bench_report.perf_markdown(record, kernel)
    assert "| d | n | causal | dtype | other | fa4 |" in text
    assert "| 128 | 4096 | no | bf16 | - | 645 |" in text
    assert "| 128 | 4096 | no | bf16 | varlen=True seqlens=4096:4096 | 645 |" in text
    assert "| other |" not in bench_report.perf_markdown(fake_bench_record(), kernel)


def test_speed_block_in_memory(tmp_path):
    ws = Workspace(tmp_path)
    bench_report.record_speed(ws, fake_bench_record())
    block = memory.block_content(ws.memory_path.read_text(), "speed")
    # a row per case without n (m, batch, heads derived by the kernel's hook), a column per n
    assert "**fmha/stage-d · NVIDIA H200**" in block and "| case | n=4096 | date |" in block
    assert "| d=128 causal=False dtype=bf16 | 600 ×0.93 | 2026-11-27 |" in block
    assert "605" not in block and "wb:data" not in block  # the other peers are in MEMORY.json only
    saved = memory.read_data(memory.data_path(ws.memory_path))["speed"]
    assert [e["peers"] for e in saved.values()] == [{"fa4": 645.0, "sdpa-cudnn": 605.0, "sdpa-flash": None}]


def test_the_speed_chart_beside_the_record_and_in_the_perf_doc(tmp_path):
    """With matplotlib: the bench record's chart is written beside it (runs/<id>/speed.png), its
    bars follow the numbers (wb's bar 600/645 of FA4's length), and the perf doc embeds the
    chart it is given; without a timed case there is no chart."""
    pytest.importorskip("matplotlib")
    import numpy as np
    import matplotlib.image

    from workbench.records import charts

    record = {**fake_bench_record(), "_dir": str(tmp_path / "run"), "id": "20261127-000000-000000"}
    bench_report.record_speed(Workspace(tmp_path), record)
    img = matplotlib.image.imread(record["_chart"])[..., :3]
    assert record["_chart"].endswith("run/speed.png") and img.shape[0] >= 300 and img.shape[1] >= 900

    def bar_length(rgb_hex):
        rgb = np.array([int(rgb_hex[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        mask = np.abs(img - rgb).max(axis=-1) < 0.02
        longest = 0  # the longest unbroken run of that colour in a row: the bar (labels are broken glyphs)
        for row in mask[mask.any(axis=1)]:
            edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
            starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            longest = max(longest, int((ends - starts).max()))
        return longest

    assert bar_length(charts.WB_COLOUR) / bar_length(charts.PEER_COLOURS[0]) == pytest.approx(600 / 645, abs=0.02)
    kernel, _ = fmha()
    assert "![TFLOP/s per case beside the peers" in bench_report.perf_markdown(fake_bench_record(), kernel, "perf.png")
    assert "![" not in bench_report.perf_markdown(fake_bench_record(), kernel)
    empty = {**fake_bench_record(), "bench": [{**fake_bench_record()["bench"][0], "tflops": None}]}
    assert charts.draw_speed_chart(tmp_path / "none.png", empty) is None


def test_a_sweep_reads_as_one_row_per_d_causal_dtype_and_an_odd_case_gets_its_own():
    rows = [(c["row"], c["params"]["n"]) for c in planned({"n": ["1024", "4096"]})]
    assert rows == [("d=128 causal=False dtype=bf16", 1024), ("d=128 causal=False dtype=bf16", 4096)]
    odd = planned({"n": ["1024"], "batch": ["64"]})[0]
    assert odd["row"] == "d=128 batch=64 causal=False dtype=bf16"
    ws = Workspace(REPO)
    assert speed.legacy_row(ws, "fmha/stage-d", "d=64 m=300 n=1000 batch=2 heads=4 kv_heads=2") == ("d=64 m=300 batch=2 heads=4 kv_heads=2", 1000)
    assert speed.legacy_row(ws, "fmha/stage-d", "d=64 m=1024 n=1024 batch=16 heads=32 kv_heads=32 causal=True") == ("d=64 causal=True", 1024)


@pytest.mark.gpu
def test_timer_measures_a_matmul_close_to_its_flop_rate():
    import torch

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    t = timing.time_cuda(lambda: a @ a, reps=20, graph="off")
    tflops = 2 * 4096**3 / (t["median_ms"] * 1e-3) / 1e12
    assert 100 < tflops < 1200 and t["p10_ms"] <= t["median_ms"] <= t["p90_ms"]
    small = timing.time_cuda(lambda: a[:8, :8].add_(0), reps=10, graph="auto")
    assert small["graph"] is True and small["median_ms"] < 0.05


def test_a_failing_peer_keeps_its_whole_error_in_the_record():
    """Issue 14 item 13: the fa4 cell read `FileNotFoundError: [Errno 2] N…` and nothing more.
    A peer that fails while being made or timed keeps its full message and traceback."""
    import types

    long_path = "/nowhere/" + "x" * 300 + "/kernel.cubin"

    def make_peer(name, inputs, params):
        if name == "broken-at-make":
            raise FileNotFoundError(2, "No such file or directory", long_path)
        return lambda: (_ for _ in ()).throw(RuntimeError("timed call failed " + "y" * 300))

    peers = types.SimpleNamespace(make_peer=make_peer)
    job = bench.BenchJob({}, lambda e: None)
    made = job.make_peer(peers, "broken-at-make", {}, {})
    assert long_path in made["skipped"] and "FileNotFoundError" in made["error"]["traceback"] and "make_peer" in made["error"]["traceback"]
    timed = job.time_peer(job.make_peer(peers, "broken-when-timed", {}, {}), 1.0, {"graph": "off", "reps": 1})
    assert "y" * 300 in timed["skipped"] and "RuntimeError" in timed["error"]["type"]


def test_the_run_chart_leaves_the_kernels_yardsticks_out_of_the_best_peer_as_the_perf_doc_does(tmp_path):
    ws = Workspace(REPO)
    assert bench_report._yardsticks(ws, {"kernel": "moe"}) == ("dense",)  # moe's kernel.yaml: dense is a yardstick
    assert bench_report._yardsticks(ws, {"kernel": "fmha"}) == ()
    assert bench_report._yardsticks(Workspace(tmp_path), {"kernel": "moe"}) == ()  # no kernel.yaml here: every peer counts


def _process_result(wb_ms, fa4_ms, verdict="PASS", flops=4e12):
    """One worker process's bench result for one case (as BenchJob returns it)."""
    case = {"case": "n=4096", "row": "d=128", "verdict": verdict, "flops": flops, "fraction_of_peak": 0.9,
            "peers": {"fa4": {"median_ms": fa4_ms, "p10_ms": fa4_ms, "p90_ms": fa4_ms, "tflops": flops / fa4_ms / 1e9},
                      "sdpa-flash": {"skipped": "not installed"}}}
    if verdict == "PASS":
        case.update(median_ms=wb_ms, p10_ms=wb_ms * 0.99, p90_ms=wb_ms * 1.02, min_ms=wb_ms * 0.98, reps=30,
                    tflops=flops / wb_ms / 1e9)
    return {"env": {"gpu": "NVIDIA H200"}, "peak": {"tflops": 790.0}, "notes": [], "cases": [case], "verdict": verdict}


def test_several_processes_merge_into_the_median_of_their_medians():
    """--processes: each process's median counts once; TFLOP/s comes from the median of the
    medians, for wb and each peer alike, and the record keeps every process's median."""
    merged = bench.merge_processes([_process_result(5.0, 6.0), _process_result(6.0, 5.5), _process_result(5.2, 9.0)])
    (case,) = merged["cases"]
    assert case["median_ms"] == 5.2 and case["process_medians_ms"] == [5.0, 6.0, 5.2] and case["reps"] == 90
    assert case["tflops"] == pytest.approx(4e12 / 5.2e-3 / 1e12)
    assert case["peers"]["fa4"]["median_ms"] == 6.0 and case["peers"]["fa4"]["tflops"] == pytest.approx(4e12 / 6e-3 / 1e12)
    assert case["peers"]["sdpa-flash"] == {"skipped": "not installed"}
    assert case["fraction_of_peak"] == pytest.approx(0.9 * 5.0 / 5.2)  # process 1's, scaled to the merged time
    assert merged["verdict"] == "PASS" and merged["processes"] == 3 and "3 worker processes" in merged["notes"][-1]
    failed = bench.merge_processes([_process_result(5.0, 6.0), _process_result(5.0, 6.0, verdict="FAIL")])
    assert failed["verdict"] == "FAIL" and failed["cases"][0]["verdict"] == "FAIL" and "median_ms" not in failed["cases"][0]


@pytest.fixture
def stage_d(tmp_path):
    """(workspace, kernel, stage D, its n=4096 bench case) in a copy of this repository's workspace."""
    import shutil

    for name in ("stages", "fixtures", "pyproject.toml"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    ws = Workspace(tmp_path)
    kernel = load_kernels(ws)["fmha"]
    spec = kernel.stage("d")
    return ws, kernel, spec, bench.plan_cases(spec, kernel, {"n": ["4096"]}, False)


def _processes_hanging_at(call: int, calls: list):
    """A stand-in run_job: each call a process's result (wb's median 5 ms + the call's number),
    the `call`-th a HANG; `calls` collects each call's warm flag."""
    from workbench.run.supervisor import Outcome

    def fake_run_job(ws_, job, timeout, on_event, warm=True, **kwargs):
        calls.append(warm)
        if len(calls) == call:
            return Outcome(status="HANG", message="no result after 9 s", worker_pid=len(calls))
        return Outcome(status="result", result=_process_result(5.0 + len(calls), 6.0), worker_pid=len(calls))

    return fake_run_job


def test_run_bench_with_processes_starts_a_new_worker_for_each_and_keeps_them_past_a_hang(stage_d, monkeypatch):
    """Each process is a new worker (warm=False); a process that hangs is the record's verdict,
    and the processes timed before it stay in the record."""
    ws, kernel, spec, cases = stage_d
    calls = []
    monkeypatch.setattr(bench, "run_job", _processes_hanging_at(3, calls))
    done = bench.run_bench(ws, spec, kernel, cases, {}, ["fa4"], processes=2)
    assert calls == [False, False] and done["verdict"] == "PASS"
    assert done["bench"][0]["process_medians_ms"] == [6.0, 7.0] and done["bench"][0]["median_ms"] == 6.5
    calls.clear()
    calls.append(False)  # the next call is the third: it hangs
    hung = bench.run_bench(ws, spec, kernel, cases, {}, ["fa4"], processes=3)
    assert hung["verdict"] == "HANG" and hung["bench"][0]["process_medians_ms"] == [7.0]
    assert "process 2 of 3: HANG" in hung["notes"][-1]


def as_if_a_gpu(monkeypatch):
    """wb bench refuses a machine with no GPU driver before its worker starts; these tests
    stand in for the worker's GPU work, so the machine is taken as having one. The sweep's
    compiles ahead (about 20 real stage D compiles, 80 s of a test; test_compile_ahead.py
    proves them) are recorded, not run: the list of the configurations asked for."""
    monkeypatch.setattr("workbench.gpu.reachable", lambda: True)
    asked: list = []
    monkeypatch.setattr(bench, "_compile_ahead", lambda ws, spec, resolved, variants, on_event: asked.append(resolved))
    return asked


def test_an_interrupted_bench_is_recorded_interrupted_and_exits_130(fmha_ws, wb, monkeypatch):
    """Ctrl-C during `wb bench`: its worker ends (run_job's INTERRUPTED), the record says so,
    and wb exits 130 as `wb run` does (it exited 1, as for a failing kernel)."""
    from workbench.run.supervisor import Outcome

    as_if_a_gpu(monkeypatch)
    monkeypatch.setattr(bench, "run_job", lambda *a, **k: Outcome(status="INTERRUPTED", message="interrupted (Ctrl-C or SIGTERM)"))
    proc = wb("bench", "d", "-p", "n=4096", "--peers", "", "--json", cwd=fmha_ws)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "INTERRUPTED"


def _two_cases(first_ms, second_ms=None, fa4_ms=6.0, crash_second=False, fa4_fails=False):
    """A process's result for cases n=4096 and n=8192 (the second left out: the process
    stopped before it; crash_second: it crashed on it)."""
    out = _process_result(first_ms, fa4_ms)
    if fa4_fails:
        out["cases"][0]["peers"]["fa4"] = {"error": "RuntimeError: out of memory"}
    if second_ms is not None or crash_second:
        second = _process_result(second_ms or 1.0, fa4_ms, verdict="CRASH" if crash_second else "PASS")["cases"][0]
        out["cases"].append({**second, "case": "n=8192"})
    return out


def test_processes_are_merged_by_case_name_and_what_some_did_not_time_is_untimed():
    """merge_processes matched cases by position and took the first process's case list: a
    case the first process never reached was dropped, one a later process never reached kept
    the first's timing alone, unmarked, and a peer that failed in one process kept the
    first's timing. Now cases are matched by name and what was not timed everywhere says so."""
    merged = bench.merge_processes([_two_cases(5.0), _two_cases(5.2, 9.0), _two_cases(5.4, 9.2)])
    first, second = merged["cases"]
    assert first["case"] == "n=4096" and first["process_medians_ms"] == [5.0, 5.2, 5.4]
    assert second["case"] == "n=8192" and second["verdict"] == "ERROR" and "median_ms" not in second
    assert "timed in 2 of 3 worker processes" in second["error"] and merged["verdict"] == "FAIL"
    crashed = bench.merge_processes([_two_cases(5.0, crash_second=True), _two_cases(5.2, 9.0)])
    assert crashed["cases"][1]["verdict"] == "CRASH" and "median_ms" not in crashed["cases"][1]
    peer = bench.merge_processes([_two_cases(5.0), _two_cases(5.2, fa4_fails=True)])["cases"][0]["peers"]["fa4"]
    assert "median_ms" not in peer and "tflops" not in peer and peer["error"] == "RuntimeError: out of memory"
    none_timed = bench.merge_processes([_process_result(5.0, 6.0, verdict="FAIL")])
    assert none_timed["notes"][-1] == "timed in 1 worker process, the median of their medians; no case was timed in all of them"


def test_an_incomplete_multi_process_bench_leaves_memorys_speed_alone(stage_d, monkeypatch):
    """Two processes timed, the third hung: the record keeps the two, but MEMORY.md's speed
    block took them as a PASS measurement. It now keeps the last complete one."""
    ws, kernel, spec, cases = stage_d
    monkeypatch.setattr(bench, "run_job", _processes_hanging_at(3, []))
    hung = bench.run_bench(ws, spec, kernel, cases, {}, ["fa4"], processes=3)
    assert hung["verdict"] == "HANG" and hung["bench"][0]["process_medians_ms"] == [6.0, 7.0]
    assert not memory.data_path(ws.memory_path).exists() or not memory.read_data(memory.data_path(ws.memory_path)).get("speed")
    assert speed.speed_edit([hung], ws).merge(None) == {}  # nor does `wb import` of that record


def test_a_ctrl_c_while_the_bench_worker_starts_is_a_record_not_an_empty_run_folder(stage_d, monkeypatch):
    """A Ctrl-C while a worker starts (Worker.spawn ends it and raises KeyboardInterrupt) left
    runs/<id>/ of wb bench with only its owner file: run_job returned it to wb run as
    INTERRUPTED only. run_job now returns INTERRUPTED itself, and wb bench records it."""
    from workbench.run import supervisor

    ws, kernel, spec, cases = stage_d

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(supervisor.Worker, "spawn", interrupted)
    rec = bench.run_bench(ws, spec, kernel, cases, {}, [], processes=2)
    assert rec["verdict"] == "INTERRUPTED"
    assert (ws.runs_dir / rec["id"] / "run.json").is_file()


def test_a_remote_bench_of_n_processes_waits_n_timeouts(fmha_ws, wb, monkeypatch):
    """wb bench --host H --processes N gave the remote call timeout + 300 s in all, while each
    of the N processes may take the timeout: a long bench came back as 'no answer from host'."""
    from workbench.remote import client

    seen = {}

    def fake(ws, host, argv, **kwargs):
        seen.update(kwargs, host=host)
        raise UserError("stop here")

    monkeypatch.setattr(client, "run_and_import", fake)
    proc = wb("bench", "d", "-p", "n=4096", "--peers", "", "--processes", "3", "--timeout", "100", "--host", "h1", cwd=fmha_ws)
    assert proc.returncode == 2 and "stop here" in proc.stderr
    assert seen["host"] == "h1" and seen["deadline_s"] == 3 * 100 + 300


def test_a_recorded_sweep_writes_the_perf_doc_again_without_timing_anything(stage_d, wb, monkeypatch):
    """A sweep timed on a GPU machine comes back as a record (`wb import`); `wb bench --sweep
    --from RUN` writes the kernel's perf doc from it here, byte for byte as the timing run
    wrote it there, and times nothing. A bench of other cases, a run of another kind, or
    timing options beside --from are one-line errors; a record older than the bench_sweep
    field is taken as the sweep when its cases hold every row of it (an older record of four
    cases replaced the 44-row doc)."""
    ws, _, _, _ = stage_d
    calls = []
    monkeypatch.setattr(bench, "run_job", _processes_hanging_at(99, calls))
    asked = as_if_a_gpu(monkeypatch)
    timed = wb("bench", "d", "--sweep", "--peers", "fa4", "--json", cwd=ws.root)
    assert timed.returncode == 0, timed.stdout + timed.stderr
    sweep = json.loads(timed.stdout)
    assert sweep["bench_sweep"] is True and len(calls) == 1
    assert [r["name"] for r in asked[0]] == [c["name"] for c in planned({}, sweep=True)]  # every row compiled ahead
    doc = ws.root / "docs" / "perf.md"
    written = doc.read_text()
    doc.unlink()
    plain = wb("bench", "d", "-p", "n=4096", "--peers", "fa4", "--json", cwd=ws.root)
    assert json.loads(plain.stdout)["bench_sweep"] is False and not doc.exists()

    again = wb("bench", "d", "--sweep", "--from", sweep["id"], "--json", cwd=ws.root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout) == {"run": sweep["id"], "perf_md": str(doc)}
    assert doc.read_text() == written and len(calls) == 2
    # a stage in the selector is the kernel's (it read "d@last: no runs of d recorded yet")
    by_stage = wb("bench", "d", "--sweep", "--from", "d@last~1", "--json", cwd=ws.root)
    assert by_stage.returncode == 0 and json.loads(by_stage.stdout)["run"] == sweep["id"], by_stage.stderr

    for args, fragment in [
        (["--sweep", "--from", "last"], "timed bench cases, not the kernel's sweep"),
        (["--sweep", "--from", "d@last"], "timed bench cases, not the kernel's sweep"),
        (["--from", sweep["id"]], "give --sweep too"),
        (["--sweep", "--from", sweep["id"], "-p", "n=1024", "--reps", "5"], "-p, --reps do not apply"),
        (["--sweep", "--from", sweep["id"], "--timeout", "-1"], "--timeout do not apply"),  # was taken silently
        (["--sweep", "--from", "20990101"], "no run matches"),
    ]:
        refused = wb("bench", "d", *args, cwd=ws.root)
        assert refused.returncode == 2 and fragment in refused.stderr and "Traceback" not in refused.stderr, (args, refused.stderr)

    from workbench.records.store import RECORD

    record_file = ws.runs_dir / sweep["id"] / RECORD
    older = json.loads(record_file.read_text())
    del older["bench_sweep"]
    case = older["bench"][0]  # (the stand-in worker timed one case: the older record gets every row of the sweep)
    older["bench"] = [{**case, "case": c["name"], "params": c["params"]} for c in planned({}, sweep=True)]
    record_file.write_text(json.dumps(older))
    doc.unlink()
    assert wb("bench", "d", "--sweep", "--from", sweep["id"], cwd=ws.root).returncode == 0
    written = doc.read_text()
    assert written.count("\n| ") == 1 + len(older["bench"])  # the header and a row per case
    older["bench"] = older["bench"][:4]
    record_file.write_text(json.dumps(older))
    refused = wb("bench", "d", "--sweep", "--from", sweep["id"], cwd=ws.root)
    assert refused.returncode == 2 and "not the kernel's sweep" in refused.stderr and doc.read_text() == written


def test_wb_import_names_an_imported_sweep_and_the_command_that_writes_its_perf_doc(stage_d, wb, monkeypatch, tmp_path_factory):
    import shutil

    ws, _, _, _ = stage_d
    monkeypatch.setattr(bench, "run_job", _processes_hanging_at(99, []))
    as_if_a_gpu(monkeypatch)
    sweep = json.loads(wb("bench", "d", "--sweep", "--peers", "fa4", "--json", cwd=ws.root).stdout)
    here = tmp_path_factory.mktemp("here")
    for name in ("stages", "fixtures", "pyproject.toml"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, here / name)
    imported = wb("import", str(ws.runs_dir), cwd=here)
    assert imported.returncode == 0, imported.stderr
    assert f"`wb bench fmha --sweep --from {sweep['id']}` writes its perf doc here" in " ".join(imported.stdout.split())
    assert wb("bench", "fmha", "--sweep", "--from", sweep["id"], cwd=here).returncode == 0
    assert (here / "docs" / "perf.md").read_text() == (ws.root / "docs" / "perf.md").read_text()
    # a record without its `kernel` field (an older wb's) named `wb bench None`: the stage's kernel now
    from workbench.records.store import RECORD

    record_file = ws.runs_dir / sweep["id"] / RECORD
    record_file.write_text(json.dumps({k: v for k, v in json.loads(record_file.read_text()).items() if k != "kernel"}))
    there = tmp_path_factory.mktemp("there")
    shutil.copytree(here / "stages", there / "stages")
    shutil.copy(here / "pyproject.toml", there / "pyproject.toml")
    again = wb("import", str(ws.runs_dir), cwd=there)
    assert f"`wb bench fmha --sweep --from {sweep['id']}`" in " ".join(again.stdout.split()), again.stdout + again.stderr


def test_a_bench_that_fails_in_its_worker_says_why(toy_ws, wb, monkeypatch):
    """A stage module that raised on import (or any error of the bench job) made a CRASH bench
    record with `error: null`: wb bench printed CRASH over an empty table and no reason."""
    path = toy_ws / "stages/toy/stage_a.py"
    path.write_text('raise RuntimeError("half written")\n' + path.read_text())
    as_if_a_gpu(monkeypatch)  # the worker fails on importing the stage, before its own GPU check
    proc = wb("bench", "a", "--json")
    record = json.loads(proc.stdout)
    assert proc.returncode == 1 and record["verdict"] == "CRASH"
    assert "half written" in record["error"]["message"]
    assert "half written" in wb("bench", "a").stdout


def test_no_gpu_is_one_line_before_a_worker_starts(toy_ws, wb, monkeypatch):
    """On a machine with no GPU driver `wb bench` started a warm worker (~350 MB, idle for
    minutes) to learn there was no GPU; now it refuses in one line and leaves no record."""
    monkeypatch.setattr("workbench.gpu.reachable", lambda: False)
    monkeypatch.setattr(bench, "run_job", lambda *a, **k: pytest.fail("a worker was asked to work"))
    proc = wb("bench", "a")
    assert proc.returncode == 2 and proc.stderr.startswith("wb: error: wb bench needs a CUDA GPU"), proc.stderr
    assert not list((toy_ws / "runs").glob("2*"))


@pytest.mark.parametrize("axes, expected", [
    ({"n": ["abc"]}, "bench case n=abc: fmha/stage-d: n='abc' must be an integer"),  # the hook's int() raised
    ({"n": ["0"]}, "bench case n=0: fmha/stage-d: n=0 is below the minimum 1"),  # the hook divided by it
    ({"n": ["-5"]}, "bench case n=-5: fmha/stage-d: n=-5 is below the minimum 1"),
    ({"n": ["128"]}, "-p n=128 leaves no bench case: the kernel's bench_hooks.case_params derive batch=128 with it, "
                     "and fmha/stage-d: batch=128 is above the maximum 64 (give -p batch=... too)"),
    # millions of combinations were built and checked, for minutes, before any answer
    ({"n": [str(i) for i in range(1, 1001)], "batch": [str(i) for i in range(1, 61)], "heads": [str(i) for i in range(1, 61)]},
     "a bench of 3600000 cases (1000 x 60 x 60): over the 10000 one plan takes; split it into several"),
])
def test_a_bench_value_the_hook_cannot_take_or_that_leaves_no_case_is_named(axes, expected):
    """-p n=abc and n=0 were tracebacks (fmha's bench hook computes 16384 // n); n=128 (batch
    128 > 64) and n=-5 left no case and the bench timed nothing, silently."""
    kernel, spec = fmha()
    with pytest.raises(UserError) as err:
        bench.plan_cases(spec, kernel, axes)
    assert str(err.value) == expected
    assert planned({"n": ["128"], "batch": ["64"]})[0]["params"]["batch"] == 64  # the way out it names


def test_a_perf_doc_from_a_record_with_impossible_speeds_or_no_provenance(tmp_path):
    """A record brought from elsewhere may hold inf, NaN or 10**300 TFLOP/s (the schema reads
    them) or lack provenance: matplotlib raised on the axis limits, the doc on the missing key
    after the chart was already replaced. Such a speed is shown as not timed."""
    from workbench.records.charts import draw_speed_chart

    kernel, _ = fmha()
    record = fake_bench_record()
    record["bench"].append({**record["bench"][0], "case": "n=8192", "tflops": float("inf")})
    record["bench"].append({**record["bench"][0], "case": "n=1024", "tflops": 10**300,
                            "peers": {"fa4": {"tflops": float("nan")}}})
    record["peak"] = {"tflops": float("nan")}
    del record["provenance"]
    doc = bench_report.perf_markdown(record, kernel)
    rows = [line for line in doc.splitlines() if line.startswith("| 128 ")]
    assert len(rows) == 3 and "inf" not in doc and "nan" not in doc.lower().replace("nanosec", "")
    assert rows[1].endswith("| PASS | - |") and rows[2].endswith("| PASS | - |"), rows
    assert "Card: unknown (the record names none)" in doc  # no provenance: not a KeyError
    draw_speed_chart(tmp_path / "speed.png", record)  # no exception (None without matplotlib)


def test_a_recorded_sweep_with_no_speed_in_any_case_is_refused(stage_d, wb, monkeypatch):
    """`--from` refused a sweep whose cases have tflops 0 or none, but one of NaN, inf, -5 or
    1e308 (the record's schema reads them) passed the truthiness test and replaced docs/perf.md
    with a table of verdicts and '-' ratios. Each is refused now, the doc left as it was."""
    ws, _, _, _ = stage_d
    monkeypatch.setattr(bench, "run_job", _processes_hanging_at(99, []))
    as_if_a_gpu(monkeypatch)
    timed = wb("bench", "d", "--sweep", "--peers", "fa4", "--json", cwd=ws.root)
    assert timed.returncode == 0, timed.stdout + timed.stderr
    sweep = json.loads(timed.stdout)
    doc = ws.root / "docs" / "perf.md"
    written = doc.read_text()
    from workbench.records.store import RECORD

    record_file = ws.runs_dir / sweep["id"] / RECORD
    record = json.loads(record_file.read_text())
    for value in ("NaN", "Infinity", "-5", "1e308"):
        for case in record["bench"]:
            case["tflops"] = "@@"
        record_file.write_text(json.dumps(record).replace('"@@"', value))
        refused = wb("bench", "d", "--sweep", "--from", sweep["id"], cwd=ws.root)
        assert refused.returncode == 2 and "timed no case" in refused.stderr, (value, refused.stderr)
        assert doc.read_text() == written


def test_a_perf_doc_or_chart_path_that_is_a_folder_is_one_line_and_leaves_nothing_behind(tmp_path):
    """docs/perf.png being a folder raised IsADirectoryError from the chart's rename, a
    traceback, and left docs/perf.png.tmp.png behind; perf.md being a folder failed only after
    the chart had been replaced. Each is one UserError now, naming the path, before either
    file is touched."""

    kernel, spec = fmha()
    ws = Workspace(tmp_path)
    record = fake_bench_record()
    docs = (tmp_path / bench_report.perf_doc_path(kernel, spec)).parent
    written = bench_report.write_perf_doc(ws, kernel, spec, record)
    for blocked in (written.name, written.with_suffix(".png").name):
        before = {p.name: p.stat().st_mtime_ns for p in docs.iterdir() if p.is_file()}
        target = docs / blocked
        target.unlink()
        target.mkdir()
        with pytest.raises(UserError, match=f"cannot write {target.relative_to(tmp_path)}: it is a folder"):
            bench_report.write_perf_doc(ws, kernel, spec, record)
        after = {p.name: p.stat().st_mtime_ns for p in docs.iterdir() if p.is_file()}
        assert after == {k: v for k, v in before.items() if k != blocked}, sorted(after)
        target.rmdir()
        bench_report.write_perf_doc(ws, kernel, spec, record)


def test_a_picture_that_cannot_be_renamed_into_place_leaves_no_temporary_file(tmp_path):
    """pictures.save renamed its temporary PNG over the target; a folder there raised
    IsADirectoryError and left the .tmp.png behind. Now one UserError, and no leftover."""
    pytest.importorskip("matplotlib")
    from workbench.diagnose import pictures

    plt = pictures.pyplot()
    (tmp_path / "x.png").mkdir()
    with pytest.raises(UserError, match="cannot write .*x.png"):
        pictures.save(plt.figure(), tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_a_perf_doc_from_a_hostile_record_keeps_its_table_and_lines(tmp_path):
    """A record brought by `wb import` is another machine's text: a card name, note, peer
    reason or case value holding '|', a line break or '<!--' split the perf doc's table rows,
    opened a heading or hid the rest of the doc in a comment. MEMORY.md escaped such values;
    the perf doc now does the same, so each row keeps its column count."""
    kernel, _ = fmha()
    record = fake_bench_record()
    record["provenance"]["gpu"] = "H200 | evil\n# heading <!--"
    record["notes"] = ["line one\n| a | b |\n<!-- hidden"]
    case = record["bench"][0]
    case["peers"]["sdpa-flash"] = {"skipped": "no\n\n# second heading"}
    case["params"]["dtype"] = "bf16|x"
    case["verdict"] = "PASS\n| forged |"
    case["tflops"] = None
    doc = bench_report.perf_markdown(record, kernel)
    lines = doc.splitlines()
    assert not [line for line in lines if line.startswith("#")][1:], doc  # the title is the only heading
    assert "<!--" not in doc
    table = [line for line in lines if line.startswith("|")]
    widths = {len(line.replace("\\|", "").split("|")) for line in table}
    assert len(table) == 3 and len(widths) == 1, table  # header, rule, one row: same width


def test_a_record_of_more_cases_than_a_chart_holds_gets_its_perf_doc_without_a_chart(tmp_path):
    """The chart's height grows with the cases: a record of 4,400 (the schema sets no limit; a
    doctored or merged record) took 3 minutes and 34 MB to draw, 22,000 did not finish in 10.
    Past MAX_CHART_CASES (or MAX_CHART_SERIES peers) no chart is drawn; the perf doc is written."""
    from workbench.records import charts

    kernel, spec = fmha()
    record = fake_bench_record()
    case = record["bench"][0]
    record["bench"] = [{**case, "case": f"n={i}"} for i in range(charts.MAX_CHART_CASES + 1)]
    assert charts.draw_speed_chart(tmp_path / "speed.png", record) is None and not (tmp_path / "speed.png").exists()
    record["bench"] = [{**case, "peers": {f"p{i}": {"tflops": 500.0} for i in range(charts.MAX_CHART_SERIES)}}]
    assert charts.draw_speed_chart(tmp_path / "speed.png", record) is None

    record["bench"] = [{**case, "case": f"n={i}"} for i in range(charts.MAX_CHART_CASES + 1)]
    doc = bench_report.write_perf_doc(Workspace(tmp_path), kernel, spec, record)
    assert doc.read_text().count("\n| ") == 1 + charts.MAX_CHART_CASES + 1 and "![" not in doc.read_text()


def _perf_doc_kernel(perf_doc: str):
    from types import SimpleNamespace

    return SimpleNamespace(name="toy", bench=SimpleNamespace(perf_doc=perf_doc, stage="a", yardsticks=(), sweep=[]))


@pytest.mark.parametrize("perf_doc, link_to", [
    ("MEMORY.md", None),  # kernel.yaml may name any .md: the table replaced MEMORY.md, lessons and all, exit 0
    ("runs/20261201-000000-000001/report.md", None),
    ("stages/toy/notes.md", None),
    ("docs/perf.md", "MEMORY.md"),  # a link whose target is wb's own
])
def test_a_perf_doc_that_is_wbs_own_file_is_refused(toy_ws, monkeypatch, perf_doc, link_to):
    from types import SimpleNamespace

    from workbench.errors import UserError
    from workbench.workspace import Workspace

    ws = Workspace(toy_ws)
    (toy_ws / "MEMORY.md").write_text("# Team memory\n\nhand-written lessons\n")
    if link_to:
        (toy_ws / "docs").mkdir(exist_ok=True)
        (toy_ws / perf_doc).symlink_to(toy_ws / link_to)
    monkeypatch.setattr(bench_report, "perf_markdown", lambda *a, **k: "| table |\n")
    with pytest.raises(UserError, match="bench.perf_doc: .* is wb's own"):
        bench_report.write_perf_doc(ws, _perf_doc_kernel(perf_doc), SimpleNamespace(letter="a"), {"bench": []})
    assert (toy_ws / "MEMORY.md").read_text() == "# Team memory\n\nhand-written lessons\n"


def test_a_file_where_the_perf_docs_folder_should_be_is_one_line(toy_ws, monkeypatch):
    """docs/ a file: the chart's mkdir was a FileExistsError traceback, exit 1."""
    from types import SimpleNamespace

    from workbench.errors import UserError
    from workbench.workspace import Workspace

    (toy_ws / "docs").write_text("x\n")
    monkeypatch.setattr(bench_report, "perf_markdown", lambda *a, **k: "| table |\n")
    record = {"bench": [{"case": "n=128", "tflops": 5.0, "params": {"n": 128}}], "stage": "toy/stage-a", "provenance": {}}
    with pytest.raises(UserError, match=r"cannot write docs/perf\.md: .*docs is not a folder \(a file\)"):
        bench_report.write_perf_doc(Workspace(toy_ws), _perf_doc_kernel("docs/perf.md"), SimpleNamespace(letter="a"), record)


def test_the_perf_table_keeps_its_shape_without_parameter_columns_and_its_ratios_short():
    """A sweep without parameter columns gave a header one cell wider than its rule (broken
    markdown); a peer timed at 1e-300 TFLOP/s gave a ratio of 300 digits."""
    from types import SimpleNamespace

    kernel = SimpleNamespace(
        name="toy", title="Toy", stage=lambda letter: None,
        bench=SimpleNamespace(columns=[], sweep=[], quiet=[], title=None, note="", yardsticks=(), stage="a"),
    )
    record = fake_bench_record(fa4=1e-300, cudnn=1e-300)
    record["bench"][0]["params"] = {}
    lines = [line for line in bench_report.perf_markdown(record, kernel).splitlines() if line.startswith("|")]
    header, rule, row = lines
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row.split("|")[-2].strip() == "×6e+302"


def _clocked(result, wb_mhz, fa4_mhz, wb_limits=(), fa4_limits=()):
    """A process result whose wb and fa4 timings carry the SM clock they were timed at."""
    (case,) = result["cases"]
    case["clock"] = {"sm_mhz_median": wb_mhz, "sm_mhz_min": wb_mhz - 15, "sm_mhz_max": wb_mhz, "samples": 20, "limits": list(wb_limits)}
    case["peers"]["fa4"]["clock"] = {"sm_mhz_median": fa4_mhz, "sm_mhz_min": fa4_mhz, "sm_mhz_max": fa4_mhz + 15, "samples": 20,
                                     "limits": list(fa4_limits)}
    return result


def test_processes_merge_their_clocks_and_a_process_without_one_leaves_none():
    merged = bench.merge_processes([_clocked(_process_result(5.0, 6.0), 1755, 1830, ["power cap"]),
                                    _clocked(_process_result(5.1, 6.1), 1980, 1980),
                                    _clocked(_process_result(5.2, 6.2), 1800, 1905)])
    (case,) = merged["cases"]
    assert case["clock"]["sm_mhz_median"] == 1800 and case["clock"]["process_sm_mhz_medians"] == [1755, 1980, 1800]
    assert case["clock"]["sm_mhz_min"] == 1740 and case["clock"]["samples"] == 60 and case["clock"]["limits"] == ["power cap"]
    assert case["peers"]["fa4"]["clock"]["sm_mhz_median"] == 1905 and case["peers"]["fa4"]["clock"]["sm_mhz_max"] == 1995
    # the first process's clock is not passed off as all of them
    partly = bench.merge_processes([_clocked(_process_result(5.0, 6.0), 1755, 1830), _process_result(5.1, 6.1)])
    assert "clock" not in partly["cases"][0] and "clock" not in partly["cases"][0]["peers"]["fa4"]


def test_a_case_timed_at_unequal_clocks_or_under_a_limit_is_named_and_a_hostile_clock_is_skipped():
    apart = {"bench": [_clocked(_process_result(5.0, 6.0), 1755, 1830)["cases"][0]]}
    assert bench_report.clock_notes(apart) == ["n=4096: SM clock wb 1755, fa4 1830 MHz (median while timed)"]
    capped = {"bench": [_clocked(_process_result(5.0, 6.0), 1980, 1975, fa4_limits=["power cap"])["cases"][0]]}
    assert bench_report.clock_notes(capped) == ["n=4096: SM clock 1980 MHz for each kernel (median while timed); limited by power cap"]
    same = {"bench": [_clocked(_process_result(5.0, 6.0), 1980, 1970)["cases"][0]]}  # 0.5 % apart, no limit
    assert bench_report.clock_notes(same) == []
    hostile = [{"case": "a", "clock": "fast"}, {"case": "b", "clock": {"sm_mhz_median": True}},
               {"case": "c", "clock": {"sm_mhz_median": 1900, "limits": "power"}, "peers": {"fa4": {"clock": [1]}, "x": 3}}]
    assert bench_report.clock_notes({"bench": hostile}) == []


def test_wb_bench_shows_the_clock_column_and_names_unequal_clocks(stage_d, wb, monkeypatch):
    from workbench.run.supervisor import Outcome

    ws, _, _, _ = stage_d
    as_if_a_gpu(monkeypatch)

    def fake_run_job(ws_, job, timeout, on_event, warm=True, **kwargs):
        result = _clocked(_process_result(5.0, 6.0), 1755, 1830, ["power cap"])
        result["cases"][0].update(case=job["cases"][0]["name"], params=job["cases"][0]["params"])
        return Outcome(status="result", result=result, worker_pid=1)

    monkeypatch.setattr(bench, "run_job", fake_run_job)
    proc = wb("bench", "d", "-p", "n=4096", "--peers", "fa4", cwd=ws.root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MHz" in proc.stdout and "1755" in proc.stdout
    assert "SM clock wb 1755, fa4 1830 MHz" in proc.stdout and "limited by power cap" in proc.stdout


def test_bench_times_in_turn_by_default_and_no_interleave_reaches_the_worker(stage_d, wb, monkeypatch):
    ws, _, _, _ = stage_d
    as_if_a_gpu(monkeypatch)
    jobs = []

    def fake_run_job(ws_, job, timeout, on_event, warm=True, **kwargs):
        from workbench.run.supervisor import Outcome

        jobs.append(job)
        return Outcome(status="result", result=_process_result(5.0, 6.0), worker_pid=1)

    monkeypatch.setattr(bench, "run_job", fake_run_job)
    assert wb("bench", "d", "-p", "n=4096", "--peers", "fa4", "--json", cwd=ws.root).returncode == 0
    assert wb("bench", "d", "-p", "n=4096", "--peers", "fa4", "--no-interleave", "--json", cwd=ws.root).returncode == 0
    assert [j["interleave"] for j in jobs] == [True, False]  # in turn unless asked otherwise
    refused = wb("bench", "d", "--sweep", "--from", "last", "--no-interleave", cwd=ws.root)
    assert refused.returncode == 2 and "--no-interleave do not apply" in refused.stderr


@pytest.mark.gpu
def test_interleaved_timing_gives_each_kernel_its_own_time_and_one_clock():
    """Two matmuls, the second 8 times the work, timed repeat by repeat in turn: each gets its
    own median (not the pair's), both say so, and they share the clock sampled over both."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    small = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    large = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    alone = timing.time_cuda(lambda: large @ large, reps=20, graph="off")["median_ms"]
    both = timing.time_cuda_interleaved({"small": lambda: small @ small, "large": lambda: large @ large}, reps=20, graph="off")
    assert list(both) == ["small", "large"] and all(t["interleaved"] and t["reps"] == 20 for t in both.values())
    assert 4 < both["large"]["median_ms"] / both["small"]["median_ms"] < 12
    assert both["large"]["median_ms"] == pytest.approx(alone, rel=0.2)
    assert both["small"].get("clock") == both["large"].get("clock")


def test_the_perf_doc_says_when_its_kernels_were_timed_in_turn_and_names_unequal_clocks():
    kernel, _ = fmha()
    record = fake_bench_record()
    assert "timed repeat by repeat in turn" not in bench_report.perf_markdown(record, kernel)  # an older, one-after-the-other record
    case = record["bench"][0]
    case.update(interleaved=True, clock={"sm_mhz_median": 1815, "limits": ["power cap"]})
    case["peers"]["fa4"]["clock"] = {"sm_mhz_median": 1815, "limits": ["power cap"]}
    text = bench_report.perf_markdown(record, kernel)
    assert "wb and its peers timed repeat by repeat in turn" in text
    assert "power cap held its SM clock down while 1 of 1 cases were timed (their medians 1815-1815 MHz" in text
    assert bench_report.clock_notes(record) == [f"{case['case']}: SM clock 1815 MHz for each kernel (median while timed); limited by power cap"]
