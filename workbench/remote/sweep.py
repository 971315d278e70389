"""`wb sweep`: the cartesian product of parameter values as independent runs.

Each case is a normal run (its own record in runs/, report, MEMORY.md line), tagged with
`"sweep": {"id", "case", "of", "lane"}`. Cases go to *lanes*, each running one case at a time
on one warm worker, so a sweep pays the worker's start (process + `import torch` +
`import cutlass`, about 5 s on a GPU host) once per lane, not once per case:

  - local, no GPU (or --gpus none): one lane, cases in order;
  - local with GPUs: one lane per GPU (all visible ones unless --gpus 0,1), each with its own
    CUDA_VISIBLE_DEVICES and so its own warm worker (supervisor.warm_tag includes it);
  - --host a,b: the workspace is synced once per host, then one lane per GPU of each host
    (the host's `gpus:` setting, --gpus, or what nvidia-smi / torch find there), each running
    `wb run ... --json` through ssh with CUDA_VISIBLE_DEVICES set; the remote warm worker of
    that GPU is reused from case to case;
  - --slurm PARTITION: the cases split into --slurm-jobs chunks, each a submitit job with one
    GPU that runs its chunk in order on one warm worker and writes records straight into the
    workspace's runs/ (which must be on a filesystem the nodes share). `--slurm @local` uses
    submitit's LocalExecutor (a dry run of the Slurm path on this machine).

A case that hangs or crashes is recorded HANG/CRASH by its run and the lane moves on. A lane
whose runs keep failing to start (host unreachable) retires after two such failures in a row;
its remaining cases go to the other lanes.

At the end a summary table (one row a parameter set, one column a fixture; each cell the
fixture's verdict and its minimum cosine similarity) is printed and written to
runs/reports/<kernel>-stage-<x>.sweep.md, which the stage report includes.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from workbench import __version__, settings
from workbench.errors import NoGpuError, UserError
from workbench.kernels.registry import load_kernels, resolve_stage
from workbench.records import report
from workbench.records.provenance import file_hashes, git_state
from workbench.records.publish import commit
from workbench.files import atomic_write_text
from workbench.records.store import ensure_runs_dir, new_record, new_run_dir, read_record, utc_now
from workbench.remote import transport
from workbench.remote.client import cancel_all, run_remote
from workbench.run import procs, protocol, supervisor
from workbench.run.execute import run_stage
from workbench.run.supervisor import _socket_dir, warm_tag
from workbench.schemas import short
from workbench.text import decimal_int, first_line, json_or_none
from workbench.workspace import Workspace, find_workspace

LANE_FAILURES_TO_RETIRE = 2


# ----------------------------------------------------------------------------- plan


@dataclass
class Case:
    index: int
    params: dict[str, Any]
    variants: dict[str, str]
    label: dict[str, str]  # the swept values, for display

    def text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.label.items()) or "defaults"


def split_values(raw: str | None, what: str) -> list[str] | None:
    if raw is None:
        return None
    values = [v.strip() for v in str(raw).split(",")]
    if not values or any(not v for v in values):
        raise UserError(f"{what} {raw!r} must be a comma-separated list of values, e.g. 128,256,512")
    return values


def parse_axes(items: list[str] | None, what: str) -> dict[str, list[str]]:
    """-p k=v1,v2 (repeatable) -> {k: [v1, v2]}."""
    axes: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what} {item!r} must look like key=value or key=v1,v2,...")
        if key.strip() in axes:
            raise UserError(f"{what} {key.strip()} is given twice: list its values once, comma-separated")
        axes[key.strip()] = split_values(value, f"{what} {key.strip()}=")
    return axes


def plan(spec, param_axes: dict[str, list[str]], variant_axes: dict[str, list[str]]) -> list[Case]:
    """Every combination, each checked by kernel.yaml's rules before anything runs (the stage
    module's own checks run in each case's worker: this process never imports it)."""
    keys = list(param_axes) + [f"variant:{k}" for k in variant_axes]
    values = list(param_axes.values()) + list(variant_axes.values())
    settings.check_case_count([len(v) for v in values], "a sweep")
    cases: list[Case] = []
    seen = set()
    for combo in itertools.product(*values) if values else [()]:
        chosen = dict(zip(keys, combo))
        overrides = {k: v for k, v in chosen.items() if not k.startswith("variant:")}
        var_overrides = {k[len("variant:"):]: v for k, v in chosen.items() if k.startswith("variant:")}
        try:
            params = spec.resolve_params(overrides)
            variants = spec.resolve_variants(var_overrides)
        except UserError as exc:
            raise UserError(f"sweep case {' '.join(f'{k}={v}' for k, v in chosen.items())}: {exc}") from None
        key = json.dumps([params, variants], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        label = {k.replace("variant:", ""): str(v) for k, v in chosen.items()}
        cases.append(Case(len(cases), params, variants, label))
    return cases


# ----------------------------------------------------------------------------- GPUs


def visible_gpus() -> list[str]:
    """The GPUs this machine offers wb, as CUDA_VISIBLE_DEVICES entries; [] when none.

    CUDA_VISIBLE_DEVICES when set; else `nvidia-smi -L`; else, when the NVIDIA driver is
    loaded but nvidia-smi is missing, torch's device count (in a subprocess)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return [x.strip() for x in cvd.split(",") if x.strip() and not x.strip().startswith("-")]
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        if done.returncode == 0:
            count = sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))
            return [str(i) for i in range(count)]
    except (OSError, subprocess.TimeoutExpired):
        pass
    if not Path("/proc/driver/nvidia").exists():
        return []
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"], capture_output=True, text=True, timeout=120
        )
        return [str(i) for i in range(int(done.stdout.strip().splitlines()[-1]))]
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return []


