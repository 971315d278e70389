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

import importlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from workbench import compare
from workbench.compile.compiler import compile_stage
from workbench.errors import UserError
from workbench.kernels import fixtures as fixture_registry
from workbench.kernels.registry import forget_stage_modules, load_kernel
from workbench.kernels.stage import Params, torch_dtype
from workbench.records import memory
from workbench.records.provenance import git_state, record_provenance, short_commit
from workbench.records.publish import commit
from workbench.records.store import new_record, new_run_dir, utc_now
from workbench.run.execute import worker_result
from workbench.run.supervisor import run_job
from workbench.run.worker import environment, error_info, forget_fixture_modules
from workbench.workspace import Workspace

L2_FLUSH_BYTES = 256 << 20  # several times the H100/H200 L2 (50 MiB)
GRAPH_BELOW_MS = 0.05  # kernels shorter than this are timed by CUDA-graph replay
SLEEP_CYCLES_PER_REP = 1_000_000  # GPU clocks queued ahead per repeat (~0.5 ms; see _event_times)


def wb_home() -> Path:
    return Path(os.environ.get("WB_HOME") or Path.home() / ".cache" / "wb")


def time_cuda(fn: Callable[[], Any], reps: int = 30, warmup: int = 5, flush: bool = True, graph: str = "auto") -> dict[str, Any]:
    """Median/spread of `fn` in milliseconds, timed with CUDA events around each call."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    scratch = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda") if flush else None
    probe_ms = _event_times(fn, 3, scratch)
    use_graph = graph == "on" or (graph == "auto" and statistics.median(probe_ms) < GRAPH_BELOW_MS)
    if use_graph:
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
            times = [t / per_graph for t in _event_times(g.replay, reps, scratch)]
        except Exception as exc:  # some launches cannot be captured; fall back to plain events
            times = _event_times(fn, reps, scratch)
            use_graph = False
            graph_error = f"{type(exc).__name__}: {exc}"
        else:
            graph_error = None
    else:
        times = _event_times(fn, reps, scratch)
        graph_error = None
    times.sort()
    out = {
        "median_ms": statistics.median(times),
        "min_ms": times[0],
        "p10_ms": times[len(times) // 10],
        "p90_ms": times[(len(times) * 9) // 10],
        "reps": len(times),
        "graph": use_graph,
        "l2_flushed": flush,
    }
    if graph_error:
        out["graph_error"] = graph_error
    return out


def _event_times(fn: Callable[[], Any], reps: int, scratch) -> list[float]:
    import torch

    # A GPU-side wait queued first lets the CPU enqueue every repeat before the GPU gets to
    # them. Without it a kernel shorter than its own launch's CPU time (a Python DSL launch
    # of a short causal case) was timed with part of that CPU time in it, in some repeats
    # and not others: d=128 s=1024 causal read 137 us or 170-220 us (kernel span 136 us).
    torch.cuda._sleep(SLEEP_CYCLES_PER_REP * reps)
    pairs = []
    for _ in range(reps):
        if scratch is not None:
            scratch.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in pairs]


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


def case_name(params: dict[str, Any]) -> str:
    keys = ["d", "m", "n", "batch", "heads", "kv_heads", "causal", "dtype"]
    return " ".join(f"{k}={params[k]}" for k in keys if k in params)


def load_peers(kernel_dir: Path):
    """The kernel's peers module (stages/<kernel>/peers.py), or None."""
    if not (kernel_dir / "peers.py").exists():
        return None
    return importlib.import_module(f"stages.{kernel_dir.name}.peers")


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
        fixture = fixture_registry.get_fixture(registry, "random")
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
        if wanted_peers and peers_module is None:
            result["notes"].append(f"{spec.id} has no peers.py: no peer timed")
        for raw in job["cases"]:
            params = Params(raw)
            name = case_name(dict(params))
            self.emit({"type": "progress", "phase": "case", "case": name})
            case: dict[str, Any] = {"case": name, "params": dict(params), "flops": stage.flops(params)}
            try:
                build = compile_stage(spec, stage, params, job["variants"], job.get("arch"))
            except Exception as exc:
                case.update(verdict="COMPILE_ERROR", error=error_info(exc, roots))
                result["cases"].append(case)
                continue
            case["compile_s"], case["compile_cached"] = build.seconds, build.cached
            in_specs, out_specs = stage.inputs(params), stage.outputs(params)
            inputs = fixture.make(in_specs, params, job.get("seed", 0), "cuda")
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
            timing = time_cuda(lambda: stage.launch(build.compiled, inputs, outputs), reps=job.get("reps", 30), graph=job.get("graph", "auto"))
            case.update(timing)
            case["tflops"] = case["flops"] / (timing["median_ms"] * 1e-3) / 1e12
            case["fraction_of_peak"] = case["tflops"] / peak["tflops"]
            case["peers"] = {}
            for peer in wanted_peers:
                case["peers"][peer] = self.time_peer(peers_module, peer, inputs, params, case["flops"], job)
            result["cases"].append(case)
            inputs = outputs = None  # free the case's tensors before empty_cache
            torch.cuda.empty_cache()
        verdicts = [c.get("verdict") for c in result["cases"]]
        result["verdict"] = "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "FAIL"
        return result

    def time_peer(self, peers_module, peer: str, inputs, params, flops: float, job) -> dict[str, Any]:
        if peers_module is None:
            return {"skipped": "the kernel has no peers.py"}

        try:
            fn = peers_module.make_peer(peer, inputs, params)
        except Exception as exc:  # the whole story goes into the record: the table shows one line of it
            return {"skipped": f"{type(exc).__name__}: {exc}", "error": error_info(exc, [])}
        if fn is None:
            note = getattr(peers_module, "missing_note", lambda _: None)(peer)
            return {"skipped": f"not installed: {note}" if note else "not installed"}
        try:
            timing = time_cuda(fn, reps=job.get("reps", 30), graph=job.get("graph", "auto"))
        except Exception as exc:
            return {"skipped": f"failed: {type(exc).__name__}: {exc}", "error": error_info(exc, [])}
        return {**timing, "tflops": flops / (timing["median_ms"] * 1e-3) / 1e12}


