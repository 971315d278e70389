"""`wb bench`: time a stage against its peers on the same inputs, in one worker process.

Runs inside the worker (op "bench"). For each case: make inputs with the `random`
fixture, compile (cached), check correctness on exactly those inputs with the tolerance
rule (a wrong kernel has no speed), then time with CUDA events: warm-up, many repeats,
L2 flushed before each repeat, median and spread; small cases replay a CUDA graph of
several launches so launch overhead does not hide the kernel. Peers come from the
kernel's own `peers.py` (e.g. torch SDPA backends, FlashAttention-4) and are timed the
same way on the same tensors. TFLOP/s use the stage's `flops(params)`; the card's dense
bf16 matmul peak is measured once per card and cached in $WB_HOME.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from workbench import compare, settings
from workbench.compile.compiler import compile_stage
from workbench.errors import UserError
from workbench.kernels import fixtures as fixture_registry
from workbench.kernels.registry import at_default, forget_stage_modules, kernel_module, load_kernel, load_peers
from workbench.kernels.stage import Params, torch_dtype
from workbench.records import memory
from workbench.records.provenance import git_state, record_provenance
from workbench.records.publish import commit
from workbench.records.speed import measured, speed_edit
from workbench.records.store import new_record, new_run_dir, select, utc_now
from workbench.run.execute import worker_result
from workbench.run.supervisor import run_job
from workbench.run.worker import environment, error_info, forget_fixture_modules
from workbench.workspace import Workspace

L2_FLUSH_BYTES = 256 << 20  # several times the H100/H200 L2 (50 MiB)
GRAPH_BELOW_MS = 0.05  # kernels shorter than this are timed by CUDA-graph replay
SLEEP_CYCLES_PER_REP = 1_000_000  # GPU clocks queued ahead per repeat (~0.5 ms; see _event_times)


def wb_home() -> Path:
    return settings.wb_home() or Path.home() / ".cache" / "wb"


@dataclass
class Runner:
    """One kernel made ready to time: what a repeat runs (``fn``, or a CUDA graph's replay of
    ``per_call`` launches of it), and why no graph where one was tried."""

    run: Callable[[], Any]
    per_call: int = 1
    graph: bool = False
    graph_error: str | None = None


def _warm(fn: Callable[[], Any], warmup: int) -> None:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()


def _prepare(fn: Callable[[], Any], scratch, graph: str) -> Runner:
    """Short kernels (or ``graph="on"``) get a CUDA graph of several launches so launch
    overhead does not hide the kernel."""
    import torch

    probe_ms = _event_times([fn], 3, scratch)[0]
    if not (graph == "on" or (graph == "auto" and statistics.median(probe_ms) < GRAPH_BELOW_MS)):
        return Runner(fn)
    per_graph = 20
    try:
        g = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
            torch.cuda.synchronize()
            with torch.cuda.graph(g, stream=stream):
                for _ in range(per_graph):
                    fn()
        torch.cuda.current_stream().wait_stream(stream)
        g.replay()  # a capture that cannot replay falls back here, not in the timed loop
        torch.cuda.synchronize()
    except Exception as exc:  # some launches cannot be captured; fall back to plain events
        return Runner(fn, graph_error=f"{type(exc).__name__}: {exc}")
    return Runner(g.replay, per_graph, True)


def _timing(runner: Runner, times: list[float], flush: bool, clock: dict[str, Any]) -> dict[str, Any]:
    times = sorted(t / runner.per_call for t in times)
    out = {
        "median_ms": statistics.median(times),
        "min_ms": times[0],
        "p10_ms": times[len(times) // 10],
        "p90_ms": times[(len(times) * 9) // 10],
        "reps": len(times),
        "graph": runner.graph,
        "l2_flushed": flush,
    }
    if runner.graph_error:
        out["graph_error"] = runner.graph_error
    if clock:
        out["clock"] = dict(clock)
    return out


def _scratch(flush: bool):
    import torch

    return torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda") if flush else None


def time_cuda(fn: Callable[[], Any], reps: int = 30, warmup: int = 5, flush: bool = True, graph: str = "auto") -> dict[str, Any]:
    """Median/spread of `fn` in milliseconds, timed with CUDA events around each call; ``clock``:
    the SM clock while the repeats ran (clocks.py), where NVML reads it."""
    _warm(fn, warmup)  # (a kernel that fails, fails here: before any GPU memory is taken)
    scratch = _scratch(flush)
    runner = _prepare(fn, scratch, graph)
    clock: dict[str, Any] = {}
    times = _event_times([runner.run], reps, scratch, clock)[0]
    return _timing(runner, times, flush, clock)


def time_cuda_interleaved(fns: dict[str, Callable[[], Any]], reps: int = 30, warmup: int = 5, flush: bool = True,
                          graph: str = "auto") -> dict[str, dict[str, Any]]:
    """``time_cuda`` of several kernels at once, repeat by repeat in turn (A B C A B C ...): a
    clock that drifts or a power cap that engages while they are timed falls on each alike,
    where timed one after the other the later ones met the card as the earlier ones left it.
    Each gets the same ``clock`` (one sampling over all repeats)."""
    for fn in fns.values():
        _warm(fn, warmup)
    scratch = _scratch(flush)
    runners = {name: _prepare(fn, scratch, graph) for name, fn in fns.items()}
    clock: dict[str, Any] = {}
    times = _event_times([r.run for r in runners.values()], reps, scratch, clock)
    return {name: {**_timing(r, t, flush, clock), "interleaved": True} for (name, r), t in zip(runners.items(), times)}


def _event_times(fns: list[Callable[[], Any]], reps: int, scratch, clock: dict[str, Any] | None = None) -> list[list[float]]:
    """Each repeat's CUDA-event time (ms) of each of ``fns``, run in turn within each repeat;
    ``clock``, when given, gets the SM clock's summary over the repeats (clocks.summarize)
    where NVML reads it."""
    import torch

    # A GPU-side wait queued first lets the CPU enqueue every repeat before the GPU gets to
    # them. Without it a kernel shorter than its own launch's CPU time (a Python DSL launch
    # of a short case) was timed with part of that CPU time in it, in some repeats and not
    # others: e.g. one of fmha's read 137 us or 170-220 us (kernel span 136 us).
    torch.cuda._sleep(SLEEP_CYCLES_PER_REP * reps * len(fns))
    pairs: list[list[tuple[Any, Any]]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, mine in zip(fns, pairs):
            if scratch is not None:
                scratch.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            mine.append((start, end))
    sampler = _clock_sampler(pairs[0][0][0], pairs[-1][-1][1]) if clock is not None else None
    torch.cuda.synchronize()
    if sampler is not None:
        clock.update(sampler.stop() or {})
    return [[s.elapsed_time(e) for s, e in mine] for mine in pairs]


def _clock_sampler(first_start, last_end):
    """A started ClockSampler over the enqueued repeats (the GPU is still in the queued sleep:
    the host enqueues faster than it runs), or None without NVML."""
    import torch

    from workbench.run import clocks

    device = torch.cuda.current_device()
    if device not in _NVML:
        _NVML[device] = clocks.for_current_device()
    nvml = _NVML[device]
    if nvml is None:
        return None
    return clocks.ClockSampler(nvml, begun=first_start.query, ended=last_end.query,
                               setup=lambda: torch.cuda.set_device(device)).start()


_NVML: dict[int, Any] = {}  # device index -> clocks.Nvml or None, once per worker process


# dense bf16 tensor-core TFLOP/s on NVIDIA's datasheets (boost clocks; `wb bench` measures
# what a card sustains: 814 on an H200): the roofline's compute roof where none was measured
DATASHEET_BF16_TFLOPS = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H200": 989.4, "NVIDIA H100 PCIe": 756.0}


def known_peak_tflops(card: str | None) -> float | None:
    """The dense bf16 matmul TFLOP/s `wb bench` measured on this card earlier (no GPU work)."""
    try:
        entry = json.loads((wb_home() / "peak.json").read_text()).get(card or "")
        return float(entry["tflops"]) if entry else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def card_peak_tflops(refresh: bool = False) -> dict[str, Any]:
    """Dense bf16 matmul TFLOP/s of this card, measured once and cached per card name."""
    import torch

    name = torch.cuda.get_device_name()
    cache = wb_home() / "peak.json"
    known = {}
    if cache.exists():
        try:
            known = json.loads(cache.read_text())
        except ValueError:
            known = {}
    if name in known and not refresh:
        return {**known[name], "cached": True}
    size = 8192
    a = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    timing = time_cuda(lambda: torch.matmul(a, b), reps=20, warmup=5, flush=False, graph="off")
    tflops = 2 * size**3 / (timing["median_ms"] * 1e-3) / 1e12
    entry = {"tflops": tflops, "shape": [size, size, size], "measured": time.strftime("%Y-%m-%d")}
    known[name] = entry
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known, indent=2))
    return {**entry, "cached": False}


def case_name(params: dict[str, Any], keys: list[str] | None = None) -> str:
    """`k=v ...` of a case: the keys in `keys` order (kernel.yaml `bench.case_keys`), then the rest."""
    order = [k for k in keys or [] if k in params] + [k for k in params if k not in (keys or [])]
    return " ".join(f"{k}={params[k]}" for k in order)


class BenchJob:
    """One `wb bench` inside the worker."""

    def __init__(self, job: dict[str, Any], emit: Callable[[dict], None]):
        self.job = job
        self.emit = emit
        self.must_exit = False

    def execute(self) -> dict[str, Any]:
        import torch

        job = self.job
        ws = Workspace(Path(job["workspace"]))
        ws.activate()
        forget_stage_modules()
        forget_fixture_modules()
        spec = load_kernel(ws.stages_dir / job["kernel"] / "kernel.yaml").stage(job["letter"])
        stage = spec.load()
        if not torch.cuda.is_available():
            return {"verdict": "NO_GPU", "error": {"message": "wb bench needs a CUDA GPU and this machine has none"}}
        if not hasattr(stage, "flops"):
            raise UserError(f"{spec.id} does not define flops(params): wb bench cannot compute TFLOP/s for it")
        registry = fixture_registry.load_fixtures(ws.fixtures_dir)
        registry.variants("random")  # an unknown name fails before any compile
        peers_module = load_peers(spec.module_path.parent)
        wanted_peers = job.get("peers") or []
        for key, value in (job.get("peer_env") or {}).items():  # this run's, not the warm worker's start
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        roots = [ws.stages_dir.resolve()]
        self.emit({"type": "progress", "phase": "peak"})
        peak = card_peak_tflops()
        result: dict[str, Any] = {"env": environment(), "peak": peak, "cases": [], "notes": []}
        if job.get("interleave") and wanted_peers:
            result["notes"].append("wb and its peers timed repeat by repeat in turn, each after the same L2 flush (--no-interleave: one after the other)")
        if wanted_peers and peers_module is None:
            result["notes"].append(f"{spec.id} has no peers.py: no peer timed")
        for planned in job["cases"]:
            params = Params(planned["params"])
            name = planned["name"]
            self.emit({"type": "progress", "phase": "case", "case": name})
            case: dict[str, Any] = {"case": name, "row": planned.get("row"), "column": planned.get("column", "n"),
                                    "params": dict(params), "flops": stage.flops(params)}
            try:
                build = compile_stage(spec, stage, params, job["variants"], job.get("arch"))
            except Exception as exc:
                case.update(verdict="COMPILE_ERROR", error=error_info(exc, roots))
                result["cases"].append(case)
                continue
            case["compile_s"], case["compile_cached"] = build.seconds, build.cached
            in_specs, out_specs = stage.inputs(params), stage.outputs(params)
            fixture = fixture_registry.get_fixture(registry, "random", in_specs)  # the stage's inputs pick the variant
            inputs = fixture.inputs(in_specs, params, job.get("seed", 0), "cuda")
            outputs = {k: torch.empty(ts.shape, dtype=ts.torch_dtype(), device="cuda") for k, ts in out_specs.items()}
            for t in outputs.values():
                compare.poison(t)
            try:
                stage.launch(build.compiled, inputs, outputs)
                torch.cuda.synchronize()
            except Exception as exc:
                self.must_exit = True
                case.update(verdict="CRASH", error=error_info(exc, roots))
                result["cases"].append(case)
                break
            ref = stage.reference(inputs, params, job["variants"], torch.float32)
            ref_lp = stage.reference(inputs, params, job["variants"], torch_dtype(params["dtype"]))
            metrics = {k: compare.metrics(outputs[k], ref[k], ref_lp[k], spec.tolerance) for k in out_specs}
            case["check"] = {k: {m: v for m, v in x.items() if m in ("verdict", "cos", "max_abs_err", "tolerance", "reasons")} for k, x in metrics.items()}
            case["verdict"] = compare.fixture_verdict(metrics)
            if case["verdict"] != "PASS":
                case["note"] = "wrong output on the benchmarked inputs: not timed"
                result["cases"].append(case)
                continue
            launch = lambda: stage.launch(build.compiled, inputs, outputs)  # noqa: E731
            case["peers"] = {}
            made = {}
            for peer in wanted_peers:
                fn = self.make_peer(peers_module, peer, inputs, params)
                if callable(fn):
                    made[peer] = fn
                else:
                    case["peers"][peer] = fn  # why it is not timed
            timings = self.interleaved(launch, made, job) if job.get("interleave") and made else None
            timing = timings.pop("wb") if timings else time_cuda(launch, reps=job.get("reps", 30), graph=job.get("graph", "auto"))
            case.update(self.speed(timing, case["flops"]))
            case["fraction_of_peak"] = case["tflops"] / peak["tflops"]
            for peer, fn in made.items():
                case["peers"][peer] = self.speed(timings[peer], case["flops"]) if timings else self.time_peer(fn, case["flops"], job)
            case["peers"] = {peer: case["peers"][peer] for peer in wanted_peers}  # in the order asked
            result["cases"].append(case)
            inputs = outputs = None  # free the case's tensors before empty_cache
            torch.cuda.empty_cache()
        verdicts = [c.get("verdict") for c in result["cases"]]
        result["verdict"] = "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "FAIL"
        return result

    @staticmethod
    def make_peer(peers_module, peer: str, inputs, params) -> Callable[[], Any] | dict[str, Any]:
        """The peer's zero-argument run, or the record entry that says why it has none."""
        if peers_module is None:
            return {"skipped": "the kernel has no peers.py"}
        try:
            fn = peers_module.make_peer(peer, inputs, params)
        except Exception as exc:  # the whole story goes into the record: the table shows one line of it
            return {"skipped": f"{type(exc).__name__}: {exc}", "error": error_info(exc, [])}
        if fn is None:
            note = getattr(peers_module, "missing_note", lambda _: None)(peer)
            return {"skipped": f"not installed: {note}" if note else "not installed"}
        return fn

    @staticmethod
    def speed(timing: dict[str, Any], flops: float) -> dict[str, Any]:
        return {**timing, "tflops": flops / (timing["median_ms"] * 1e-3) / 1e12}

    def time_peer(self, fn: Callable[[], Any], flops: float, job) -> dict[str, Any]:
        try:
            timing = time_cuda(fn, reps=job.get("reps", 30), graph=job.get("graph", "auto"))
        except Exception as exc:
            return {"skipped": f"failed: {type(exc).__name__}: {exc}", "error": error_info(exc, [])}
        return self.speed(timing, flops)

    def interleaved(self, launch: Callable[[], Any], peers: dict[str, Callable[[], Any]], job) -> dict[str, dict[str, Any]] | None:
        """--interleave: wb and the peers timed repeat by repeat in turn; None (each then timed
        on its own, as without it) when a peer fails there: its failure is its own entry then."""
        try:
            return time_cuda_interleaved({"wb": launch, **peers}, reps=job.get("reps", 30), graph=job.get("graph", "auto"))
        except Exception:
            import torch

            try:
                torch.cuda.synchronize()
            except Exception:  # a sticky CUDA error: the peer's own timing will say it
                pass
            return None