def remote_gpus(ws: Workspace, host) -> list[str]:
    code = "import json; from workbench.remote.sweep import visible_gpus; print('WB-GPUS ' + json.dumps(visible_gpus()))"
    script = f"cd {transport.shell_path(host.remote_path)} && " + transport.prelude(host) + f"exec {transport.python_cmd(host)} -c {transport.quote(code)}"
    try:
        done = transport.ssh_run(host, script, timeout=180)
    except transport.SshTimeout:
        raise UserError(f"host {host.name}: no answer while counting its GPUs") from None
    line = next((x for x in done.stdout.splitlines() if x.startswith("WB-GPUS ")), None)
    if line is None:
        raise UserError(f"host {host.name}: could not count its GPUs: {transport.last_line(done.stderr) or f'exit {done.returncode}'}")
    found = json_or_none(line[len("WB-GPUS "):])
    if found == []:
        return []
    # Each becomes a lane's CUDA_VISIBLE_DEVICES there: a cut-off answer, or one that is not a
    # list of distinct GPUs, is one line (give the host `gpus:` or --gpus to skip the count).
    problem = UserError(f"host {host.name}: its GPU count is cut off or not wb's: {short(line, 100)} (--gpus 0,1 names them)")
    if not isinstance(found, list):
        raise problem
    from workbench.schemas.hosts import parse_gpus  # pydantic: loaded when a host's file is read

    return list(parse_gpus(found, lambda why: problem))


# ----------------------------------------------------------------------------- lanes


@dataclass
class Lane:
    name: str
    host: Any = None  # workbench.remote.hosts.Host, or None for this machine
    gpu: str | None = None
    failures: int = 0
    retired: bool = False

    @property
    def env(self) -> dict[str, str] | None:
        return {"CUDA_VISIBLE_DEVICES": self.gpu} if self.gpu is not None else None


@dataclass
class CaseResult:
    case: Case
    lane: str
    record: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    interrupted: bool = False  # the sweep was stopped (Ctrl-C, SIGTERM) before it ended

    @property
    def verdict(self) -> str:
        if self.record is not None:
            return self.record["verdict"]
        return "ERROR" if self.error else "NOT_RUN"


@dataclass(frozen=True)
class SweepEvent:
    """What a running sweep tells its caller (the CLI draws it: cli/render.SweepDisplay).

    kind "note": text; "start": a lane took a case; "progress": the case's own run event
    (progress); "finish": the case's result. Lanes run in threads: events arrive from them."""

    kind: str
    text: str = ""
    lane: str = ""
    case: Case | None = None
    progress: dict[str, Any] | None = None
    result: CaseResult | None = None


