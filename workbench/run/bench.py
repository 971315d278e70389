"""`wb bench`: time a stage against its peers on the same inputs, in one worker process.

Runs inside the worker (op "bench"). For each case: make inputs with the `random`
fixture, compile (cached), check correctness on exactly those inputs with the tolerance
rule (a wrong kernel has no speed), then time it and its peers with wb's timer (timing.py:
CUDA events, L2 flushed, repeat by repeat in turn). Peers come from the kernel's own
`peers.py` (e.g. torch SDPA backends, FlashAttention-4) and run on the same tensors.
TFLOP/s use the stage's `flops(params)`. On the host: the cases planned from kernel.yaml
and the -p axes, the job sent to one or several workers (merge_processes), the record
written; what the record says (ratios, clock notes, MEMORY.md, the perf doc) is
bench_report.py's.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from workbench import compare, settings
from workbench.compile.compiler import compile_stage
from workbench.errors import UserError
from workbench.kernels import fixtures as fixture_registry
from workbench.kernels.registry import at_default, forget_stage_modules, kernel_module, load_kernel, load_peers
from workbench.kernels.stage import Params, torch_dtype
from workbench.records.provenance import git_state, record_provenance
from workbench.records.publish import commit
from workbench.records.store import new_record, new_run_dir, utc_now
from workbench.run.bench_report import record_speed
from workbench.run.execute import worker_result
from workbench.run.supervisor import run_job
from workbench.run.timing import card_peak_tflops, time_cuda, time_cuda_interleaved
from workbench.run.worker import environment, error_info, forget_fixture_modules
from workbench.workspace import Workspace


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
