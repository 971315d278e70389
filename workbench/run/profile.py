"""`wb profile STAGE`: the stage's kernel under Nsight Compute (the `ncu` CLI), its counters
in the run record.

The worker runs as ``ncu --target-processes all --clock-control none --kernel-name
regex:kernel_cutlass --launch-count 8 --section ... --csv --page raw --log-file
runs/<id>/ncu.log python -m workbench.run.worker``: the stage's kernels (the DSL names them
``kernel_cutlass_...``) of the one fixture launch are replayed and measured, up to MAX_KERNELS
(a stage made of several kernels gets one row each); torch's kernels are not. The
sections are Nsight Compute's own (no metric is named here that a version might not have);
from the raw metrics they print, ``summarize`` picks the headline counters by name, and keeps
every metric in the log. ``--clock-control none``: the card runs at its own clocks, as in
`wb bench` (locked base clocks would make every kernel look slower than it runs).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from workbench.compile.resources import short_kernel_name
from workbench.run.instrument import Instrument, cuda_tool, read_tool_log

EXECUTABLE_ENV = "WB_NCU"
LOG_NAME = "ncu.log"
SECTIONS = (
    "SpeedOfLight", "Occupancy", "LaunchStats", "MemoryWorkloadAnalysis", "MemoryWorkloadAnalysis_Tables",
    "ComputeWorkloadAnalysis", "WarpStateStats",
)
TIMEOUT_FACTOR = 10  # one kernel replayed once per counter pass, on top of the worker's start
STAGE_KERNEL = "regex:kernel_cutlass"
MAX_KERNELS = 8  # stage kernels profiled: all of one launch of a stage made of several (moe stage D: 4)

# headline counter -> candidate raw metric names, first present wins (Nsight Compute 2025.x names)
HEADLINES: dict[str, tuple[str, ...]] = {
    "duration_us": ("gpu__time_duration.sum",),
    "sm_throughput_pct": ("sm__throughput.avg.pct_of_peak_sustained_elapsed",),
    "memory_throughput_pct": ("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",),
    "dram_throughput_pct": ("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed", "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
    "l2_throughput_pct": ("lts__throughput.avg.pct_of_peak_sustained_elapsed",),
    "achieved_occupancy_pct": ("sm__warps_active.avg.pct_of_peak_sustained_active",),
    "registers_per_thread": ("launch__registers_per_thread",),
    "shared_mem_per_block": ("launch__shared_mem_per_block", "launch__shared_mem_per_block_dynamic"),
    "smem_bank_conflicts": ("l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum",),
}
# tensor-core (HGMMA) utilization: the pipe metric's name differs between versions
_TENSOR_PIPE = re.compile(r"^sm__pipe_tensor_op_(?:h?gmma|hmma)\w*cycles_active\.avg\.pct_of_peak_sustained_(?:active|elapsed)$")
_STALL = re.compile(r"^smsp__average_warp(?:s|_latency)_issue_stalled_(\w+?)_per_(?:issue|warp)_active\.(?:ratio|pct)$")
_UNIT_SCALE = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}


def executable() -> str:
    """ncu: $WB_NCU, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin."""
    return cuda_tool("ncu", EXECUTABLE_ENV, "wb profile", "Nsight Compute's ncu")


def command(log_path: Path, exe: str | None = None, kernel_filter: str = STAGE_KERNEL, from_start: bool = True) -> list[str]:
    """``from_start=False``: only kernels inside the worker's profiler range are measured (a
    peer's one timed call, not its warm-up call, which launches the same kernel)."""
    args = [
        exe or executable(), "--target-processes", "all", "--clock-control", "none",
        "--kernel-name", kernel_filter, "--launch-count", str(MAX_KERNELS),
    ]
    if not from_start:
        args += ["--profile-from-start", "off"]
    for section in SECTIONS:
        args += ["--section", section]
    return args + ["--csv", "--page", "raw", "--log-file", str(log_path)]


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def parse_log(text: str) -> list[dict[str, Any]]:
    """ncu's `--csv --page raw` output -> one dict per profiled kernel: its name, and every
    metric as {name: (value, unit)}. Lines that are not CSV (==PROF== messages) are skipped."""
    rows = list(csv.reader(io.StringIO("\n".join(line for line in text.splitlines() if line.startswith('"')))))
    if len(rows) < 2:
        return []
    header, units, data = rows[0], rows[1], rows[2:]
    if "Kernel Name" not in header:
        return []
    kernels = []
    for row in data:
        if len(row) != len(header):
            continue
        values = dict(zip(header, row))
        metrics = {
            name: (values[name], unit) for name, unit in zip(header, units) if "__" in name and values.get(name, "") != ""
        }
        kernels.append({"kernel": values["Kernel Name"], "grid": values.get("Grid Size"), "block": values.get("Block Size"), "metrics": metrics})
    return kernels


