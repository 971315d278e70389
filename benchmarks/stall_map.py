"""Where a kernel's warps wait in its hottest loop, by instruction kind and stall reason
(diagnostic, no GPU), for one kernel or several side by side.

Reads the source page Nsight Compute exports per SASS instruction from a report taken with
the SourceCounters section (PC sampling), as ``gpu_tune_d.sh stalls`` writes it:

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > ours.csv
    python benchmarks/stall_map.py ours=ours.csv fa4=fa4.csv [--top 12] [--json]

The hot loop is the group of instructions that share one execution count and hold the most
samples (a steady KV step: every instruction of its body runs once per step). Each kernel's
samples are shown as shares of that loop's samples, so kernels that ran for different times
compare. Exit 2 with one line for a file that is not such an export.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"
# opcode -> kind; an opcode not listed is "other"
KINDS = {
    "HGMMA": "tensor-core issue",
    "WARPGROUP": "tensor-core wait / arrive",
    "BAR": "named barrier",
    "SYNCS": "mbarrier",
    "BRA": "branch (mbarrier retry)",
    "MUFU": "MUFU (exp2)",
    "FMNMX": "row max",
    "FFMA": "fp32 arithmetic",
    "FMUL": "fp32 arithmetic",
    "FADD": "fp32 arithmetic",
    "FSEL": "fp32 arithmetic",
    "FSETP": "fp32 arithmetic",
    "F2FP": "conversion to 16 bits",
    "SHFL": "shuffle",
}


UNATTRIBUTED = "(no reason column)"


class NotAnExport(ValueError):
    """The file is not Nsight Compute's per-instruction source page (CSV)."""


@dataclass
class Instruction:
    address: str
    source: str
    samples: float
    executed: float
    reasons: dict[str, float] = field(default_factory=dict)

    @property
    def opcode(self) -> str:
        words = self.source.split()
        if words and words[0].startswith("@"):  # a predicate comes first
            words = words[1:]
        return words[0].split(".")[0] if words else ""

    @property
    def kind(self) -> str:
        return KINDS.get(self.opcode, "other")


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def read_export(path: Path) -> list[Instruction]:
    """The instructions of the first kernel in ``path`` (its header row names the columns)."""
    try:
        rows = list(csv.reader(path.read_text(errors="replace").splitlines()))
    except OSError as exc:
        raise NotAnExport(f"{path}: cannot read it ({exc.strerror})") from None
    header_at = next((i for i, row in enumerate(rows) if SAMPLES in row and "Source" in row), None)
    if header_at is None:
        raise NotAnExport(f"{path}: no '{SAMPLES}' column; export the source page of a report taken "
                          f"with --section SourceCounters (ncu -i R --page source --csv --print-source sass)")
    header = rows[header_at]
    reasons = [h for h in header if h.startswith("stall_") and not h.endswith("(Not Issued)")]
    out = []
    for row in rows[header_at + 1:]:
        if len(row) != len(header):
            if out:  # the next kernel's block begins
                break
            continue
        cells = dict(zip(header, row))
        out.append(Instruction(cells.get("Address", ""), cells["Source"].strip(), _number(cells[SAMPLES]),
                               _number(cells.get(EXECUTED, "0")), {r[len("stall_"):]: _number(cells[r]) for r in reasons}))
    if not out:
        raise NotAnExport(f"{path}: the header is there but no instruction rows follow it")
    return out


def hot_loop(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the execution count that holds the most samples."""
    by_count: dict[float, list[Instruction]] = collections.defaultdict(list)
    for ins in instructions:
        if ins.executed > 0:
            by_count[ins.executed].append(ins)
    if not by_count:
        return []
    return max(by_count.values(), key=lambda group: sum(i.samples for i in group))


def summary(instructions: list[Instruction], top: int = 12) -> dict:
    """Shares (%) of the hot loop's samples by kind and by reason, its top instructions."""
    loop = hot_loop(instructions)
    total = sum(i.samples for i in loop) or 1.0
    kinds: dict[str, dict] = {}
    for ins in loop:
        entry = kinds.setdefault(ins.kind, {"share": 0.0, "instructions": 0})
        entry["share"] += 100 * ins.samples / total
        entry["instructions"] += 1
    reasons = collections.Counter()
    for ins in loop:
        reasons.update(ins.reasons)
        # samples the export gives no reason column for (an HGMMA waiting on the tensor core's queue)
        reasons[UNATTRIBUTED] += max(0.0, ins.samples - sum(ins.reasons.values()))
    hottest = sorted(loop, key=lambda i: -i.samples)[:top]
    return {
        "loop_executions": loop[0].executed if loop else 0,
        "loop_instructions": len(loop),
        "loop_samples": sum(i.samples for i in loop),
        "kernel_samples": sum(i.samples for i in instructions),
        "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["share"])),
        "reasons": {r: 100 * v / total for r, v in reasons.most_common() if v},
        "top": [{"address": i.address, "source": i.source, "share": 100 * i.samples / total,
                 "reasons": {r: v for r, v in sorted(i.reasons.items(), key=lambda kv: -kv[1])[:3] if v}} for i in hottest],
    }


def render(summaries: dict[str, dict]) -> str:
    names = list(summaries)
    lines = ["hot loop: " + "; ".join(f"{n} {s['loop_instructions']} instructions x {s['loop_executions']:.0f}, "
                                      f"{s['loop_samples']:.0f} of {s['kernel_samples']:.0f} samples"
                                      for n, s in summaries.items())]
    kinds = list(dict.fromkeys(k for s in summaries.values() for k in s["kinds"]))
    lines.append(f"{'kind (% of the loop samples, instructions)':44s}" + "".join(f"{n:>18s}" for n in names))
    for kind in kinds:
        cells = []
        for n in names:
            entry = summaries[n]["kinds"].get(kind)
            cells.append(f"{entry['share']:9.1f} % {entry['instructions']:4d}" if entry else f"{'-':>18s}")
        lines.append(f"{kind:44s}" + "".join(f"{c:>18s}" for c in cells))
    reasons = list(dict.fromkeys(r for s in summaries.values() for r in s["reasons"]))
    lines.append(f"{'stall reason (% of the loop samples)':44s}" + "".join(f"{n:>18s}" for n in names))
    for reason in reasons:
        if max(s["reasons"].get(reason, 0.0) for s in summaries.values()) < 0.5:
            continue
        lines.append(f"{reason:44s}" + "".join(f"{s['reasons'].get(reason, 0.0):16.1f} %" for s in summaries.values()))
    for n, s in summaries.items():
        lines.append(f"{n}: hottest instructions (% of the loop samples; top reasons, in samples)")
        for t in s["top"]:
            why = " ".join(f"{r} {v:.0f}" for r, v in t["reasons"].items())
            lines.append(f"  {t['share']:5.1f} %  {t['source'][:64]:64s} {why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exports", nargs="+", metavar="NAME=FILE", help="a kernel's name and its source-page CSV")
    ap.add_argument("--top", type=int, default=12, help="hottest instructions listed per kernel (default 12)")
    ap.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = ap.parse_args(argv)
    summaries = {}
    try:
        for item in args.exports:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = Path(item).stem, item
            summaries[name] = summary(read_export(Path(path)), args.top)
    except NotAnExport as exc:
        print(f"stall_map: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summaries, indent=1) if args.json else render(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