# ------------------------------------------------------------------ host side (the wb process)


@dataclass
class BenchCase:
    """One planned case: the stage's parameters (unresolved), and the keys the kernel's
    `case_params` hook derived (hidden from MEMORY.md's speed row)."""

    params: dict[str, Any]
    derived: tuple[str, ...] = ()


def peer_names(kernel_dir: Path) -> dict[str, str] | None:
    """The kernel's peers (peers.py's PEERS: name -> one line of help), or None when it lists none."""
    module = kernel_module(kernel_dir, "peers")
    peers = getattr(module, "PEERS", None) if module is not None else None
    return dict(peers) if isinstance(peers, dict) else None


def check_peers(kernel, wanted: list[str]) -> None:
    known = peer_names(kernel.dir)
    if known is None:
        if wanted:
            raise UserError(f"kernel {kernel.name} lists no peers (stages/{kernel.name}/peers.py has no PEERS): write --peers ''")
        return
    unknown = [p for p in wanted if p not in known]
    if unknown:
        listed = "; ".join(f"{name}: {text}" for name, text in known.items())
        raise UserError(f"unknown peer {unknown[0]!r} of kernel {kernel.name}: choose from {listed}")


def peer_env(kernel_dir: Path) -> dict[str, str | None]:
    """Settings the kernel's peers read in the worker (peers.py's PEER_ENV), sent with each job:
    a warm worker may predate them."""
    module = kernel_module(kernel_dir, "peers")
    return {key: os.environ.get(key) for key in getattr(module, "PEER_ENV", ())}