# ------------------------------------------------------------------ host side (the wb process)

DEFAULT_PEERS = ("sdpa-flash", "sdpa-cudnn", "fa4")
# Settings peers read in the worker; sent with each job, since a warm worker may predate them.
PEER_ENV = ("WB_CUTLASS_EXAMPLES",)
# The sweep of DESIGN.md's peer table: (d, s, causal); batch = 16384 / s, heads = 2048 / d.
SWEEP = [(128, 1024, False), (128, 1024, True), (128, 4096, False), (128, 4096, True), (128, 8192, False),
         (128, 8192, True), (64, 1024, False), (64, 4096, False), (64, 8192, False), (64, 8192, True)]


def sweep_cases(dtype: str = "bf16") -> list[dict[str, Any]]:
    return [bench_params(s, d, causal, dtype) for d, s, causal in SWEEP]


TOKENS, MODEL_DIM = 16384, 2048  # DESIGN.md's convention: batch = TOKENS / s, heads = MODEL_DIM / d


def bench_params(s: int, d: int, causal: bool, dtype: str, batch: int | None = None, heads: int | None = None) -> dict[str, Any]:
    """Stage D parameters for one benchmark shape (DESIGN.md's convention: 16k tokens, 2048 model dim)."""
    return {
        "m": s, "n": s, "d": d, "dtype": dtype, "causal": causal,
        "batch": batch or max(1, TOKENS // s), "heads": heads or max(1, MODEL_DIM // d),
    }


def run_bench(ws, spec, cases: list[dict[str, Any]], variants: dict[str, str], peers: list[str], reps: int = 30,
              graph: str = "auto", timeout: float = 600.0, on_event=lambda e: None, warm: bool = True) -> dict[str, Any]:
    """Benchmark `cases` of a stage in a worker; write the record (kind "bench") and MEMORY.md."""
    resolved = [spec.resolve_params({k: str(v) for k, v in c.items()}) for c in cases]
    git = git_state(ws.root)
    run_dir = new_run_dir(ws.runs_dir)
    started = utc_now()
    job = {"op": "bench", "workspace": str(ws.root), "kernel": spec.kernel, "letter": spec.letter, "cases": resolved,
           "variants": variants, "peers": peers, "reps": reps, "graph": graph, "run_dir": str(run_dir),
           "peer_env": {key: os.environ.get(key) for key in PEER_ENV}}
    outcome = run_job(ws, job, timeout, on_event, warm=warm)
    result = worker_result(outcome, run_dir)
    env = result.get("env", {})
    record = new_record(
        "bench", spec, {}, variants, result.get("verdict") if outcome.status == "result" else outcome.status,
        error=None if outcome.status == "result" else {"message": outcome.message, "log": outcome.log_tail},
        bench=result.get("cases", []),
        peak=result.get("peak"),
        notes=result.get("notes", []),
        timing={"total_s": None, "worker_reused": outcome.worker_reused, "worker_pid": outcome.worker_pid},
        provenance=record_provenance(ws, spec, git, env, spec.arch),
        started=started,
        finished=utc_now(),
    )
    return commit(ws, run_dir, record, publish=record_speed)


def peer_ratios(case: dict[str, Any]) -> dict[str, float]:
    """wb's TFLOP/s over each timed peer's (above 1: wb is faster)."""
    out = {}
    for name, peer in (case.get("peers") or {}).items():
        if peer.get("tflops") and case.get("tflops"):
            out[name] = case["tflops"] / peer["tflops"]
    return out


def record_speed(ws, record: dict[str, Any]) -> None:
    """Fold a bench record into MEMORY.md's `speed` block (latest per case and card); the
    record is already in runs/, so a MEMORY.md wb cannot update is a warning."""
    memory.update_blocks_or_warn(ws, {"speed": speed_edit([record])})


def speed_edit(records: list[dict[str, Any]]):
    """The `speed` edit that folds these bench records (oldest first) into MEMORY.json's
    speed data (latest per case and card) and MEMORY.md's speed block."""
    def merge(old: Any) -> dict:
        data = old if isinstance(old, dict) else {}
        for record in records:
            card = record["provenance"].get("gpu") or "?"
            for case in record.get("bench", []):
                key = f"{record['stage']} · {case['case']} · {card}"
                data[key] = {
                    "tflops": case.get("tflops"),
                    "verdict": case.get("verdict"),
                    "peers": {k: v.get("tflops") for k, v in (case.get("peers") or {}).items()},
                    "run": record["id"],
                    "commit": short_commit(record["provenance"]) or None,
                    "date": (record.get("started") or "")[:10],
                }
        for key, entry in data.items():  # entries from before `row` (a migrated MEMORY.md) get theirs too
            if "row" not in entry:
                entry["row"], entry["n"] = speed_cell(key.split(" · ")[1] if key.count(" · ") >= 2 else "")
        return data

    return memory.data_block("speed", merge)  # rendered by memory.render_speed


def speed_cell(case: str) -> tuple[str, int | None]:
    """Where a case sits in MEMORY.md's speed table: its row, the case without n and without
    the parameters that follow bench_params' convention (m = n, batch = TOKENS/n, heads =
    MODEL_DIM/d, kv_heads = heads), and its column, n. So a sweep reads as one row per d, causal
    and dtype; a case off the convention (batch=64) gets a row of its own."""
    words = [w.split("=", 1) for w in case.split() if "=" in w]
    params = dict(words)

    def num(key: str) -> int | None:
        value = params.get(key, "")
        return int(value) if value.isdigit() else None

    n, d = num("n"), num("d")
    follows = {
        "n": True,
        "m": num("m") == n,
        "batch": bool(n) and num("batch") == max(1, TOKENS // n),
        "heads": bool(d) and num("heads") == max(1, MODEL_DIM // d),
        "kv_heads": params.get("kv_heads") == params.get("heads"),
    }
    return " ".join(f"{k}={v}" for k, v in words if not follows.get(k, False)), n


def perf_markdown(record: dict[str, Any]) -> str:
    """docs/perf.md: the DESIGN.md-style table with wb's stage as a column, generated by wb."""
    prov = record["provenance"]
    peers = sorted({p for c in record.get("bench", []) for p in (c.get("peers") or {})})
    out = [
        "# FMHA forward speed (generated by `wb bench --sweep`)",
        "",
        f"Card: {prov.get('gpu')} · measured {record['started'][:10]} · run `{record['id']}` · commit `{(prov.get('commit') or '')[:10]}`"
        + (" (dirty)" if prov.get("dirty") else ""),
        f"Versions: wb {prov.get('wb')}, CuTe DSL {prov.get('dsl')}, torch {prov.get('torch')}, driver {prov.get('driver')}",
        f"Card's dense bf16 matmul: {record.get('peak', {}).get('tflops', 0):.0f} TFLOP/s (measured by wb, cached per card).",
        "",
        "TFLOP/s = 4·b·h·s²·d / t (halved for causal); median of CUDA-event timings, L2 flushed before each repeat;"
        " batch = 16384/s, heads = 2048/d; every kernel checked against SDPA in fp32 on the same inputs before timing.",
        "",
        "| d | s | causal | dtype | " + " | ".join(peers) + f" | wb {record['stage']} | wb / best peer |",
        "|" + "---|" * (6 + len(peers)),
    ]
    for c in record.get("bench", []):
        p = c["params"]
        cells = []
        best = 0.0
        for name in peers:
            t = (c.get("peers") or {}).get(name, {}).get("tflops")
            cells.append(f"{t:.0f}" if t else "skipped")
            best = max(best, t or 0.0)
        wb = f"{c['tflops']:.0f}" if c.get("tflops") else c.get("verdict", "-")
        ratio = f"×{c['tflops'] / best:.2f}" if c.get("tflops") and best else "-"
        out.append(f"| {p['d']} | {p['n']} | {'yes' if p.get('causal') else 'no'} | {p['dtype']} | " + " | ".join(cells) + f" | {wb} | {ratio} |")
    notes = record.get("notes") or []
    skipped = sorted({f"{name}: {peer['skipped']}" for c in record.get("bench", []) for name, peer in (c.get("peers") or {}).items() if peer.get("skipped")})
    if notes or skipped:
        out += ["", "Notes:", ""] + [f"- {n}" for n in [*notes, *skipped]]
    out.append("")
    return "\n".join(out)