def headline(metrics: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """The counters `wb profile` shows, from the raw metrics (None where the version lacks them)."""
    out: dict[str, Any] = {}
    for key, names in HEADLINES.items():
        found = next((metrics[n] for n in names if n in metrics), None)
        value = _number(found[0]) if found else None
        if key == "duration_us" and value is not None:
            value *= _UNIT_SCALE.get(found[1], 1e-3)
        out[key] = value
    if out["smem_bank_conflicts"] is None:  # some versions count loads and stores apart
        parts = [_number(metrics[n][0]) for n in (f"l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_{op}.sum" for op in ("ld", "st")) if n in metrics]
        out["smem_bank_conflicts"] = sum(v for v in parts if v is not None) if parts and None not in parts else None
    moved = [_number(metrics[n][0]) for n in ("dram__bytes_read.sum", "dram__bytes_write.sum") if n in metrics]
    out["dram_bytes"] = _number(metrics["dram__bytes.sum"][0]) if "dram__bytes.sum" in metrics else (sum(moved) if moved and None not in moved else None)
    rate, share = metrics.get("dram__bytes_read.sum.per_second"), metrics.get("dram__bytes_read.sum.pct_of_peak_sustained_elapsed")
    peak = _number(rate[0]) / (_number(share[0]) / 100) if rate and share and _number(rate[0]) and _number(share[0]) else None
    out["dram_peak_gbps"] = peak / 1e9 if peak else None  # the card's DRAM bandwidth, as ncu rates it
    tensor = sorted(n for n in metrics if _TENSOR_PIPE.match(n))
    out["tensor_pipe_pct"] = _number(metrics[tensor[0]][0]) if tensor else None  # Hopper counts HGMMA on the hmma pipe
    out["tensor_pipe_metric"] = tensor[0] if tensor else None
    stalls = []
    for name, (value, _unit) in metrics.items():
        # "selected" is the issuing warp itself, not a stall
        if (m := _STALL.match(name)) and (v := _number(value)) is not None and m.group(1) != "selected" and not m.group(1).endswith("_not_issued"):
            stalls.append({"reason": m.group(1), "value": v, "metric": name})
    out["stalls_top5"] = sorted(stalls, key=lambda s: -s["value"])[:5]
    return out


def roofline(counters: dict[str, Any], flops: float | None) -> dict[str, Any] | None:
    """Where the kernel sits on the card's roofline: FLOPs per DRAM byte and TFLOP/s achieved
    (the stage's own FLOP count over ncu's kernel time)."""
    duration, moved = counters.get("duration_us"), counters.get("dram_bytes")
    if not flops or not duration:
        return None
    return {
        "flops": flops,
        "tflops": flops / (duration * 1e-6) / 1e12,
        "intensity": flops / moved if moved else None,  # FLOP per DRAM byte
        "dram_peak_gbps": counters.get("dram_peak_gbps"),
    }


def _total(values: list) -> float | None:
    return sum(values) if values and None not in values else None


def summarize(
    log_path: Path, run_verdict: str, result: dict[str, Any] | None = None, *, peer: str | None = None,
    peer_points: list[dict[str, Any]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The record's ``profile`` field; the verdict stays the run's (counters judge nothing).
    ``peer``: this run measured that peer's kernels instead of the stage's. ``peer_points``:
    the peers profiled before the stage on the same inputs (drawn beside it on the roofline)."""
    text, unread = read_tool_log(log_path)
    notes = [line.strip() for line in text.splitlines() if line.startswith("==") and ("ERROR" in line or "WARNING" in line)][:10]
    if unread:
        notes.append(unread)
    try:
        kernels = parse_log(text)
    except csv.Error as exc:  # not ncu's CSV (a field past csv's limit): no counters, but the run is still recorded
        kernels = []
        notes.append(f"{LOG_NAME} is not CSV that wb reads: {exc}")
    field: dict[str, Any] = {"tool": "ncu", "log": LOG_NAME if text else None, "kernels": len(kernels), "notes": notes}
    if peer:
        field["peer"] = peer
    if peer_points:
        field["peers"] = peer_points
    if kernels:
        first = kernels[0]
        counters = headline(first["metrics"])
        field.update(kernel=first["kernel"][:300], grid=first["grid"], block=first["block"], counters=counters,
                     metrics_count=len(first["metrics"]))
        if len(kernels) > 1:  # a stage of several kernels: each one's counters, and the launch's totals for the roofline
            field["each"] = [
                {"kernel": k["kernel"][:300], "grid": k["grid"], "block": k["block"], "counters": headline(k["metrics"])}
                for k in kernels
            ]
            totals = {key: _total([e["counters"].get(key) for e in field["each"]]) for key in ("duration_us", "dram_bytes")}
            field["roofline"] = roofline({**counters, **totals}, (result or {}).get("flops"))
        else:
            field["roofline"] = roofline(counters, (result or {}).get("flops"))
        field["picture"] = _draw_roofline(log_path.parent, field, result or {})
    else:
        field.update(kernel=None, counters=None, metrics_count=0)
    return run_verdict, field


def _draw_roofline(run_dir: Path, field: dict[str, Any], result: dict[str, Any]) -> str | None:
    """runs/<id>/roofline.png (matplotlib, optional): the kernel on the card's roofline; the
    compute roof is the dense matmul rate `wb bench` measured on this card, when it has."""
    point = field.get("roofline")
    if not point or not point.get("intensity"):
        return None
    from workbench.records.charts import draw_roofline
    from workbench.run.timing import DATASHEET_BF16_TFLOPS, known_peak_tflops

    card = (result.get("env") or {}).get("gpu")
    points = [{"label": field.get("peer") or "the stage's kernel", **point}]
    points += [{**p, "label": p["peer"]} for p in field.get("peers") or [] if p.get("intensity") and p.get("tflops")]
    peak, source = known_peak_tflops(card), "wb bench"
    if peak is None:
        peak, source = DATASHEET_BF16_TFLOPS.get(card or ""), "datasheet"
    try:
        path = draw_roofline(
            run_dir / "roofline.png", points, point.get("dram_peak_gbps"), peak,
            f"{short_kernel_name(field.get('kernel') or '')} on {card or '?'}", peak_source=source,
        )
    except Exception as exc:  # a picture must never lose the counters
        field["notes"].append(f"roofline picture failed: {type(exc).__name__}: {exc}")
        return None
    return path.name if path else None


def peer_point(record: dict[str, Any]) -> dict[str, Any]:
    """What the stage's profile keeps of a peer's profile run: its run, kernel, time, tensor pipe
    and roofline point."""
    found = record.get("profile") or {}
    counters, roof = found.get("counters") or {}, found.get("roofline") or {}
    return {
        "peer": found.get("peer"), "run": record.get("id"), "verdict": record.get("verdict"), "kernel": found.get("kernel"),
        "kernels": found.get("kernels", 0), "duration_us": counters.get("duration_us"), "tensor_pipe_pct": counters.get("tensor_pipe_pct"),
        "tflops": roof.get("tflops"), "intensity": roof.get("intensity"),
    }


def peer_kernel_filter(kernel_dir: Path, peer: str) -> str:
    """The ncu kernel-name filter of ``peer`` (its kernel's peers.py PROFILE_KERNELS; every
    kernel when the peer names none)."""
    from workbench.kernels.registry import kernel_module

    module = kernel_module(kernel_dir, "peers")
    return (getattr(module, "PROFILE_KERNELS", None) or {}).get(peer, "regex:.")


def instrument(kernel_filter: str = STAGE_KERNEL, peer: str | None = None, peer_points: list[dict[str, Any]] | None = None) -> Instrument:
    """ncu around the worker; ``peer``: the worker launches that peer instead of the stage
    (kernel_filter: its kernels); ``peer_points``: peers profiled before, drawn beside."""
    exe = executable()
    return Instrument(
        label=f"Nsight Compute (ncu){f', peer {peer}' if peer else ''}",
        tool="ncu",
        record_field="profile",
        log_name=LOG_NAME,
        command=lambda log: command(log, exe, kernel_filter, from_start=peer is None),
        summarize=lambda log, verdict, result: summarize(log, verdict, result, peer=peer, peer_points=peer_points),
        timeout_factor=TIMEOUT_FACTOR,
    )
