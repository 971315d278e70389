"""wb's CUDA timer: warm-up, repeats timed with CUDA events, L2 flushed before each, median
and spread; short kernels replayed from a CUDA graph of several launches so launch overhead
does not hide them; several kernels timed repeat by repeat in turn; the SM clock while the
repeats ran (clocks.py). Also the card's dense bf16 matmul peak, measured once per card and
cached in $WB_HOME. Used by `wb bench` (bench.BenchJob) and the benchmarks/ scripts.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from workbench import settings

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