Emit = Callable[[SweepEvent], None]


@dataclass
class RunOptions:
    fixtures: list[str] = field(default_factory=list)
    seed: int = 0
    seeds: int | None = None
    timeout: float | None = None
    arch: str | None = None
    warm: bool = True


def local_lanes(gpus: tuple[str, ...] | None) -> list[Lane]:
    chosen = list(gpus) if gpus is not None else visible_gpus()
    if not chosen:
        return [Lane("local")]
    return [Lane(f"gpu{g}", None, g) for g in chosen]


def host_lanes(ws: Workspace, hosts: list, gpus: tuple[str, ...] | None, show: Callable[[str], None]) -> list[Lane]:
    lanes = []
    for host in hosts:
        info = transport.sync(ws, host)
        show(f"synced {info['files']} files to {host.describe()} in {info['seconds']:.1f} s")
        chosen = gpus if gpus is not None else host.gpus
        if chosen is None:
            chosen = tuple(remote_gpus(ws, host))
        if not chosen:
            lanes.append(Lane(host.name, host, None))
        else:
            lanes += [Lane(f"{host.name}:gpu{g}", host, g) for g in chosen]
    return lanes


def _tag(record: dict[str, Any], tag: dict[str, Any]) -> None:
    """Add the sweep tag to a record that is already written."""
    record["sweep"] = tag
    path = Path(record["_dir"]) / "run.json"
    try:
        data = json.loads(path.read_text())
        data["sweep"] = tag
        atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    except (OSError, ValueError, RecursionError, UserError):
        pass


def _run_case(ws: Workspace, spec, lane: Lane, case: Case, opts: RunOptions, tag: dict, on_event) -> dict[str, Any]:
    if lane.host is not None:
        return run_remote(
            ws, lane.host, spec, case.params, case.variants, opts.fixtures, opts.seed, opts.seeds, opts.timeout, opts.arch,
            show=False, env=lane.env, sync=False, on_event=on_event, extra={"sweep": tag},
        )

    record = run_stage(
        ws, spec, case.params, case.variants, fixtures=list(opts.fixtures), seed=opts.seed, seeds=opts.seeds,
        timeout=opts.timeout, warm=opts.warm, arch=opts.arch, on_event=on_event, env=lane.env,
    )
    _tag(record, tag)
    return record


