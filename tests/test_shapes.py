"""`wb shapes` and `wb compile` end to end (workers, CLI, lock files), compile-only on the CPU."""

import json
import os
from pathlib import Path

import importlib.util

import pytest

from conftest import REPO
from shapes_kit import make_workspace

# find_spec, not import: importing the DSL at collection would fix its arch before conftest sets CUTE_DSL_ARCH
pytestmark = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="nvidia-cutlass-dsl is not installed")

# the examples/python/CuTeDSL folder of a CUTLASS checkout (also the cutlass-example bench peer's variable)
EXAMPLES = os.environ.get("WB_CUTLASS_EXAMPLES")
DENSE_GEMM = Path(EXAMPLES or ".").expanduser().absolute() / "cute/hopper/kernel/dense_gemm/dense_gemm.py"


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def tma_ws(tmp_path, monkeypatch):
    root = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)
    monkeypatch.setenv("WB_WORKER_IDLE", "20")
    return root


def test_shapes_table_json_accept_and_check(tma_ws, wb):
    proc = wb("shapes", "tmacopy", "--all-ops", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    (stage,) = data["stages"]
    assert stage["status"] == "ok" and stage["arch"] == "sm_90a" and stage["cache"] == "cold"
    recs = {r["name"]: r for r in stage["records"]}
    assert recs["tXgX_row"]["rank"] == 2 and recs["tXgX"]["rank"] == 4
    assert stage["resources"]["kernels"][0]["dynamic_smem_bytes"] == 8320
    assert "compiling tmacopy/stage-a" in proc.stderr  # progress, on stderr

    # no snapshot yet: --check fails and says why
    proc = wb("shapes", "--check")
    assert proc.returncode == 1 and "no accepted snapshot" in flat(proc.stdout)

    proc = wb("shapes", "--accept")
    assert proc.returncode == 0, proc.stderr
    lock = (tma_ws / "stages" / "tmacopy" / "shapes.lock.yaml").read_text()
    assert "tXgX_row@stage_a_copy.py~cute.slice" in lock  # no probes: the captured ops are locked
    memory = (tma_ws / "MEMORY.md").read_text()
    assert "<!-- wb:begin shapes -->" in memory and "tmacopy/stage-a" in memory

    proc = wb("shapes", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cached" in proc.stdout  # unchanged sources: answered from the compile cache

    # a different tile changes layouts: --check exits 1 and shows old and new
    stage_file = tma_ws / "stages" / "tmacopy" / "stage_a_copy.py"
    original = stage_file.read_text()
    stage_file.write_text(original.replace("TILE = (64, 64)", "TILE = (64, 128)"))
    proc = wb("shapes", "--check")
    assert proc.returncode == 1
    assert "was" in proc.stdout and "change(s) since the accepted snapshot" in flat(proc.stdout)
    # moving code (line numbers change) is not a change
    stage_file.write_text("# a comment that moves every line\n" + original)
    proc = wb("shapes", "--check")
    assert proc.returncode == 0, proc.stdout


def test_trace_error_is_one_readable_message_with_the_probes_before_it(tma_ws, wb):
    proc = wb("shapes", "-V", "slice=short", "-V", "probes=some")
    assert proc.returncode == 1
    out = flat(proc.stdout)
    assert "compile failed" in out
    assert "stages/tmacopy/stage_a_copy.py:" in out and "slice with 2 coordinates of a tensor with 4 modes" in out
    assert "tXgX_row = tXgX[None, bm]" in out and "(_,?)" in out
    assert "Traceback" not in out + proc.stderr
    # the probe table up to the failure is still shown, and the ops traced before it
    assert "sX" in out and "(64,64):(64,1)" in out
    assert "ops traced before it:" in out and "gX stages/tmacopy/stage_a_copy.py:" in out


def test_smem_and_tma_checks_fail_wb_compile(tma_ws, wb):
    proc = wb("compile", "a", "-p", "stages=32", "--json")
    assert proc.returncode == 1
    rec = json.loads(proc.stdout)
    assert rec["kind"] == "compile" and rec["verdict"] == "CHECK_FAILED"
    (check,) = [c for c in rec["resources"]["checks"] if c["level"] == "error"]
    assert check["check"] == "smem" and "over sm_90a's capacity of 232448 bytes" in check["message"]
    proc = wb("compile", "a", "-p", "n=100")
    assert proc.returncode == 1
    assert "not a multiple of 16" in flat(proc.stdout) and "stride of mode 0 is 100 elements = 200 bytes" in flat(proc.stdout)
    proc = wb("compile", "a", "-p", "align=8")
    assert proc.returncode == 1 and "only 8-byte aligned" in flat(proc.stdout)


def test_wb_compile_writes_artifacts_and_a_compile_record(tma_ws, wb):
    proc = wb("compile", "a", "--keep", "ptx,sass,cubin", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["verdict"] == "COMPILED" and rec["arch"] == "sm_90a"
    run_dir = tma_ws / "runs" / rec["id"]
    assert json.loads((run_dir / "run.json").read_text())["kind"] == "compile"
    names = sorted(Path(p).name for p in rec["artifacts"].values())
    assert names[:2] == ["tmacopy-stage-a.sm_90a.cubin", "tmacopy-stage-a.sm_90a.ptx"]
    assert ".target sm_90a" in (tma_ws / rec["artifacts"]["tmacopy-stage-a.sm_90a.ptx"]).read_text()
    kernel = rec["resources"]["kernels"][0]
    assert kernel["registers"] > 0 and kernel["spill_store_bytes"] == 0 and kernel["barriers"] == 1
    assert kernel["dynamic_smem_bytes"] == 8320
    from workbench.compile.resources import find_nvdisasm

    if find_nvdisasm():
        assert rec["sass"]["instructions"].get("UTMALDG.3D") == 1
        assert "tmacopy-stage-a.sm_90a.sass" in names
    else:
        assert "nvdisasm" in rec["sass"]["note"]
    # the compile record does not show up as a run of the stage
    proc = wb("list", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["stages"][0]["last_run"] is None


def test_wb_run_compile_error_uses_the_readable_message(tma_ws, wb):
    # a CPU-runnable wrapper of the stage: compile errors surface before any launch
    (tma_ws / "stages" / "tmacopy" / "stage_b_cpu.py").write_text(
        "from stages.tmacopy.stage_a_copy import CopyStage\n\n\n"
        "class CpuCopyStage(CopyStage):\n    needs_gpu = False\n"
    )
    yaml_path = tma_ws / "stages" / "tmacopy" / "kernel.yaml"
    yaml_path.write_text(
        yaml_path.read_text()
        + "  - letter: b\n    name: cpu\n    module: stage_b_cpu.py\n"
        "    variants: {slice: [short], probes: [some]}\n    fixtures: [random]\n"
    )
    proc = wb("run", "b", "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    rec = json.loads((tma_ws / "runs" / data["id"] / "run.json").read_text())
    assert rec["verdict"] == "COMPILE_ERROR"
    assert rec["error"]["location"].endswith("stage_a_copy.py:" + rec["error"]["location"].rsplit(":", 1)[1])
    assert rec["error"]["message"].splitlines()[0].endswith("slice with 2 coordinates of a tensor with 4 modes")
    assert [s["name"] for s in rec["shapes"] if s["kind"] == "probe"] == ["sX", "tXgX"]
    assert {"gX", "tXgX"} <= {s["name"] for s in rec["shapes"] if s["kind"] == "op"}  # traced before the failure


def test_fmha_stages_compile_for_sm90(tmp_path, wb):
    """The FMHA stages of this repository, when they are there and compile."""
    stages = REPO / "stages" / "fmha"
    if not (stages / "stage_a_qk.py").is_file():
        pytest.skip("stages/fmha is not there yet")
    root = tmp_path / "ws"
    (root / "stages").mkdir(parents=True)
    import shutil

    shutil.copytree(stages, root / "stages" / "fmha", ignore=shutil.ignore_patterns("__pycache__", "shapes.lock.yaml"))
    (root / "wb.yaml").write_text("default_kernel: fmha\n")
    proc = wb("shapes", "fmha", "a", "--json", cwd=root, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"stages/fmha does not compile right now: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    (stage,) = json.loads(proc.stdout)["stages"]
    recs = {r["name"]: r for r in stage["records"]}
    assert recs["gQ"]["rank"] == 2 and recs["tQgQ"]["rank"] >= 1
    assert all(r["location"].endswith(".py:" + r["location"].rsplit(":", 1)[1]) for r in stage["records"])


@pytest.mark.skipif(
    not (EXAMPLES and DENSE_GEMM.is_file()),
    reason="set WB_CUTLASS_EXAMPLES to a CUTLASS checkout's examples/python/CuTeDSL (with cute/hopper/kernel/dense_gemm/dense_gemm.py)",
)
def test_cutlass_hopper_dense_gemm_all_ops_without_probes(tmp_path, wb):
    """CUTLASS's own Hopper GEMM, unchanged, through a tiny adapter stage: --all-ops finds
    its TMA partitions, tiles, MMA partitions and the epilogue's register->smem tiled-copy
    partition with their source lines."""
    root = tmp_path / "ws"
    kdir = root / "stages" / "gemm"
    kdir.mkdir(parents=True)
    (root / "wb.yaml").write_text("default_kernel: gemm\n")
    (kdir / "kernel.yaml").write_text(
        "kernel: gemm\narch: sm_90a\nparameters:\n  m: {default: 256}\n  n: {default: 256}\n  k: {default: 128}\n"
        "stages:\n  - {letter: a, name: gemm, module: stage_a_gemm.py, fixtures: [random]}\n"
    )
    (kdir / "stage_a_gemm.py").write_text(
        f'''
import importlib.util, sys
import cutlass, cutlass.cute as cute
from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream
from workbench.kernels.stage import Stage, TensorSpec

PATH = {str(DENSE_GEMM)!r}


def _example():
    spec = importlib.util.spec_from_file_location("cutlass_dense_gemm_example", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class GemmStage(Stage):
    def inputs(self, p):
        return {{}}

    def outputs(self, p):
        return {{}}

    def compile(self, p, variants, arch):
        ex = _example()
        gemm = ex.HopperWgmmaGemmKernel(cutlass.Float32, (128, 128), (1, 1))
        a = make_fake_compact_tensor(cutlass.Float16, (p.m, p.k, 1), stride_order=(1, 0, 2), assumed_align=16)
        b = make_fake_compact_tensor(cutlass.Float16, (p.n, p.k, 1), stride_order=(1, 0, 2), assumed_align=16)
        c = make_fake_compact_tensor(cutlass.Float16, (p.m, p.n, 1), stride_order=(1, 0, 2), assumed_align=16)
        return cute.compile[cute.GPUArch(arch)](gemm, a, b, c, make_fake_stream())
'''
    )
    proc = wb("shapes", "gemm", "--all-ops", "--json", cwd=root, timeout=600)
    if proc.returncode != 0 and "HopperWgmmaGemmKernel" in (proc.stdout + proc.stderr) and "has no attribute" in proc.stdout:
        pytest.skip("this CUTLASS checkout's dense_gemm has another interface")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (stage,) = json.loads(proc.stdout)["stages"]
    ops = stage["records"]
    kinds = {r["op"] for r in ops}
    assert "cute_nvgpu.atom.tma_partition" in kinds and "cute.local_tile" in kinds
    assert "cute.tiled.mma.partition" in kinds and "cute.tiled.copy.partition_D" in kinds
    assert all(r["location"].startswith(str(DENSE_GEMM.parent)) for r in ops if r["op"] == "cute_nvgpu.atom.tma_partition")
    assert stage["resources"]["kernels"][0]["dynamic_smem_bytes"] > 0


def test_diff_run_shows_shape_changes_by_key():
    from workbench.records.diff import diff_runs

    def rec(i, layout, rank, line):
        shapes = [{"name": "tXgX", "key": "tXgX@stage_a.py", "location": f"/w/stages/k/stage_a.py:{line}", "layout": layout, "rank": rank}]
        return {"id": str(i), "stage": "k/stage-a", "verdict": "PASS", "results": [], "shapes": shapes}

    same = diff_runs(rec(1, "(((64,64),1),4):(x)", 2, 10), rec(2, "(((64,64),1),4):(x)", 2, 30))
    assert same["shapes"] == []  # the probe moved lines: not a change
    changed = diff_runs(rec(1, "(((64,64),1),4):(x)", 2, 10), rec(2, "(((64,64),1)):(x)", 1, 10))
    (change,) = changed["shapes"]
    assert change["probe"] == "tXgX@stage_a.py" and change["change"] == "modes" and (change["rank_a"], change["rank_b"]) == (2, 1)


def test_accept_drops_snapshots_of_a_superseded_variant_or_parameter_set(tma_ws, wb):
    """A snapshot taken under variant or parameter names the stage no longer has can never be
    checked again: --accept drops it (stage D's variant set grew in tuning and its parameters
    with issue 18, and left stale keys); snapshots of other parameter values under the
    current names stay."""
    import yaml

    proc = wb("shapes", "--accept")
    assert proc.returncode == 0, proc.stderr
    path = tma_ws / "stages" / "tmacopy" / "shapes.lock.yaml"
    lock = yaml.safe_load(path.read_text())
    (letter,) = lock["stages"]
    (label,) = lock["stages"][letter]
    arch, params, variants = label.split(" · ")
    stale = f"{arch} · {params} · retired=1"
    renamed = f"{arch} · {params} extra=1 · {variants}"  # a parameter the stage does not have
    first, value = params.split(" ")[0].split("=", 1)
    other_params = f"{arch} · {params.replace(f'{first}={value}', f'{first}={value}0', 1)} · {variants}"
    entry = {k: v for k, v in lock["stages"][letter][label].items() if k != "defaults"}  # accepted with -p, say
    lock["stages"][letter].update({stale: entry, renamed: entry, other_params: entry})
    path.write_text(yaml.safe_dump(lock))

    proc = wb("shapes", "--accept")
    assert proc.returncode == 0, proc.stderr
    kept = set(yaml.safe_load(path.read_text())["stages"][letter])
    assert kept == {label, other_params}



def test_accepting_the_defaults_replaces_the_snapshot_of_the_earlier_defaults(tma_ws, wb):
    """A changed default (a variant's auto, a parameter's default) gives the stage a new default
    label: --accept without -p, -V or --n replaces the snapshot accepted as the default before,
    in the lock and in MEMORY, and keeps one accepted deliberately for another configuration."""
    import yaml

    assert wb("shapes", "--accept").returncode == 0
    path = tma_ws / "stages" / "tmacopy" / "shapes.lock.yaml"
    lock = yaml.safe_load(path.read_text())
    (letter,) = lock["stages"]
    (label,) = lock["stages"][letter]
    assert lock["stages"][letter][label]["defaults"] is True
    arch, params, variants = label.split(" · ")
    first, value = params.split(" ")[0].split("=", 1)
    old_default = f"{arch} · {params.replace(f'{first}={value}', f'{first}={value}0', 1)} · {variants}"
    chosen = f"{arch} · {params.replace(f'{first}={value}', f'{first}={value}1', 1)} · {variants}"
    entry = lock["stages"][letter].pop(label)
    lock["stages"][letter].update({old_default: entry, chosen: {**entry, "defaults": False}})
    path.write_text(yaml.safe_dump(lock))
    memory = json.loads((tma_ws / "MEMORY.json").read_text())
    (stage_id,) = memory["shapes"]
    memory["shapes"][stage_id][old_default] = memory["shapes"][stage_id].pop(label)
    (tma_ws / "MEMORY.json").write_text(json.dumps(memory))

    assert wb("shapes", "--accept").returncode == 0
    assert set(yaml.safe_load(path.read_text())["stages"][letter]) == {label, chosen}
    assert set(json.loads((tma_ws / "MEMORY.json").read_text())["shapes"][stage_id]) == {label}

    # a configuration accepted with -p is no default: it replaces nothing
    proc = wb("shapes", "--accept", "-p", f"{first}={value}")
    assert proc.returncode == 0, proc.stderr
    after = yaml.safe_load(path.read_text())["stages"][letter]
    assert set(after) == {label, chosen} and after[label].get("defaults", False) is False

def test_superseded_compares_variant_names_of_the_same_arch():
    from workbench.compile.shapes import superseded

    assert superseded("sm_90a · d=64 · a=1 b=2", "sm_90a", {"a": "1"})
    assert not superseded("sm_90a · d=64 · a=1 b=2", "sm_90a", {"a": "9", "b": "9"})
    assert not superseded("sm_100a · d=64 · a=1", "sm_90a", {"b": "1"})  # another arch: not ours to judge
    assert superseded("sm_90a · d=64", "sm_90a", {"a": "1"})
    assert not superseded("sm_90a · d=64", "sm_90a", {})
    # with the stage's parameters: a label of other parameter names is superseded, other values are not
    assert superseded("sm_90a · d=64 · a=1", "sm_90a", {"a": "1"}, {"d": 64, "dv": 64})
    assert not superseded("sm_90a · d=64 dv=32 · a=1", "sm_90a", {"a": "1"}, {"d": 128, "dv": 128})


def _workers_of(ws: Path) -> list[str]:
    """Command lines of the worker processes started for workspace `ws` (their pid files live in it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "workbench.run.worker" in cmd and str(ws) in cmd:
                found.append(cmd)
    return found


def _interrupted(ws: Path, home: Path, compiling: int, *args: str) -> tuple[int, str, float]:
    """Run `wb ARGS` in its own process, Ctrl-C it once `compiling` compiles are under way;
    (exit status, its output, seconds from Ctrl-C to exit)."""
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", COLUMNS="200", WB_HOME=str(home), WB_COMPILE_JOBS="2")
    proc = subprocess.Popen([sys.executable, "-m", "workbench", *args], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen, deadline = "", time.time() + 120
    while seen.count("compiling ") < compiling and time.time() < deadline and proc.poll() is None:
        seen += proc.stdout.readline()
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    start = time.time()
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, seen + out, time.time() - start


@pytest.mark.slow  # cold compiles in a real wb process, interrupted
def test_ctrl_c_during_a_parallel_compile_ends_every_worker_and_exits_130(fmha_ws, tmp_path):
    """Ctrl-C during `wb shapes` (two compile workers) became 'compile failed' for the stages
    of the interrupted worker, a stage that had compiled among them; wb waited for the other
    worker's compile, printed the table and exited 1. `wb compile` wrote a COMPILE_ERROR
    record. Now both end their workers within a second or two and exit 130, and nothing is
    recorded."""
    status, out, seconds = _interrupted(fmha_ws, tmp_path / "home", 2, "shapes", "fmha", "--no-cache")
    assert status == 130, out
    assert "compile failed" not in out and seconds < 10, (seconds, out)
    assert not [w for w in _workers_of(fmha_ws) if "once-" in w], _workers_of(fmha_ws)

    runs_before = set((fmha_ws / "runs").iterdir()) if (fmha_ws / "runs").is_dir() else set()
    status, out, seconds = _interrupted(fmha_ws, tmp_path / "home2", 1, "compile", "d", "--d", "96", "-p", "causal=true")
    assert status == 130 and seconds < 10, (seconds, out)
    assert not _workers_of(fmha_ws), _workers_of(fmha_ws)  # the busy warm worker was ended too
    runs_after = set((fmha_ws / "runs").iterdir()) if (fmha_ws / "runs").is_dir() else set()
    assert runs_after == runs_before, runs_after - runs_before


def test_a_ctrl_c_after_the_compile_but_before_the_record_leaves_no_run_folder(fmha_ws, tmp_path, monkeypatch):
    """The compile had finished and wb was reading its SASS (nvdisasm) when Ctrl-C came: wb
    compile exited 130 and left runs/<id>/ with its owner file and artifacts, no record."""
    from workbench.run import compile_record
    from workbench.kernels.registry import load_kernels
    from workbench.workspace import Workspace

    monkeypatch.setenv("WB_HOME", str(tmp_path / "home"))
    ws = Workspace(fmha_ws)
    spec = load_kernels(ws)["fmha"].stage("a")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compile_record.res, "disassemble", interrupted)
    before = set((fmha_ws / "runs").iterdir()) if (fmha_ws / "runs").is_dir() else set()
    with pytest.raises(KeyboardInterrupt):
        compile_record.compile_stage_record(ws, spec, spec.resolve_params({}), {}, "sm_90a", ("sass",), in_process=True)
    after = set((fmha_ws / "runs").iterdir()) if (fmha_ws / "runs").is_dir() else set()
    assert after == before, after - before


def test_wb_compile_of_a_stage_whose_module_is_missing_leaves_no_run_folder(tmp_path, wb, monkeypatch):
    """The one-line error was right, but runs/<id>/ stayed with only its owner file, and
    `wb runs` then called it a run whose wb was killed."""
    from conftest import copy_repo_workspace

    ws = copy_repo_workspace(tmp_path / "ws")
    monkeypatch.setenv("WB_HOME", str(tmp_path / "home"))
    (ws / "stages" / "fmha" / "stage_a_qk.py").unlink()
    proc = wb("compile", "a", cwd=ws)
    assert proc.returncode == 2 and "stage_a_qk.py" in proc.stderr, proc.stderr
    assert not (ws / "runs").exists() or not any(p.name[:1].isdigit() for p in (ws / "runs").iterdir())