def plan_cases(spec, kernel, axes: dict[str, list[str]], sweep: bool = False) -> list[BenchCase]:
    """The cases of one `wb bench`: kernel.yaml's `bench.cases` (or `bench.sweep`), each
    crossed with the -p axes (their product), then completed by the kernel's
    bench_hooks.case_params(given) -> params. Keys of kernel.yaml's cases or the hook that the
    stage does not take are dropped (a smaller stage of the same kernel), and a kernel.yaml case
    whose value the stage refuses (a head dim it does not serve) is left out; -p keys and
    values must be the stage's (``resolve_cases`` names the case; a hook that fails on a
    value it was given, or a combination that leaves no case, is named here)."""
    bases = kernel.bench.sweep if sweep else kernel.bench.cases
    if sweep and not bases:
        raise UserError(f"kernel {kernel.name} has no bench.sweep in its kernel.yaml: nothing for --sweep to time")
    hooks = kernel_module(kernel.dir, "bench_hooks")
    derive = getattr(hooks, "case_params", None)
    settings.check_case_count([len(v) for v in axes.values()], "a bench")
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())] if axes else [{}]
    cases, seen = [], set()
    for combo in combos:
        refused = None  # (key, value, reason) of the first base this combination left out
        kept = False
        for base in bases:
            given = {**base, **combo}
            try:
                params = dict(derive(dict(given))) if derive else dict(given)
            except Exception as exc:  # the hook on a value the stage refuses (n=abc, n=0): say which
                _check_combo(spec, combo)
                raise UserError(f"bench case {case_name(given)}: stages/{kernel.name}/bench_hooks.py case_params failed: "
                                f"{type(exc).__name__}: {exc}") from None
            derived = tuple(k for k in params if k not in given)
            params = {k: v for k, v in params.items() if k in combo or k in spec.params}
            reasons = [(k, v, _refusal(spec, k, v), k in derived) for k, v in params.items() if k not in combo]
            reasons = [r for r in reasons if r[2] is not None]
            if reasons:
                refused = refused or reasons[0]
                continue
            kept = True
            key = json.dumps(params, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                cases.append(BenchCase(params, tuple(k for k in derived if k in params)))
        if combo and bases and not kept and refused is not None:
            _check_combo(spec, combo)  # a refused -p value is the reason, not what the hook made of it
            key, value, reason, from_hook = refused
            given = " ".join(f"{k}={v}" for k, v in combo.items())
            how = "the kernel's bench_hooks.case_params derive" if from_hook else "kernel.yaml's bench cases give"
            raise UserError(f"-p {given} leaves no bench case: {how} {key}={value} with it, and {reason} (give -p {key}=... too)")
    return cases


def _check_combo(spec, combo: dict) -> None:
    """The -p values of one combination by the stage's rules, as ``resolve_cases`` names them."""
    try:
        spec.resolve_params(dict(combo))
    except UserError as exc:
        raise UserError(f"bench case {case_name(combo)}: {exc}") from None


def _refusal(spec, key: str, value) -> str | None:
    """Why the stage refuses ``value`` for parameter ``key`` (its one-line error), or None."""
    try:
        spec.params[key].coerce(str(value).lower() if isinstance(value, bool) else value, spec.id)
    except UserError as exc:
        return str(exc)
    return None


def speed_row(spec, resolved: dict[str, Any], case: BenchCase, name_keys: list[str], column: str = "n") -> str:
    """MEMORY.md's speed row of a case: its name without the column parameter (kernel.yaml
    `bench.column`, default n), the parameters the kernel's hook derived, and those left at
    an '=other' default (they follow the others)."""
    hidden = {column, *case.derived}
    hidden |= {k for k, p in spec.params.items() if isinstance(p.default, str) and p.default.startswith("=") and k not in case.params}
    return case_name({k: v for k, v in resolved.items() if k not in hidden}, name_keys)


def named_params(spec, resolved: dict[str, Any], quiet: list[str]) -> dict[str, Any]:
    """The parameters a case's name shows: all but the kernel.yaml `bench.quiet` ones at their
    default (so a parameter added to a stage later does not rename every recorded case)."""
    defaults = spec.defaults
    return {k: v for k, v in resolved.items() if k not in quiet or not at_default(defaults, resolved, k)}


def resolve_cases(spec, kernel, cases: list[BenchCase]) -> list[dict[str, Any]]:
    """The job's cases: resolved parameters (checked by the stage's rules), name and speed row."""
    out = []
    keys = kernel.bench.case_keys
    for case in cases:
        try:
            params = spec.resolve_params({k: str(v) if not isinstance(v, bool) else str(v).lower() for k, v in case.params.items()})
        except UserError as exc:
            raise UserError(f"bench case {case_name(case.params)}: {exc}") from None
        shown = named_params(spec, params, kernel.bench.quiet)
        out.append({"params": params, "name": case_name(shown, keys), "column": kernel.bench.column,
                    "row": speed_row(spec, shown, case, keys, kernel.bench.column)})
    return out


def _compile_ahead(ws, spec, resolved: list[dict[str, Any]], variants: dict[str, str], on_event) -> None:
    """The cases' configurations compiled on every core before the worker times them one by one
    (workbench.run.compile_ahead; a sweep of the perf doc's 44 rows compiles about 20), its
    notes as progress."""
    from types import SimpleNamespace

    from workbench.run.compile_ahead import compile_ahead

    compile_ahead(ws, spec, [SimpleNamespace(params=r["params"], variants=variants) for r in resolved], None, None,
                  on_note=lambda text: on_event({"type": "progress", "phase": "compile ahead", "text": text}))


def run_bench(ws, spec, kernel, cases: list[BenchCase], variants: dict[str, str], peers: list[str], reps: int = 30,
              graph: str = "auto", timeout: float = 600.0, on_event=lambda e: None, warm: bool = True,
              processes: int = 1, sweep: bool = False, interleave: bool = True) -> dict[str, Any]:
    """Benchmark `cases` of a stage in a worker; write the record (kind "bench") and MEMORY.md.
    ``interleave`` (as `wb bench`): wb and the peers timed repeat by repeat in turn
    (``time_cuda_interleaved``); False: one after the other.
    ``processes`` > 1: the same job in that many new workers, one after another, merged by
    ``merge_processes`` (a case whose speed depends on where a process's tensors land).
    ``sweep``: the cases are the kernel's bench.sweep (the record says so: ``recorded_sweep``)."""
    resolved = resolve_cases(spec, kernel, cases)
    git = git_state(ws.root)
    run_dir = new_run_dir(ws.runs_dir)
    started = utc_now()
    job = {"op": "bench", "workspace": str(ws.root), "kernel": spec.kernel, "letter": spec.letter, "cases": resolved,
           "variants": variants, "peers": peers, "reps": reps, "graph": graph, "run_dir": str(run_dir),
           "peer_env": peer_env(kernel.dir), "interleave": interleave}
    _compile_ahead(ws, spec, resolved, variants, on_event)
    if processes <= 1:
        outcome = run_job(ws, job, timeout, on_event, warm=warm)
        result = worker_result(outcome, run_dir)
    else:
        results = []
        for index in range(processes):
            on_event({"type": "progress", "phase": "process", "process": index + 1, "of": processes})
            outcome = run_job(ws, job, timeout, on_event, warm=False)
            result = worker_result(outcome, run_dir)
            if outcome.status != "result":  # a HANG or CRASH is the record's verdict, as with one process;
                if results:  # the processes timed before it stay in the record
                    result = merge_processes(results)
                    result["notes"].append(f"process {index + 1} of {processes}: {outcome.status}")
                break
            results.append(result)
        else:
            result = merge_processes(results)
    env = result.get("env", {})
    record = new_record(
        "bench", spec, {}, variants, result.get("verdict") if outcome.status == "result" else outcome.status,
        error=result.get("error") if outcome.status == "result" else {"message": outcome.message, "log": outcome.log_tail},
        bench=result.get("cases", []),
        bench_sweep=sweep,
        peak=result.get("peak"),
        notes=result.get("notes", []),
        timing={"total_s": None, "worker_reused": outcome.worker_reused, "worker_pid": outcome.worker_pid},
        provenance=record_provenance(ws, spec, git, env, spec.arch),
        started=started,
        finished=utc_now(),
    )
    return commit(ws, run_dir, record, publish=record_speed)


def merge_processes(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One bench result from the results of the same job in several worker processes: per case
    and per peer the median of the processes' medians (TFLOP/s from it), p10/p90 the medians of
    theirs, and ``process_medians_ms`` the list. Cases are matched by name. A case that did
    not PASS in some process is that process's case (its verdict and error), untimed; a case
    or a peer that some process did not time (it stopped before it, or the peer failed there)
    is left untimed with an error that says in how many processes it was timed. Env and peak
    are the first's."""
    first = results[0]
    merged: dict[str, Any] = {**first, "cases": [], "notes": list(first.get("notes", []))}
    names = list(dict.fromkeys(c["case"] for r in results for c in r.get("cases", [])))
    spreads = []
    for name in names:
        runs = [c for r in results for c in r.get("cases", []) if c["case"] == name]
        failed = next((c for c in runs if c.get("verdict") != "PASS" or not c.get("median_ms")), None)
        if failed is not None:
            merged["cases"].append(failed)
            continue
        if len(runs) < len(results):
            merged["cases"].append({**_untimed(runs[0]), "verdict": "ERROR",
                                    "error": f"timed in {len(runs)} of {len(results)} worker processes (a process stopped before it)"})
            continue
        case = runs[0]
        out = {**_without_clock(case), **_median_timing(runs, case["flops"]), **_merged_clock(runs)}
        if case.get("fraction_of_peak") and case.get("tflops"):
            out["fraction_of_peak"] = case["fraction_of_peak"] * out["tflops"] / case["tflops"]
        out["peers"] = {}
        for peer_name, peer in (case.get("peers") or {}).items():
            timed = [c["peers"][peer_name] for c in runs if (c.get("peers") or {}).get(peer_name, {}).get("median_ms")]
            if len(timed) == len(runs):
                out["peers"][peer_name] = {**_without_clock(peer), **_median_timing(timed, case["flops"]), **_merged_clock(timed)}
            elif not timed:  # skipped or failed in every process: as the first said
                out["peers"][peer_name] = peer
            else:
                failure = next((c["peers"].get(peer_name) for c in runs if not (c.get("peers") or {}).get(peer_name, {}).get("median_ms")), None)
                out["peers"][peer_name] = {**_untimed(peer), "error": (failure or {}).get("error")
                                           or f"timed in {len(timed)} of {len(runs)} worker processes"}
        spreads.append(f"{case['case']}: wb {min(out['process_medians_ms']):.3f}-{max(out['process_medians_ms']):.3f} ms")
        merged["cases"].append(out)
    verdicts = [c.get("verdict") for c in merged["cases"]]
    merged["verdict"] = "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "FAIL"
    merged["processes"] = len(results)
    told = f"timed in {len(results)} worker process{'es' if len(results) != 1 else ''}, the median of their medians"
    merged["notes"].append(told + ("; each process's median, lowest-highest: " + "; ".join(spreads) if spreads else "; no case was timed in all of them"))
    return merged


_TIMING = ("median_ms", "p10_ms", "p90_ms", "min_ms", "tflops", "fraction_of_peak", "process_medians_ms", "clock")


def _without_clock(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "clock"}


def _merged_clock(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' clocks as one (the median of their medians, the widest range, every
    limit seen), or no ``clock`` unless every process has one."""
    clocks = [r.get("clock") for r in runs]
    if not clocks or not all(clocks):
        return {}
    return {"clock": {
        "sm_mhz_median": statistics.median(c["sm_mhz_median"] for c in clocks),
        "sm_mhz_min": min(c["sm_mhz_min"] for c in clocks),
        "sm_mhz_max": max(c["sm_mhz_max"] for c in clocks),
        "samples": sum(c["samples"] for c in clocks),
        "limits": sorted({name for c in clocks for name in c.get("limits", [])}),
        "process_sm_mhz_medians": [c["sm_mhz_median"] for c in clocks],
    }}


def _untimed(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in _TIMING}


def _median_timing(runs: list[dict[str, Any]], flops: float) -> dict[str, Any]:
    medians = [float(r["median_ms"]) for r in runs]
    median_ms = statistics.median(medians)
    return {
        "median_ms": median_ms,
        "p10_ms": statistics.median(float(r.get("p10_ms", r["median_ms"])) for r in runs),
        "p90_ms": statistics.median(float(r.get("p90_ms", r["median_ms"])) for r in runs),
        "min_ms": min(float(r.get("min_ms", r["median_ms"])) for r in runs),
        "reps": sum(int(r.get("reps", 0)) for r in runs),
        "process_medians_ms": medians,
        "tflops": flops / (median_ms * 1e-3) / 1e12,
    }


def peer_ratios(case: dict[str, Any]) -> dict[str, float]:
    """wb's TFLOP/s over each timed peer's (above 1: wb is faster)."""
    out = {}
    for name, peer in (case.get("peers") or {}).items():
        if peer.get("tflops") and case.get("tflops"):
            out[name] = case["tflops"] / peer["tflops"]
    return out


CLOCK_APART = 0.01  # a peer timed at an SM clock this far (relative) from wb's is named


def timed_clock(entry: Any) -> tuple[float, list[str]] | None:
    """(median MHz, limits) of a timing's ``clock``; None where it has none (or a record from
    elsewhere holds something else there)."""
    clock = entry.get("clock") if isinstance(entry, dict) else None
    mhz = clock.get("sm_mhz_median") if isinstance(clock, dict) else None
    if not isinstance(mhz, (int, float)) or isinstance(mhz, bool) or not mhz > 0:
        return None
    limits = clock.get("limits")
    return float(mhz), [str(x) for x in limits] if isinstance(limits, list) else []


def _case_clocks(record: dict[str, Any]):
    """(case name, wb's (MHz, limits), the peers' {name: (MHz, limits)}, peers 1 % apart, limits)
    of each case that has wb's clock."""
    for case in record.get("bench") or []:
        ours = timed_clock(case)
        if ours is None:
            continue
        peers = case.get("peers") if isinstance(case.get("peers"), dict) else {}
        theirs = {str(n): c for n, c in ((n, timed_clock(p)) for n, p in peers.items()) if c is not None}
        apart = [n for n, c in theirs.items() if abs(c[0] - ours[0]) >= CLOCK_APART * ours[0]]
        limits = sorted({*ours[1], *(x for c in theirs.values() for x in c[1])})
        yield str(case.get("case")), ours, theirs, apart, limits


def _each_clock(name: str, ours: tuple[float, list[str]], theirs: dict[str, tuple[float, list[str]]]) -> str:
    each = ", ".join([f"wb {ours[0]:.0f}"] + [f"{n} {c[0]:.0f}" for n, c in theirs.items()])
    return f"{name}: SM clock {each} MHz (median while timed)"


def clock_notes(record: dict[str, Any]) -> list[str]:
    """One line per case whose kernels were timed at different SM clocks (1 % or more apart)
    or under a clock limit (the power cap ...): a ratio between them is partly the card's."""
    lines = []
    for name, ours, theirs, apart, limits in _case_clocks(record):
        limited = f"; limited by {', '.join(limits)}" if limits else ""
        if apart:
            lines.append(f"{_each_clock(name, ours, theirs)}{limited}")
        elif limits:
            lines.append(f"{name}: SM clock {ours[0]:.0f} MHz for {'each kernel' if theirs else 'wb'} (median while timed){limited}")
    return lines


def clock_summary(record: dict[str, Any]) -> list[str]:
    """The perf doc's clock notes: each case whose kernels ran at clocks apart, then one line
    for the cases timed under a limit."""
    cases = list(_case_clocks(record))
    lines = [_each_clock(name, ours, theirs) for name, ours, theirs, apart, _ in cases if apart]
    limited = [(ours[0], limits) for _, ours, _, _, limits in cases if limits]
    if limited:
        names = sorted({x for _, limits in limited for x in limits})
        low, high = min(m for m, _ in limited), max(m for m, _ in limited)
        lines.append(f"The card's {', '.join(names)} held its SM clock down while {len(limited)} of {len(cases)} cases were timed "
                     f"(their medians {low:.0f}-{high:.0f} MHz; each case's clock is in its record)")
    return lines


def record_speed(ws, record: dict[str, Any]) -> None:
    """Fold a bench record into MEMORY.md's `speed` block (latest per case and card); the
    record is already in runs/, so a MEMORY.md wb cannot update is a warning. With
    matplotlib, the speed chart goes beside the record (runs/<id>/speed.png)."""
    if not measured(record):
        return
    memory.update_blocks_or_warn(ws, {"speed": speed_edit([record], ws)})
    if record.get("_dir"):
        from workbench.records.charts import draw_speed_chart

        try:
            chart = draw_speed_chart(Path(record["_dir"]) / "speed.png", record, _yardsticks(ws, record))
        except Exception as exc:  # a picture must never lose a measurement
            record.setdefault("notes", []).append(f"speed chart failed: {type(exc).__name__}: {exc}")
            chart = None
        if chart is not None:
            record["_chart"] = str(chart)


def _yardsticks(ws, record: dict[str, Any]) -> tuple[str, ...]:
    """The record's kernel's bench.yardsticks (left out of "the best peer", as in the perf
    doc); none when its kernel.yaml cannot be read (a record imported from elsewhere)."""
    try:
        return tuple(load_kernel(ws.stages_dir / str(record.get("kernel")) / "kernel.yaml").bench.yardsticks)
    except (OSError, UserError, ValueError):
        return ()


def perf_doc_path(kernel, spec) -> str:
    """Where `wb bench --sweep` writes: the kernel's perf doc (bench.perf_doc) for its bench
    stage; for another stage the same name with -stage-<letter> (docs/perf-x.md ->
    docs/perf-x-stage-c.md), so timing a sub-stage never overwrites the kernel's table."""
    doc = kernel.bench.perf_doc
    if spec.letter == kernel.bench.stage:
        return doc
    stem, dot, ext = doc.rpartition(".")
    return f"{stem}-stage-{spec.letter}.{ext}" if dot else f"{doc}-stage-{spec.letter}"


def _covers_the_sweep(record: dict[str, Any], kernel) -> bool:
    """Whether every row of the kernel's bench.sweep is among the record's cases."""
    cases = [c.get("params") or {} for c in record.get("bench") or [] if isinstance(c, dict)]

    def same(a, b) -> bool:
        return str(a).lower() == str(b).lower()

    return bool(kernel.bench.sweep) and all(
        any(all(k in p and same(p[k], v) for k, v in row.items()) for p in cases) for row in kernel.bench.sweep
    )


def recorded_sweep(ws, spec, selector: str, kernel) -> dict[str, Any]:
    """The record of a `wb bench --sweep` of ``spec`` (a run selector, e.g. a run imported from
    a GPU machine), to write the kernel's perf doc from; UserError (one line) when the run is
    not one: another kind or stage, bench cases that are not the sweep, nothing timed. A
    stage in the selector (``d@last``) is one of ``kernel``'s unless it names another."""
    from workbench.kernels.registry import resolve_stage

    def stage_of(text: str) -> str:
        return resolve_stage(ws, text if "/" in text else f"{kernel.name}/{text}").id

    record = select(ws.runs_dir, selector, stage_of)
    run = f"run {record.get('id')}"
    if record.get("kind") != "bench":
        raise UserError(f"{run} is a `wb {record.get('kind')}` record, not a `wb bench --sweep` one")
    if record.get("stage") != spec.id:
        raise UserError(f"{run} timed {record.get('stage')}, not {spec.id} (the kernel's bench stage)")
    # a record of a wb before the bench_sweep field is the sweep when its cases hold every row of it
    if record.get("bench_sweep") is False or (record.get("bench_sweep") is None and not _covers_the_sweep(record, kernel)):
        raise UserError(f"{run} timed bench cases, not the kernel's sweep (`wb bench --sweep`): its perf doc would be partial")
    from workbench.records.charts import speed  # NaN, inf, -5, 1e308: read by the schema, no speed

    if record.get("verdict") not in ("PASS", "FAIL") or not any(speed(c.get("tflops")) for c in record.get("bench") or []):
        raise UserError(f"{run} ({record.get('verdict')}) timed no case: no perf doc to write from it")
    return record


def write_perf_doc(ws, kernel, spec, record: dict[str, Any]):
    """Write the kernel's perf doc (bench.perf_doc) and its speed chart beside it from a bench
    record; the doc's path."""
    from workbench.files import atomic_write_text, blocked_folder
    from workbench.records.charts import draw_speed_chart

    perf = ws.root / perf_doc_path(kernel, spec)
    perf_markdown(record, kernel)  # what the record lacks fails here, before the chart is replaced
    for path in (perf, perf.with_suffix(".png")):  # checked before either is replaced
        _refuse_wb_owned(ws, path)
        if os.path.exists(path) and not os.path.isfile(path):
            raise UserError(f"cannot write {path.relative_to(ws.root)}: it is a folder or no plain file; move it away")
    blocked = blocked_folder(perf)
    if blocked:  # (docs a file: the chart's mkdir was a FileExistsError traceback)
        raise UserError(f"cannot write {perf.relative_to(ws.root)}: {blocked}")
    chart = draw_speed_chart(perf.with_suffix(".png"), record, tuple(kernel.bench.yardsticks))
    atomic_write_text(perf, perf_markdown(record, kernel, chart.name if chart else None), follow_link=True)
    return perf


def _refuse_wb_owned(ws, path: Path) -> None:
    """kernel.yaml's bench.perf_doc may name any .md of the workspace: MEMORY.md, a run's
    report.md or a stage module's folder would be overwritten by the table (MEMORY.md's
    lessons were lost so, exit 0). The path and, through a link, its target are checked."""
    owned_files = {os.path.realpath(p) for p in (ws.memory_path, memory.data_path(ws.memory_path))}
    owned_dirs = [os.path.realpath(d) for d in (ws.runs_dir, ws.state_dir, ws.stages_dir)]
    for where in {os.path.abspath(path), os.path.realpath(path)}:
        if where in owned_files or any(where == d or where.startswith(d + os.sep) for d in owned_dirs):
            raise UserError(
                f"kernel.yaml bench.perf_doc: {path.relative_to(ws.root)} is wb's own (MEMORY.md, MEMORY.json,"
                " runs/, .wb/, stages/): name a file of its own, e.g. docs/perf.md"
            )


def perf_markdown(record: dict[str, Any], kernel, chart: str | None = None) -> str:
    """The kernel's perf doc (kernel.yaml `bench.perf_doc`): a table with a column per
    `bench.columns` parameter, per peer, and wb's stage, generated by wb; ``chart``: the
    speed chart's file name beside it (workbench.records.charts), embedded under the table."""
    from workbench.records.charts import best_peer, speed

    prov = record.get("provenance") or {}
    cases = record.get("bench", [])
    peers = sorted({p for c in cases for p in (c.get("peers") or {})})
    columns = kernel.bench.columns or list(dict.fromkeys(k for c in kernel.bench.sweep for k in c))
    columns = columns or list(dict.fromkeys(k for c in cases for k in c.get("params", {})))
    title = kernel.bench.title or f"{kernel.title} speed"
    spec = kernel.stage(record.get("letter") or kernel.bench.stage)

    cell = memory.cell  # every value a record brings is one safe table cell or line

    def other(p: dict) -> str:  # the bench.quiet parameters a case sets away from their default
        return " ".join(f"{k}={cell(p[k])}" for k in kernel.bench.quiet if spec is not None and k in p and not at_default(spec.defaults, p, k))

    extra = ["other"] if any(other(c.get("params", {})) for c in cases) else []
    out = [
        f"# {title} (generated by `wb bench --sweep`)",
        "",
        f"Card: {cell(prov.get('gpu') or 'unknown (the record names none)')} · measured {cell(str(record.get('started'))[:10])} · run `{cell(record.get('id'))}` · commit `{cell((prov.get('commit') or '')[:10])}`"
        + (" (dirty)" if prov.get("dirty") else ""),
        f"Versions: wb {cell(prov.get('wb'))}, CuTe DSL {cell(prov.get('dsl'))}, torch {cell(prov.get('torch'))}, driver {cell(prov.get('driver'))}",
        f"Card's dense bf16 matmul: {speed((record.get('peak') or {}).get('tflops')) or 0:.0f} TFLOP/s (measured by wb, cached per card).",
        "",
        (kernel.bench.note + " " if kernel.bench.note else "")
        + "Median of CUDA-event timings, "
        + ("wb and its peers timed repeat by repeat in turn (one power and clock state for all), " if any(c.get("interleaved") for c in cases) else "")
        + "L2 flushed before each repeat; every kernel checked against the stage's reference on the same inputs before timing.",
        "",
        # (one list of cells: a sweep without parameter columns gave a header one cell wider than its rule)
        "| " + " | ".join([*columns, *extra, *map(cell, peers), f"wb {cell(record['stage'])}", "wb / best peer"]) + " |",
        "|" + "---|" * (len(columns) + len(extra) + len(peers) + 2),
    ]
    for c in cases:
        p = c.get("params", {})
        cells = []
        for name in peers:
            t = speed(((c.get("peers") or {}).get(name) or {}).get("tflops"))
            cells.append(f"{t:.0f}" if t else "skipped")
        best = best_peer(c, tuple(kernel.bench.yardsticks))
        mine = speed(c.get("tflops"))
        wb = f"{mine:.0f}" if mine else cell(c.get("verdict", "-"))
        ratio = "-" if not (mine and best) else f"×{mine / best:.2f}" if mine / best < 1000 else f"×{mine / best:.3g}"  # (a peer at 1e-300: 300 digits)
        given = [("yes" if p[k] else "no") if isinstance(p.get(k), bool) else cell(p.get(k, "-")) for k in columns]
        given += [other(p) or "-"] if extra else []
        out.append("| " + " | ".join([*given, *cells, wb, ratio]) + " |")
    if chart:
        out += ["", f"![TFLOP/s per case beside the peers, and the card's dense matmul peak]({chart})"]
    notes = record.get("notes") or []
    skipped = sorted({f"{name}: {peer['skipped']}" for c in cases for name, peer in (c.get("peers") or {}).items() if peer.get("skipped")})
    clocks = clock_summary(record)
    if notes or skipped or clocks:
        out += ["", "Notes:", ""] + [f"- {cell(n, 2000)}" for n in [*notes, *skipped, *clocks]]
    out.append("")
    return "\n".join(out)