def run_lanes(
    ws: Workspace, spec, cases: list[Case], lanes: list[Lane], opts: RunOptions, sweep_id: str, emit: Emit
) -> list[CaseResult]:
    """Run every case on the lanes (one thread a lane); a failing case never stops the others."""
    pending = deque(cases)
    results: list[CaseResult | None] = [None] * len(cases)
    lock = threading.Lock()
    abort: list[BaseException] = []

    lanes_done = threading.Semaphore(0)

    def work(lane: Lane) -> None:
        try:
            run_cases(lane)
        finally:
            lanes_done.release()

    def run_cases(lane: Lane) -> None:
        while True:
            with lock:
                if abort or lane.retired or not pending:
                    return
                case = pending.popleft()
            emit(SweepEvent("start", lane=lane.name, case=case))
            t0 = time.perf_counter()
            tag = {"id": sweep_id, "case": case.index, "of": len(cases), "lane": lane.name}
            result = CaseResult(case, lane.name)
            try:
                result.record = _run_case(ws, spec, lane, case, opts, tag, lambda e: emit(SweepEvent("progress", lane=lane.name, case=case, progress=e)))
            except NoGpuError as exc:
                with lock:
                    abort.append(exc)
                result.error = str(exc)
            except UserError as exc:
                result.error = str(exc)
            except Exception as exc:  # a broken case must not take the sweep down
                result.error = f"{type(exc).__name__}: {exc}"
            result.seconds = time.perf_counter() - t0
            failed_to_start = result.error is not None or result.verdict == "LOST"
            with lock:
                results[case.index] = result
                lane.failures = lane.failures + 1 if failed_to_start else 0
                if lane.failures >= LANE_FAILURES_TO_RETIRE and lane.host is not None:
                    lane.retired = True
            emit(SweepEvent("finish", lane=lane.name, case=case, result=result))
            if lane.retired:
                emit(SweepEvent("note", text=f"lane {lane.name} retired after {lane.failures} failures in a row"))

    threads = [threading.Thread(target=work, args=(lane,), name=f"wb-lane-{lane.name}", daemon=True) for lane in lanes]
    for t in threads:
        t.start()
    # Waited for with a semaphore, not Thread.join: a Ctrl-C that lands in join() on Python
    # 3.11 marks the running thread stopped (bpo-45274's fix), join() then returns at once,
    # and wb exited while a lane was still writing its record (empty run folders).
    finished = 0

    def wait_lanes(seconds: float) -> None:
        nonlocal finished
        deadline = time.monotonic() + seconds
        while finished < len(threads) and time.monotonic() < deadline:
            if lanes_done.acquire(timeout=0.2):
                finished += 1

    try:
        wait_lanes(float("inf"))
    except KeyboardInterrupt:
        with lock:
            abort.append(KeyboardInterrupt())
        emit(SweepEvent("note", text="interrupted: ending the running cases (their records say INTERRUPTED)"))
        supervisor.STOPPING.set()  # the runs whose workers are ended now record INTERRUPTED
        try:
            _end_running(ws)
            if any(lane.host is not None for lane in lanes):
                cancel_all()
            wait_lanes(60.0)  # each lane writes its record (a second Ctrl-C leaves at once)
        finally:
            supervisor.STOPPING.clear()
    for i, r in enumerate(results):
        if r is None:
            results[i] = CaseResult(cases[i], "-", error="not run" + (" (sweep interrupted)" if abort else " (no lane left)"))
    for exc in abort:
        if isinstance(exc, NoGpuError):
            raise exc
    if any(isinstance(exc, KeyboardInterrupt) for exc in abort):
        for r in results:
            r.interrupted = True  # type: ignore[union-attr]
    return results  # type: ignore[return-value]


def _end_running(ws: Workspace) -> None:
    """Kill the workers busy with this process's runs (their runs record CRASH)."""
    me = os.getpid()
    for p in procs.scan(ws):
        sup = (p.data.get("job") or {}).get("supervisor") or {}
        if p.state == "busy" and sup.get("pid") == me:
            procs.kill_proc(p, grace=1.0)


# ----------------------------------------------------------------------------- Slurm


