"""The worker process: runs jobs sent by the supervisor, in its own process group.

    python -m workbench.run.worker --socket PATH [--idle SECONDS] [--once] [--pidfile PATH]

It binds the socket first (so the supervisor can connect at once), then imports torch
and the DSL, and serves one connection at a time. `--once` exits after one job (a fresh
worker per run); otherwise it exits after `--idle` seconds without a job. After a CUDA
error the context is unusable, so the worker answers and exits; the supervisor replaces it.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

from workbench import compare
from workbench.compile.compiler import compile_stage
from workbench.compile.job import CompileJob
from workbench.diagnose import add_run_evidence, run_diagnosis
from workbench.errors import UserError
from workbench.kernels import fixtures as fixture_registry
from workbench.kernels.registry import forget_stage_modules, load_kernel
from workbench.kernels.stage import RUN_METHODS, Params, Stage, TensorSpec, torch_dtype
from workbench.processes import NO_SENTINEL_ENV, TOKEN_ENV, kill_token, same_process, starttime
from workbench.run import procs, protocol
from workbench.run.sanitize import NO_POISON_ENV
from workbench.text import cut_middle
from workbench.workspace import Workspace

Emit = Callable[[dict[str, Any]], None]
_PIDFILE: "procs.PidFile | None" = None


def environment() -> dict[str, Any]:
    """Versions and the GPU this worker sees (for the run record's provenance)."""
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0], "gpu": None,
                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        from importlib.metadata import version

        info["dsl"] = version("nvidia-cutlass-dsl")
    except Exception:
        info["dsl"] = None
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = props.name
        info["compute_capability"] = f"{props.major}.{props.minor}"
        info["sm_count"] = props.multi_processor_count
        info["gpu_uuid"] = gpu_uuid(props)
        info["gpu_count"] = torch.cuda.device_count()
        info["driver"] = _nvidia_driver_version()
        info["cuda_runtime"] = torch.version.cuda
    return info