def _slurm_chunk(ws_root: str, stage_id: str, payload: list[dict], opts: dict, sweep_id: str, progress_path: str, total: int) -> list[dict]:
    """Runs inside a submitit job: the chunk's cases in order, on one warm worker."""
    ws = find_workspace(ws_root)
    spec = resolve_stage(ws, stage_id, load_kernels(ws))
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    out = []
    for item in payload:
        tag = {"id": sweep_id, "case": item["index"], "of": total, "lane": f"slurm:{job_id or os.getpid()}"}
        t0 = time.perf_counter()
        try:
            record = run_stage(
                ws, spec, item["params"], item["variants"], fixtures=opts["fixtures"], seed=opts["seed"], seeds=opts["seeds"],
                timeout=opts["timeout"], warm=True, arch=opts["arch"], env={"WB_LANE": f"slurm-{job_id or os.getpid()}"},
            )
            _tag(record, tag)
            entry = {"index": item["index"], "id": record["id"], "verdict": record["verdict"]}
        except Exception as exc:
            entry = {"index": item["index"], "error": f"{type(exc).__name__}: {exc}"}
        entry["seconds"] = time.perf_counter() - t0
        out.append(entry)
        with open(progress_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
    _retire_warm_worker(ws, {"WB_LANE": f"slurm-{job_id or os.getpid()}"})
    return out


def _retire_warm_worker(ws: Workspace, env: dict[str, str]) -> None:
    """Ask the warm worker of this setting to exit (a job's allocation ends with the job)."""
    import socket as _socket

    path = _socket_dir() / f"{warm_tag(ws, env)}.sock"
    try:
        with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            protocol.send(sock, {"op": "exit"})
    except OSError:
        pass


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--slurm needs submitit: pip install 'cute-wb[slurm]' (or pip install submitit)") from None
    return submitit


#: submitit's shared parameters (AutoExecutor translates them for Slurm; @local's LocalExecutor
#: reads timeout_min, gpus_per_node, tasks_per_node and nodes) and what each takes. Any other
#: --slurm-opt is slurm_<one of sbatch's parameters that submitit knows>.
SLURM_SHARED = {
    "timeout_min": "whole number of minutes, at least 1", "mem_gb": "positive number", "nodes": "whole number, at least 1",
    "cpus_per_task": "whole number, at least 1", "gpus_per_node": "whole number", "tasks_per_node": "whole number, at least 1",
    "name": "text", "stderr_to_stdout": "yes or no",
}


def _shared_value(key: str, value: str) -> Any:
    what = SLURM_SHARED[key]
    if what.startswith("whole number"):
        number = decimal_int(value)
        if number is not None and number >= (0 if key == "gpus_per_node" else 1):
            return number
    elif what == "positive number":
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and number > 0:
            return number
    elif what == "yes or no":
        if value.lower() in ("yes", "true", "1", "no", "false", "0"):
            return value.lower() in ("yes", "true", "1")
    else:
        return value
    raise UserError(f"--slurm-opt {key}={value}: expected a {what}")


def slurm_options(partition: str, pairs: dict[str, str]) -> dict[str, Any]:
    """`--slurm PARTITION` and its `--slurm-opt key=value` pairs, checked before anything is
    submitted (UserError, one line): submitit is installed; a partition (not @local) needs
    Slurm's srun here; each key is submitit's (SLURM_SHARED, or slurm_ and a parameter of
    sbatch that submitit knows) and a shared key's value has its type. The options as
    submitit's update_parameters takes them (a slurm_ value of digits as a number)."""
    submitit = _submitit()
    if partition != "@local" and shutil.which("srun") is None:
        raise UserError(
            f"--slurm {partition}: Slurm's srun is not on this machine's PATH: run wb sweep on a Slurm login node "
            "(--slurm @local tries the Slurm path here, through submitit's LocalExecutor)"
        )
    try:
        sbatch = sorted(submitit.SlurmExecutor._valid_parameters())
    except Exception:  # a submitit without it: its own check at update_parameters is the one
        sbatch = []
    known = [*SLURM_SHARED, *(f"slurm_{k}" for k in sbatch)]
    out: dict[str, Any] = {}
    for key, value in pairs.items():
        if key in SLURM_SHARED:
            out[key] = _shared_value(key, value)
        elif key.startswith("slurm_") and (not sbatch or key[len("slurm_"):] in sbatch):
            number = decimal_int(value)
            out[key] = value if number is None else number
        else:
            close = difflib.get_close_matches(key, known, n=1)
            raise UserError(
                f"--slurm-opt {key}: not a submitit parameter{f' (did you mean {close[0]}?)' if close else ''}; "
                f"known: {', '.join(SLURM_SHARED)}" + (f", and slurm_ with one of {', '.join(sbatch)}" if sbatch else ", and slurm_<sbatch parameter>")
            )
    return out


def run_slurm(
    ws: Workspace, spec, cases: list[Case], opts: RunOptions, sweep_id: str, emit: Emit,
    partition: str, jobs: int | None = None, slurm_opts: dict[str, Any] | None = None, executor=None,
) -> list[CaseResult]:
    """Run the cases as submitit jobs (Slurm, or submitit's LocalExecutor for `@local`);
    `slurm_opts` as slurm_options returns them."""
    submitit = _submitit()

    folder = ws.ensure_state_dir("slurm", sweep_id)
    per_case = (opts.timeout or spec.timeout) + 60
    n_jobs = max(1, min(jobs or min(len(cases), 4), len(cases)))
    chunks = [cases[i::n_jobs] for i in range(n_jobs)]
    timeout_min = max(5, math.ceil((max(len(c) for c in chunks) * per_case + 300) / 60))
    if executor is None:
        if partition == "@local":
            executor = submitit.LocalExecutor(folder=str(folder))
            executor.update_parameters(timeout_min=timeout_min)
        else:
            executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
            executor.update_parameters(
                slurm_partition=partition, gpus_per_node=1, tasks_per_node=1, nodes=1, cpus_per_task=8,
                timeout_min=timeout_min, name=f"wb-{spec.kernel}-{spec.letter}",
            )
    if slurm_opts:
        try:
            executor.update_parameters(**slurm_opts)
        except (ValueError, TypeError, NameError, AssertionError) as exc:  # submitit's own checks; nothing submitted yet
            raise UserError(f"--slurm-opt: submitit refused them: {_job_error(exc)}") from None
    payload_opts = {"fixtures": opts.fixtures, "seed": opts.seed, "seeds": opts.seeds, "timeout": opts.timeout, "arch": opts.arch}
    submitted = []
    for k, chunk in enumerate(chunks):
        progress_path = folder / f"progress-{k}.jsonl"
        payload = [{"index": c.index, "params": c.params, "variants": c.variants} for c in chunk]
        with _stderr_into(folder / f"controller-{k}.err") if partition == "@local" else contextlib.nullcontext():
            job = executor.submit(_slurm_chunk, str(ws.root), spec.id, payload, payload_opts, sweep_id, str(progress_path), len(cases))
        submitted.append((job, chunk, progress_path))
        emit(SweepEvent("note", text=f"submitted {len(chunk)} case(s) as job {job.job_id}"))
    results: dict[int, CaseResult] = {}
    interrupted = False
    lane_of = {c.index: f"slurm:{job.job_id}" for job, chunk, _ in submitted for c in chunk}

    def collect(entry: dict) -> None:
        i = entry["index"]
        if i in results:
            return
        case = cases[i]
        result = CaseResult(case, lane_of[i], seconds=entry.get("seconds", 0.0))
        if "id" in entry:
            result.record = read_record(ws.runs_dir / entry["id"])
            if result.record is None:
                result.error = f"record {entry['id']} unreadable"
        else:
            result.error = entry.get("error")
        results[i] = result
        emit(SweepEvent("finish", lane=result.lane, case=case, result=result))

    try:
        while True:
            for job, chunk, progress_path in submitted:
                try:
                    lines = progress_path.read_text().splitlines()
                except OSError:
                    lines = []
                for line in lines:
                    try:
                        collect(json.loads(line))
                    except (ValueError, KeyError):
                        pass
            if all(job.done() for job, _, _ in submitted):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
        for job, _, _ in submitted:
            try:
                job.cancel(check=False)
            except Exception:
                pass
        emit(SweepEvent("note", text="interrupted: Slurm jobs cancelled"))
    for job, chunk, progress_path in submitted:
        try:
            for entry in job.result():
                collect(entry)
        except Exception as exc:
            message = f"Slurm job {job.job_id} failed: {_job_error(exc)}"
            for case in chunk:
                if case.index not in results:
                    results[case.index] = _lost(ws, spec, case, opts, message, {"id": sweep_id, "case": case.index, "of": len(cases), "lane": lane_of[case.index]})
                    emit(SweepEvent("finish", lane=lane_of[case.index], case=case, result=results[case.index]))
    out = [results.get(c.index) or CaseResult(c, lane_of[c.index], error="no result") for c in cases]
    for r in out:
        r.interrupted = interrupted  # as run_lanes: the summary says so and wb sweep exits 130
    return out


@contextlib.contextmanager
def _stderr_into(path: Path):
    """File descriptor 2 on ``path`` for the block: @local's job controller, a process that
    submit() starts, inherits it. It shares wb's process group, so a Ctrl-C reaches it too,
    and its KeyboardInterrupt tracebacks went into the middle of the sweep's output."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def _job_error(exc: BaseException) -> str:
    """The useful line of a submitit failure (it wraps the job's traceback and log paths)."""
    import re

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
    logs = [line.lstrip("- ") for line in lines if line.startswith("- ") and line.endswith((".err", ".out"))]
    text = errors[-1] if errors else (lines[0] if lines else type(exc).__name__)
    return text + (f" (log: {logs[0]})" if logs else "")


def _lost(ws: Workspace, spec, case: Case, opts: RunOptions, message: str, tag: dict) -> CaseResult:
    """A LOST record for a case whose job died before recording it."""
    run_dir = new_run_dir(ws.runs_dir)
    record = new_record(
        "run", spec, case.params, case.variants, "LOST",
        fixtures_requested=opts.fixtures or spec.fixtures,
        seed=opts.seed,
        error={"message": message},
        timing={"timeout_s": opts.timeout or spec.timeout},
        provenance={**git_state(ws.root), "sources": file_hashes(spec.source_files(), ws.root), "wb": __version__, "host": None},
        sweep=tag, started=utc_now(), finished=utc_now(),
    )
    commit(ws, run_dir, record)
    return CaseResult(case, tag["lane"], record=record)


# ----------------------------------------------------------------------------- summary


def _cell(cases: list[dict]) -> dict[str, Any]:
    verdicts = [c.get("verdict") for c in cases]
    cos = [m.get("cos") for c in cases for m in (c.get("outputs") or {}).values() if m.get("cos") is not None]
    err = [m.get("max_abs_err") for c in cases for m in (c.get("outputs") or {}).values() if m.get("max_abs_err") is not None]
    if "FAIL" in verdicts:
        v = "FAIL"
    elif verdicts and all(x == "SKIP" for x in verdicts):
        v = "SKIP"
    else:
        v = "PASS" if verdicts else "-"
    return {"verdict": v, "min_cos": min(cos) if cos else None, "max_err": max(err) if err else None, "cases": len(cases)}


def summarize(ws: Workspace, spec, cases: list[Case], results: list[CaseResult], sweep_id: str, lanes: list[str], started: str) -> dict[str, Any]:
    fixtures: list[str] = []
    rows = []
    for r in results:
        per_fixture: dict[str, list[dict]] = {}
        for c in (r.record or {}).get("results", []):
            per_fixture.setdefault(c["fixture"], []).append(c)
            if c["fixture"] not in fixtures:
                fixtures.append(c["fixture"])
        rec = r.record or {}
        rows.append({
            "case": r.case.index, "label": r.case.label, "params": r.case.params, "variants": r.case.variants,
            "verdict": r.verdict, "run": rec.get("id"), "lane": r.lane, "seconds": round(r.seconds, 3),
            "error": r.error or ((rec.get("error") or {}).get("message") if rec.get("verdict") not in ("PASS", "FAIL") else None),
            "cells": {name: _cell(items) for name, items in per_fixture.items()},
        })
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    git = git_state(ws.root)
    return {
        "kind": "sweep", "id": sweep_id, "stage": spec.id, "started": started, "finished": datetime.now().isoformat(timespec="seconds"),
        "axes": list(cases[0].label) if cases else [], "fixtures": fixtures, "lanes": lanes, "counts": counts, "rows": rows,
        "commit": git.get("commit"), "dirty": git.get("dirty"), "interrupted": any(r.interrupted for r in results),
    }


def _cell_text(cell: dict | None) -> str:
    if not cell:
        return "-"
    cos = f" {cell['min_cos']:.6f}" if cell.get("min_cos") is not None else ""
    return f"{cell['verdict']}{cos}"


def markdown(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {v}" for v, n in sorted(summary["counts"].items()))
    commit = (summary.get("commit") or "no git")[:10] + (" (dirty)" if summary.get("dirty") else "")
    axes = summary["axes"]
    head = [*axes, "run", *summary["fixtures"], "run id", "where", "s"]
    out = [
        f"## Sweep {summary['id']}",
        "",
        f"{len(summary['rows'])} case(s): {counts} · commit `{commit}` · lanes: {', '.join(summary['lanes'])} · {summary['started']}",
        "",
        "Each fixture cell: its verdict and the minimum cosine similarity over its outputs and seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in summary["rows"]:
        run_cell = row["verdict"] + (f": {first_line(row['error'])}" if row.get("error") else "")
        cells = [_cell_text(row["cells"].get(f)) for f in summary["fixtures"]]
        values = [row["label"].get(a, "") for a in axes]
        out.append("| " + " | ".join([*values, run_cell.replace("|", "\\|"), *cells, row["run"] or "-", row["lane"], f"{row['seconds']:.1f}"]) + " |")
    return "\n".join(out) + "\n"


def write_summary(ws: Workspace, spec, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write <kernel>-stage-<x>.sweep.md and refresh the stage report that includes it."""
    path = report.stage_report_path(ws, spec.id).with_suffix(".sweep.md")
    atomic_write_text(path, markdown(summary))
    return path, report.write_stage_report(ws, spec.id)


# ----------------------------------------------------------------------------- entry point


def new_sweep_id(ws: Workspace) -> str:
    """A sweep id no other sweep of the workspace has: to the microsecond, and claimed by
    making .wb/sweeps/<id> (two sweeps started in one second shared an id, and through it
    their records' tags and a Slurm sweep's progress files)."""
    claims = ws.ensure_state_dir("sweeps")
    while True:
        now = datetime.now()
        sweep_id = now.strftime("sweep-%Y%m%d-%H%M%S-") + f"{now.microsecond:06d}"
        try:
            (claims / sweep_id).mkdir()
        except FileExistsError:
            time.sleep(0.000_01)
            continue
        _forget_old_claims(claims, now)
        return sweep_id


def _forget_old_claims(claims: Path, now: datetime) -> None:
    """A claim only has to outlive the instant of its id: drop those over a day old."""
    cutoff = (now - timedelta(days=1)).strftime("sweep-%Y%m%d-%H%M%S-")
    for old in claims.glob("sweep-*"):
        if old.name < cutoff:
            try:
                old.rmdir()
            except OSError:
                pass


def _compile_ahead(ws: Workspace, spec, cases: list[Case], opts: RunOptions, on_event: Emit) -> dict[str, Any] | None:
    """The cases' configurations compiled on every core before the lanes start (local sweeps:
    workbench.run.compile_ahead), its notes as the sweep's; what it did, for the summary."""
    from workbench.run.compile_ahead import compile_ahead

    return compile_ahead(ws, spec, cases, opts.fixtures, opts.arch, on_note=lambda text: on_event(SweepEvent("note", text=text)))


def sweep(
    ws: Workspace,
    spec,
    cases: list[Case],
    opts: RunOptions,
    *,
    gpus: tuple[str, ...] | None = None,
    hosts: list | None = None,
    slurm: str | None = None,
    slurm_jobs: int | None = None,
    slurm_opts: dict[str, Any] | None = None,
    on_event: Emit = lambda e: None,
    executor=None,
) -> dict[str, Any]:
    """Run the cases, telling `on_event` what happens (SweepEvent); return the summary (also
    written beside the stage report)."""
    ensure_runs_dir(ws.runs_dir)  # one line now, not every case failing on it
    if not hosts and not slurm:
        _socket_dir()  # where the lanes' workers listen: likewise
    sweep_id = new_sweep_id(ws)
    started = datetime.now().isoformat(timespec="seconds")
    ahead = None
    if slurm:
        lanes_text = [f"slurm:{slurm}"]
        results = run_slurm(ws, spec, cases, opts, sweep_id, on_event, slurm, slurm_jobs, slurm_opts, executor)
    else:
        lanes = host_lanes(ws, hosts, gpus, lambda text: on_event(SweepEvent("note", text=text))) if hosts else local_lanes(gpus)
        lanes_text = [lane.name for lane in lanes]
        on_event(SweepEvent("note", text=f"{len(cases)} case(s) on {len(lanes)} lane(s): {', '.join(lanes_text)}"))
        if not hosts:
            ahead = _compile_ahead(ws, spec, cases, opts, on_event)
        results = run_lanes(ws, spec, cases, lanes, opts, sweep_id, on_event)
    summary = summarize(ws, spec, cases, results, sweep_id, lanes_text, started)
    summary["compile_ahead"] = ahead  # (wb sweep --json)
    try:
        sweep_path, stage_path = write_summary(ws, spec, summary)
        summary["sweep_report"], summary["report"] = str(sweep_path), str(stage_path)
    except UserError as exc:  # the cases' records are written: the table still shows, a warning says why no report
        warnings.warn(f"sweep report not written: {exc}")
        summary["sweep_report"] = summary["report"] = None
    return summary