def gpu_uuid(props) -> str | None:
    """The card's UUID as nvidia-smi -L prints it (GPU-xxxxxxxx-...), from torch's device
    properties; None where torch does not give one. It names the card among several, whatever
    CUDA_VISIBLE_DEVICES renumbered."""
    uuid = getattr(props, "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _nvidia_driver_version() -> str | None:
    """The kernel driver's version, e.g. 580.159.04 (Linux), without NVML."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
    return match.group(1) if match else None


def user_location(exc: BaseException, roots: list[Path]) -> str | None:
    """file:line of the innermost traceback frame inside the user's stage code."""
    best = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        try:
            path = Path(filename).resolve()
        except OSError:
            path = None
        if path is not None and any(root in path.parents for root in roots):
            best = f"{path}:{tb.tb_lineno}"
        tb = tb.tb_next
    if best is None and exc.__cause__ is not None and exc.__cause__ is not exc:
        return user_location(exc.__cause__, roots)
    return best


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


#: an error's message and traceback as a record keeps them: a stage may raise a message of
#: megabytes (run.json refused it, and the run dropped out of history; shipping it took so long
#: that a --timeout read HANG)
ERROR_TEXT_MAX = 64 << 10


def error_info(exc: BaseException, roots: list[Path]) -> dict[str, Any]:
    # DSL errors render with terminal colours and a leading newline; records keep plain text.
    message = _ANSI.sub("", cut_middle(str(exc), ERROR_TEXT_MAX)).strip() or type(exc).__name__
    return {
        "type": type(exc).__name__,
        "message": message,
        "location": getattr(exc, "location", None) or user_location(exc, roots),
        "traceback": _ANSI.sub("", cut_middle("".join(traceback.format_exception(exc)), 4 * ERROR_TEXT_MAX)),
    }


class Job:
    """One `wb run` inside the worker: compile per variant set, run every fixture."""

    def __init__(self, job: dict[str, Any], emit: Emit):
        self.job = job
        self.emit = emit
        self.must_exit = False
        self.exported = None  # wb run --exported: the exported op (workbench.export.exported)

    def execute(self) -> dict[str, Any]:
        if self.job.get("kind") == "compile":  # wb shapes / wb compile: compile only, no torch
            compile_job = CompileJob(self.job, self.emit)
            result = compile_job.execute()
            self.must_exit = compile_job.must_exit
            return result
        if self.job.get("kind") == "export":  # wb export: the stage's code out of wb's process
            from workbench.export.job import ExportJob

            export_job = ExportJob(self.job, self.emit)
            self.must_exit = export_job.must_exit
            return export_job.execute()
        import torch

        job = self.job
        ws = Workspace(Path(job["workspace"]))
        ws.activate()
        forget_stage_modules()
        forget_fixture_modules()
        kernel = load_kernel(ws.stages_dir / job["kernel"] / "kernel.yaml")
        spec = kernel.stage(job["letter"])
        if spec is None:
            raise UserError(f"kernel {job['kernel']} has no stage {job['letter']!r}")
        roots = user_roots(ws.root)
        result: dict[str, Any] = {"env": environment(), "fixtures": [], "shapes": [], "compiles": []}
        self.emit({"type": "progress", "phase": "env", "env": result["env"]})  # a HANG record still names the card

        try:
            stage = spec.load()
        except UserError:
            raise
        except Exception as exc:
            return {**result, "verdict": "COMPILE_ERROR", "error": error_info(exc, roots)}
        missing = [m for m in RUN_METHODS if getattr(type(stage), m, None) is getattr(Stage, m)]
        if missing:  # Stage's own raises NotImplementedError: the run was the kernel's CRASH, naming nothing
            raise UserError(f"{spec.module_path}: {type(stage).__name__} does not define {', '.join(missing)} "
                            f"(a run calls {', '.join(RUN_METHODS)}: workbench.kernels.stage.Stage)")
        if stage.needs_gpu and not torch.cuda.is_available():
            return {**result, "verdict": "NO_GPU", "error": {"message": f"{spec.id} needs a CUDA GPU and this machine has none"}}
        device = "cuda" if stage.needs_gpu else "cpu"
        result["about"] = {"proves": stage.proves, "cannot_see": stage.cannot_see}

        registry = fixture_registry.load_fixtures(ws.fixtures_dir)
        params = Params(job["params"])
        in_specs, out_specs = stage.inputs(params), stage.outputs(params)
        for method, specs in (("inputs", in_specs), ("outputs", out_specs)):
            if not isinstance(specs, dict) or not all(isinstance(k, str) and isinstance(v, TensorSpec) for k, v in specs.items()):
                raise UserError(f"{spec.module_path}: {type(stage).__name__}.{method}() returned {type(specs).__name__}"
                                f"{'' if not isinstance(specs, dict) else ' with an entry that is no name -> TensorSpec'}: "
                                "expected a dict of name -> TensorSpec")
        if hasattr(stage, "flops"):  # one launch's FLOPs (wb profile's roofline)
            try:
                result["flops"] = float(stage.flops(params))
            except Exception:
                pass
        self.exported = None
        if job.get("exported"):  # wb run --exported DIR: the fixtures also go through the exported op
            from workbench.export.exported import ExportedOp

            self.must_exit = True  # the op stays registered in this process: no reuse
            self.exported = ExportedOp.load(job["exported"]["dir"], job["exported"]["package"])
            config = self.exported.select(params)
            result["exported"] = {**self.exported.describe(), "config": config.get("id"), "verified_by": config.get("verified_by")}
        if job.get("trace") and not hasattr(stage, "trace"):
            raise UserError(f"--trace: {spec.id} has no trace hook (Stage.trace: clock stamps per CTA, warpgroup and tile)")
        plan = self.plan(spec, registry, in_specs, job)
        if job.get("profile_peer"):  # wb profile --peers: the peer's kernels on the first fixture's inputs, not the stage's
            return self.launch_peer(job["profile_peer"], spec, plan[0], params, in_specs, device, result)
        result["fixture_notes"] = {
            f.name: {"isolates": f.isolates, "hides": f.hides} for _, cases in plan for f, _ in cases
        }

        if self.exported is not None:  # fixtures that need another compile (a variant) than the export's cannot go through it
            exported_variants = self.exported.package.MANIFEST.get("variants") or job["variants"]
            skipped = [f.name for v, cases in plan if v != exported_variants for f, _ in cases]
            plan = [(v, cases) for v, cases in plan if v == exported_variants]
            result["exported"]["skipped_fixtures"] = sorted(set(skipped))
            if not plan:
                raise UserError("--exported: every fixture asked for needs a variant the export was not compiled with")
        first_build = None
        for variants, cases in plan:
            self.emit({"type": "progress", "phase": "compile", "variants": variants})
            try:
                build = compile_stage(spec, stage, params, variants, job.get("arch"))
            except Exception as exc:  # readable trace errors carry the probes captured before them
                shapes = getattr(exc, "shapes", None) or result["shapes"]
                return {**result, "shapes": shapes, "verdict": "COMPILE_ERROR", "error": error_info(exc, roots)}
            result["compiles"].append(
                {"variants": variants, "seconds": build.seconds, "cached": build.cached, "arch": build.arch,
                 "cache": build.cache, "cold_seconds": build.cold_seconds}
            )
            if not result["shapes"]:
                result["shapes"] = build.shapes
            first_build = first_build or build
            for fixture, seed in cases:
                try:
                    result["fixtures"].append(
                        self.run_fixture(stage, spec, build, fixture, seed, params, variants, in_specs, out_specs, device)
                    )
                except UserError:
                    raise
                except Exception as exc:
                    self.must_exit = True
                    return {**result, "verdict": "CRASH", "error": error_info(exc, roots), "crashed_on": fixture.name}

        if job.get("trace"):
            try:
                result["trace"] = self.trace(stage, first_build, plan[0], params, in_specs, out_specs, device, job, job.get("arch") or spec.arch)
            except UserError:
                raise
            except Exception as exc:  # the fixtures' verdicts stand; the trace says what went wrong
                self.must_exit = True
                result["trace"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        add_run_evidence(result["fixtures"], spec.module_path.parent, params)  # what the other fixtures show
        verdicts = [f["verdict"] for f in result["fixtures"]]
        result["verdict"] = "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "FAIL"
        return result

    def launch_peer(self, peer, spec, first, params, in_specs, device, result) -> dict:
        """One launch of a peer of the stage (its kernel's peers.py make_peer) on the first
        fixture's inputs, for a tool around this worker (wb profile --peers): PASS when it ran,
        SKIPPED when it is not installed here (the message says why)."""
        import torch

        from workbench.kernels.registry import load_peers

        _variants, cases = first
        fixture, seed = cases[0]
        self.emit({"type": "progress", "phase": "peer", "fixture": fixture.name, "peer": peer})
        inputs = fixture.inputs(in_specs, params, seed, device)
        peers_module = load_peers(spec.module_path.parent)
        fn = peers_module.make_peer(peer, inputs, params) if peers_module is not None else None
        if fn is None:
            note = getattr(peers_module, "missing_note", lambda _: None)(peer) if peers_module is not None else "the kernel has no peers.py"
            return {**result, "verdict": "SKIPPED", "error": {"message": f"peer {peer} is not installed here" + (f": {note}" if note else "")}}
        if device == "cuda":  # ncu measures this range only (make_peer's warm-up call launched the kernel too)
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
        return {**result, "verdict": "PASS", "peer": peer}

    def trace(self, stage, build, first, params, in_specs, out_specs, device, job, arch) -> dict:
        """wb run --trace: the stage's traced build launched once on the first fixture's inputs;
        the timeline goes to runs/<id>/trace.json (Perfetto / Chrome trace), its summary back,
        with how many output elements differ in their bits from the untraced build's on the
        same inputs (the stamps must not change what the kernel computes)."""
        import torch

        from workbench.compare import bit_differences
        from workbench.run import timeline

        variants, cases = first
        fixture, seed = cases[0]
        self.emit({"type": "progress", "phase": "trace", "fixture": fixture.name})
        inputs = fixture.inputs(in_specs, params, seed, device)
        outputs = {name: torch.empty(ts.shape, dtype=ts.torch_dtype(), device=device) for name, ts in out_specs.items()}
        line = stage.trace(params, variants, arch, inputs, outputs)
        plain = {name: torch.empty(ts.shape, dtype=ts.torch_dtype(), device=device) for name, ts in out_specs.items()}
        if line.untraced is not None:
            line.untraced(inputs, plain)
        else:
            stage.launch(build.compiled, inputs, plain)
        if device == "cuda":
            torch.cuda.synchronize()
        differing = {name: bit_differences(outputs[name], plain[name]) for name in out_specs}
        return {"fixture": fixture.name, "bits_differing_from_untraced": differing,
                **timeline.write(line, Path(job["run_dir"]) / "trace.json")}

    def plan(self, spec, registry, in_specs, job) -> list[tuple[dict, list]]:
        """Group (fixture, seed) cases by the variants they compile with."""
        explicit = bool(job.get("fixtures"))
        names = job.get("fixtures") or spec.fixtures
        groups: dict[str, tuple[dict, list]] = {}
        for name in names:
            if not explicit and name not in registry:  # a name kernel.yaml gives: say where it is written
                try:
                    registry.variants(name)
                except UserError as exc:
                    raise UserError(f"{spec.module_path.parent / 'kernel.yaml'}: stage {spec.letter}'s fixtures: {exc}") from None
            fixture = registry.resolve(name, in_specs)
            unsupported = {} if fixture is None else {k: v for k, v in fixture.variants.items() if v not in spec.variants.get(k, ())}
            if fixture is None or unsupported:
                if explicit:
                    if fixture is None:
                        why = fixture_registry.missing_text(registry, name, in_specs)
                    else:
                        why = f"it needs variant {', '.join(f'{k}={v}' for k, v in unsupported.items())}"
                    raise UserError(f"fixture {name!r} does not apply to {spec.id}: {why}")
                continue
            variants = {**job["variants"], **fixture.variants}
            seeds = [job["seed"] + i for i in range(job.get("seeds") or fixture.seeds)]
            key = json.dumps(sorted(variants.items()))
            groups.setdefault(key, (variants, []))[1].extend((fixture, s) for s in seeds)
        if not groups:
            raise UserError(f"no fixture applies to {spec.id}")
        return list(groups.values())

    def run_fixture(self, stage, spec, build, fixture, seed, params, variants, in_specs, out_specs, device):
        import torch

        label = fixture.name if fixture.seeds == 1 else f"{fixture.name}#{seed}"
        self.emit({"type": "progress", "phase": "fixture", "fixture": label})
        inputs = fixture.inputs(in_specs, params, seed, device)
        outputs = {name: torch.empty(ts.shape, dtype=ts.torch_dtype(), device=device) for name, ts in out_specs.items()}
        poisoned = not os.environ.get(NO_POISON_ENV)  # set under compute-sanitizer initcheck
        if poisoned:
            for tensor in outputs.values():
                compare.poison(tensor)
        start = time.perf_counter()
        stage.launch(build.compiled, inputs, outputs)
        if device == "cuda":
            torch.cuda.synchronize()
        launch_seconds = time.perf_counter() - start
        differing = None
        if self.exported is not None:
            outputs, differing = self.through_exported(inputs, params, outputs, out_specs)
        lowp_dtype = torch_dtype(params["dtype"]) if "dtype" in params else torch.float32
        with reference_memory(device) as peak:
            reference = stage.reference(inputs, params, variants, torch.float32)
            reference_lowp = stage.reference(inputs, params, variants, lowp_dtype)
        metrics = {
            name: compare.metrics(outputs[name], reference[name], reference_lowp[name], spec.tolerance, poisoned)
            for name in out_specs
        }
        for name, count in (differing or {}).items():
            if count:
                metrics[name]["verdict"] = "FAIL"
                metrics[name]["reasons"] = [*metrics[name].get("reasons", []), f"the exported op's {name} differs from the in-tree kernel's in {count} elements (bits)"]
        case = {
            "fixture": fixture.name,
            "label": label,
            "seed": seed,
            "variants": variants,
            "verdict": compare.fixture_verdict(metrics),
            "outputs": metrics,
            "launch_s": launch_seconds,
            "reference_peak_bytes": peak.get("bytes"),
        }
        if differing is not None:
            case["exported_bit_differences"] = differing
        if case["verdict"] == "FAIL":
            case["diagnosis"] = self.diagnose(fixture, outputs, reference, inputs, params, variants, spec, label, poisoned)
        return case

    def through_exported(self, inputs, params, outputs, out_specs):
        """The exported op's outputs on these inputs, and per output how many elements differ
        in their bits from the in-tree kernel's (``outputs``)."""
        import torch

        from workbench.compare import bit_differences

        got = self.exported(inputs, params)
        if not isinstance(got, dict) or not all(isinstance(t, torch.Tensor) for t in got.values()):
            raise UserError(f"--exported: the op's stage_call returned {type(got).__name__}, not a dict of output tensors")
        if any(t.is_cuda for t in got.values()):
            torch.cuda.synchronize()
        missing = sorted(set(out_specs) - set(got))
        if missing:
            raise UserError(f"--exported: the op's stage_call returned no {', '.join(missing)}")
        return got, {name: bit_differences(got[name], outputs[name]) for name in out_specs}

    def diagnose(self, fixture, outputs, reference, inputs, params, variants, spec, label, poisoned=True):
        """Explain a failure with the diagnostics library (``poisoned``: as compare.metrics)."""
        try:
            return run_diagnosis(
                outputs=outputs,
                expected=reference,
                inputs=inputs,
                params=params,
                variants=variants,
                fixture=fixture.name,
                kernel_dir=spec.module_path.parent,
                picture_dir=Path(self.job["run_dir"]) if self.job.get("run_dir") else None,
                label=label,
                poisoned=poisoned,
            )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken diagnosis (sys.exit() in a kernel's mutants file too) must not hide the verdict
            from workbench.user_code import failure_text

            return {"error": f"diagnosis failed: {exc if isinstance(exc, UserError) else failure_text(exc)}"}


@contextlib.contextmanager
def reference_memory(device: str):
    """The device memory the references allocated beyond what was held before them (the
    fixture's inputs and outputs), in bytes: {"bytes": N} after the block, on a GPU."""
    out: dict[str, int] = {}
    if device != "cuda":
        yield out
        return
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    yield out
    torch.cuda.synchronize()
    out["bytes"] = torch.cuda.max_memory_allocated() - before


def forget_fixture_modules() -> None:
    fixture_registry.forget_modules()


# Job kinds a worker runs: op -> "module:Class" (imported when first used).
JOB_TYPES = {
    "run": "workbench.run.worker:Job",
    "bench": "workbench.run.bench:BenchJob",
}


def _job_class(op: str):
    import importlib

    module, _, name = JOB_TYPES[op].partition(":")
    return getattr(importlib.import_module(module), name)


def user_roots(workspace: str | Path) -> list[Path]:
    """Where a workspace's user code lives (stages/ and fixtures/), for error_info."""
    ws = Workspace(Path(workspace))
    return [ws.stages_dir.resolve(), ws.fixtures_dir.resolve()]


def handle(conn: socket.socket) -> bool:
    """Serve one connection; return False when the worker should exit afterwards."""
    keep_going = True
    for message in protocol.receive(conn):
        op = message.get("op")
        if op == "ping":
            protocol.send(conn, {"type": "pong", "pid": os.getpid(), "code": _CODE_VERSION, "home": _HOME, "token": os.environ.get(TOKEN_ENV)})
        elif op == "exit":
            return False
        elif op in JOB_TYPES:
            print(f"[wb-worker {os.getpid()}] {op} job {message.get('run_dir')} start", flush=True)
            # The job's timeout runs from here: a new worker's imports are not the kernel's time.
            protocol.send(conn, {"type": "accepted", "pid": os.getpid()})
            if _PIDFILE is not None:  # who this job is for: `wb ps` spots a job whose wb is gone
                _PIDFILE.job_started(message.get("run_dir"), procs.peer_pid(conn))
            job = _job_class(op)(message, lambda event: protocol.send(conn, event))
            with ParentWatch(conn) as watch:
                try:
                    result = job.execute()
                    reply = {"type": "result", "result": result}
                except UserError as exc:
                    reply = {"type": "user_error", "message": str(exc)}
                except Exception as exc:  # outside the job's own handlers (a stage's inputs(), ...)
                    reply = {"type": "result", "result": {"verdict": "CRASH", "error": error_info(exc, user_roots(message.get("workspace") or "."))}}
                except SystemExit as exc:  # the stage's code called sys.exit(): its run's verdict, not a dead worker
                    info = error_info(exc, user_roots(message.get("workspace") or "."))
                    info["message"] = f"the stage's code called sys.exit({exc.code!r})"
                    reply = {"type": "result", "result": {"verdict": "CRASH", "error": info}}
                    job.must_exit = True
                watch.done()  # from here a closed socket is the supervisor leaving after the answer
                protocol.send(conn, reply)
            print(f"[wb-worker {os.getpid()}] job done", flush=True)
            if _PIDFILE is not None:
                _PIDFILE.job_done()
            if job.must_exit:  # after any crash the CUDA context may be unusable: start clean
                return False
            return keep_going
    return keep_going


class ParentWatch:
    """While a job runs, the worker ends itself and its process group (the GPU memory with it)
    as soon as the wb that sent the job dies, instead of finishing a job no one will read:

      * the job's socket hangs up (the kernel closes a dead process's sockets): a thread
        polling for the hang-up kills the group within milliseconds;
      * when that wb is the worker's parent, PR_SET_PDEATHSIG makes the kernel send SIGKILL
        on its death, even while Python is stuck in a C call (cleared after the job, so a
        warm worker outlives the wb that started it between jobs).
    The pid file says `dying` first, so `wb ps` shows the worker until it is gone."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.finished = threading.Event()
        self.wake_r, self.wake_w = os.pipe()
        self.supervisor = procs.peer_pid(conn)
        self.thread = threading.Thread(target=self._watch, name="wb-parent-watch", daemon=True)

    def __enter__(self) -> "ParentWatch":
        if self.supervisor and self.supervisor == os.getppid():
            _set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != self.supervisor:  # it died before the signal was armed
                self._die("its wb died before the job started")
        self.thread.start()
        return self

    def done(self) -> None:
        """The answer is ready. Disarmed before it is sent: wb exits as soon as it has it, and
        the kernel's SIGKILL on that exit cut the worker's clean-up (its pid file, its socket)."""
        self.finished.set()
        _set_parent_death_signal(0)

    def __exit__(self, *exc) -> None:
        self.finished.set()
        os.write(self.wake_w, b"x")
        self.thread.join(5)
        os.close(self.wake_r)
        os.close(self.wake_w)
        _set_parent_death_signal(0)

    def _watch(self) -> None:
        import select

        poller = select.poll()
        hangup = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
        poller.register(self.conn.fileno(), hangup)
        poller.register(self.wake_r, select.POLLIN)
        while not self.finished.is_set():
            for fd, _ in poller.poll():
                if fd == self.conn.fileno() and not self.finished.is_set():
                    self._die(f"its wb (pid {self.supervisor}) went away during the job")

    def _die(self, why: str) -> None:
        print(f"[wb-worker {os.getpid()}] {why}: ending the job and the worker", flush=True)
        if _PIDFILE is not None:
            _PIDFILE.update(dying=why)
        kill_token(os.environ.get(TOKEN_ENV))  # what the job started outside this process group
        if os.getpgrp() == os.getpid():  # the supervisor starts each worker in a session of its own
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def _set_parent_death_signal(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG, sig) on Linux; nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


_CODE_VERSION = ""
_HOME = ""
ONCE_PARENT_POLL = 1.0  # seconds between a waiting one-run worker's looks at its wb


def serve(socket_path: str, idle: float, once: bool, pidfile: str | None, parent: dict[str, Any] | None = None) -> None:
    """Serve jobs on ``socket_path`` until ``idle`` seconds pass without one (0: no limit), or
    after one job when ``once``. ``parent``: the wb that started the worker ({pid, starttime};
    default: the process's parent). A one-run worker whose wb dies before its job arrives
    has no one to serve: it exits within a second instead of waiting out ``idle``."""
    faulthandler.enable()
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    global _CODE_VERSION, _HOME
    _CODE_VERSION = protocol.wb_code_version()  # the code this process runs, read before any job
    _HOME = protocol.folder_identity(os.getcwd())  # the workspace it serves (spawned there)
    # Bind and listen under a private name, then rename: the socket appears only when it
    # accepts connections (the supervisor waits for the path to exist).
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{socket_path}.{os.getpid()}.tmp"
    server.bind(staging)
    server.listen(4)
    os.replace(staging, socket_path)
    socket_inode = os.stat(socket_path).st_ino
    parent = parent or procs.parent_identity()
    global _PIDFILE
    if pidfile:  # see workbench.run.procs: one file per process, with its start time
        _PIDFILE = procs.PidFile(
            procs.pidfile_for(pidfile, os.getpid()), "once-worker" if once else "warm-worker",
            socket=socket_path, idle=idle, parent=parent, token=os.environ.get(TOKEN_ENV),
        )
    watch_parent = once and parent is not None and parent.get("starttime") is not None
    sentinel = _start_sentinel()
    try:
        _preload()
        idle_since = time.monotonic()
        while True:
            wait = idle - (time.monotonic() - idle_since) if idle > 0 else None
            if wait is not None and wait <= 0:
                break
            if watch_parent:
                wait = ONCE_PARENT_POLL if wait is None else min(wait, ONCE_PARENT_POLL)
            server.settimeout(wait)
            try:
                conn, _ = server.accept()
            except socket.timeout:
                if watch_parent and not same_process(parent["pid"], parent["starttime"]):
                    print(f"[wb-worker {os.getpid()}] its wb (pid {parent['pid']}) died before sending the job: exiting", flush=True)
                    break
                continue
            with conn:
                conn.settimeout(None)
                if not handle(conn) or once:
                    break
            idle_since = time.monotonic()
            if _PIDFILE is not None:
                _PIDFILE.update(last_active=time.time())
    finally:
        if sentinel is not None:  # a normal exit: nothing to sweep
            sentinel.kill()
            sentinel.wait()
        server.close()
        if _PIDFILE is not None:
            _PIDFILE.remove()
        try:  # a newer worker may have taken the socket path over: leave its socket alone
            if os.stat(socket_path).st_ino == socket_inode:
                os.unlink(socket_path)
        except FileNotFoundError:
            pass


def _start_sentinel():
    """The worker's sentinel (run/sentinel.py, a session of its own): it ends this process group
    and what carries the worker's token should the worker die without doing so (the
    parent-death SIGKILL, the OOM killer). None without a token or pidfds (not Linux >= 5.3), and under a
    wrapping tool (compute-sanitizer, ncu: they follow child processes into their logs)."""
    import subprocess

    token = os.environ.get(TOKEN_ENV)
    if not token or not hasattr(os, "pidfd_open") or os.environ.get(NO_SENTINEL_ENV):
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(__file__).with_name("sentinel.py")), str(os.getpid()), token,
             str(starttime(os.getpid()))],  # with the pid, what names this worker and no later process
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None, close_fds=True, start_new_session=True,
        )
    except OSError:
        return None


def _preload() -> None:
    """Import the heavy libraries while the supervisor is still sending the job:
    WB_WORKER_PRELOAD=dsl for compile-only jobs (wb shapes: no torch), torch for a stage
    that runs on the CPU (plain PyTorch: no DSL), else both. A later job that needs what was
    not preloaded imports it then."""
    preload = os.environ.get("WB_WORKER_PRELOAD", "all")
    if preload != "dsl":
        import torch  # noqa: F401

    if preload == "torch":
        return
    try:
        import cutlass  # noqa: F401
        import cutlass.cute  # noqa: F401
    except Exception:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="wb worker (started by wb; not for direct use)")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle", type=float, default=600.0)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--pidfile")
    parser.add_argument("--parent", type=_parent_arg, help="PID:STARTTIME of the wb the worker serves")
    args = parser.parse_args(argv)
    serve(args.socket, args.idle, args.once, args.pidfile, args.parent)


def _parent_arg(text: str) -> dict[str, Any]:
    pid, _, start = text.partition(":")
    return {"pid": int(pid), "starttime": int(start) if start.isdigit() else None}


if __name__ == "__main__":
    main()
