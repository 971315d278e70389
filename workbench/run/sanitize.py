"""`wb run --sanitize TOOL`: the worker runs under NVIDIA compute-sanitizer, and what the
tool reports about the stage's kernels becomes the run's verdict.

The sanitized worker is a fresh one (never the warm worker) started as
``compute-sanitizer --tool TOOL --log-file runs/<id>/sanitizer.log ... python -m
workbench.run.worker``. Its environment asks the DSL for line info (CUTE_DSL_LINEINFO=1,
so findings name the Python source line; the compile cache keys it) and turns off torch's
caching allocator (PYTORCH_NO_CUDA_MEMORY_CACHING=1: every tensor is its own allocation,
so memcheck sees a store past an output's end instead of into the next tensor of a pool).
Under initcheck the worker also leaves the outputs unpoisoned (WB_NO_POISON=1): its poison fill
would initialize them, and a kernel that reads an output before writing it would go unseen
(the fixtures' "unwritten" count is then 0 by construction).

Findings in the stage's kernels (the DSL names them ``kernel_cutlass_...``) decide the
verdict; findings elsewhere (torch's kernels in the reference, host API calls) are kept in
the record and shown, but do not. Every kernel is instrumented: with compute-sanitizer
2025.3.1's ``--kernel-name kns=kernel_cutlass`` (the stage's kernels only) racecheck hit an
"Internal Sanitizer Error" on moe stage C and initcheck gave no result at t=64 in 250 s,
where without it both finished (H200, 2026-12-04).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench.run.instrument import Instrument, cuda_tool, read_tool_log

TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
VERDICTS = {"memcheck": "MEMCHECK", "racecheck": "RACE", "synccheck": "SYNCCHECK", "initcheck": "INITCHECK"}
TIMEOUT_FACTOR = 10  # sanitized kernels (and torch's) run 10-100x slower: the stage's timeout is scaled
EXECUTABLE_ENV = "WB_COMPUTE_SANITIZER"
LOG_NAME = "sanitizer.log"
NO_POISON_ENV = "WB_NO_POISON"  # set: the worker leaves outputs as allocated (initcheck sees a kernel read them)
MAX_FINDINGS = 20  # kept in the record (the log keeps everything the tool printed)
STAGE_KERNEL = re.compile(r"kernel_cutlass|cutlass_kernel")

_PREFIX = "========="
_LOCATION = re.compile(r"\bin (\S+?):(\d+)(?::(\S+))?(?=\s|$)")
_AT_KERNEL = re.compile(r"\bat (?:0x[0-9a-f]+ in )?([A-Za-z_][\w$.<>:,()\[\] ]*?)\+0x[0-9a-f]+", re.I)
_SYMBOL_AT = re.compile(r"\bat (?:0x[0-9a-f]+ in )?\S+?\+0x[0-9a-f]+ in ")  # "at <kernel>+0x4950 in f.py:323"
_SUMMARY = re.compile(r"(ERROR SUMMARY|RACECHECK SUMMARY): (\d+) (?:error|hazard)")
_RACE_ERRORS = re.compile(r"\((\d+) errors?, (\d+) warnings?\)")
_NOT_FINDINGS = (
    "COMPUTE-SANITIZER", "ERROR SUMMARY", "RACECHECK SUMMARY", "LEAK SUMMARY", "Target application returned",
    "Program hit", "Saved host backtrace", "Host Frame", "Device Frame", "Note:", "Warning: Detected overflow",
)


def check_tool(tool: str) -> str:
    if tool not in TOOLS:
        raise UserError(f"--sanitize {tool!r}: expected one of {', '.join(TOOLS)}")
    return tool


def executable() -> str:
    """compute-sanitizer: $WB_COMPUTE_SANITIZER, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin."""
    return cuda_tool("compute-sanitizer", EXECUTABLE_ENV, "--sanitize", "compute-sanitizer")


def wrapper(tool: str, log_path: Path, exe: str | None = None) -> list[str]:
    """The command line the worker's own is appended to."""
    args = [
        exe or executable(), "--tool", tool, "--log-file", str(log_path), "--print-limit", "100",
        "--show-backtrace", "device", "--target-processes", "all", "--error-exitcode", "0",
    ]
    if tool == "memcheck":
        args += ["--leak-check", "no"]
    if tool == "racecheck":
        args += ["--racecheck-report", "analysis"]
    return args


def environment(tool: str = "memcheck") -> dict[str, str]:
    env = {"CUTE_DSL_LINEINFO": "1", "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    if tool == "initcheck":  # the worker's poison fill would initialize every output before the kernel runs
        env[NO_POISON_ENV] = "1"
    return env


def instrument(tool: str) -> Instrument:
    """The worker under compute-sanitizer TOOL; refused in one line (UserError) when the tool
    name is wrong or compute-sanitizer is not installed."""
    exe = executable() if check_tool(tool) else None
    return Instrument(
        label=f"compute-sanitizer {tool}",
        tool=tool,
        record_field="sanitizer",
        log_name=LOG_NAME,
        command=lambda log: wrapper(tool, log, exe),
        summarize=lambda log, verdict, _result: summarize(tool, log, verdict),
        environment=environment(tool),
        timeout_factor=TIMEOUT_FACTOR,
    )


def parse_log(text: str) -> dict[str, Any]:
    """compute-sanitizer's log -> {"findings": [...], "errors": N or None, "warnings": N or None}.

    A finding is a report's first line (``Invalid __global__ write of size 4 bytes``, ``Error:
    Race reported between Write access at ...``) with the indented lines under it: the
    kernel, the source location (file, line) when the code has line info, the thread and
    block, and the detail lines."""
    findings: list[dict[str, Any]] = []
    errors = warnings = None
    current = None
    for raw in text.splitlines():
        if not raw.startswith(_PREFIX):
            continue
        body = raw[len(_PREFIX):]
        stripped = body.strip()
        if (summary := _SUMMARY.search(stripped)) and (total := _count(summary.group(2))) is not None:
            race = _RACE_ERRORS.search(stripped)
            hazards = (_count(race.group(1)), _count(race.group(2))) if race else (None, None)
            if None in hazards:
                errors = (errors or 0) + total
            else:  # racecheck: the total counts errors and warnings; the record keeps them apart
                errors = (errors or 0) + hazards[0]
                warnings = (warnings or 0) + hazards[1]
            current = None
            continue
        if not stripped:
            current = None
            continue
        indented = body.startswith(" " * 5)
        if not indented:
            if any(stripped.startswith(word) for word in _NOT_FINDINGS):
                current = None
                continue
            current = {"message": _short(stripped), "kernel": None, "file": None, "line": None, "details": []}
            findings.append(current)
            _locate(current, stripped)
            continue
        if current is None or stripped.startswith(("Host Frame", "Device Frame", "Saved host backtrace")):
            continue
        if len(current["details"]) < 8:
            current["details"].append(_short(stripped))
        _locate(current, stripped)
    for finding in findings:
        finding["stage_kernel"] = bool(finding["kernel"] and STAGE_KERNEL.search(finding["kernel"]))
    return {"findings": findings, "errors": errors, "warnings": warnings}


def _count(digits: str) -> int | None:
    """A count or line number the log gives; None past 18 digits, which no tool prints (int()
    refuses over 4300, and a record holding over 308 is refused when read back: the run lost)."""
    return int(digits) if len(digits) <= 18 else None


def _short(line: str) -> str:
    """A report line without the kernel's symbol and PC offset where a source location follows
    (the DSL's kernel names run to hundreds of characters; the finding keeps the kernel once)."""
    return _SYMBOL_AT.sub("at ", line)[:300]


def group(findings: list[dict]) -> list[dict]:
    """Findings that read the same (message, details, kernel) once, with ``count``: an
    unrolled loop reports one race per instruction."""
    out: dict[tuple, dict] = {}
    for f in findings:
        key = (f["message"], tuple(d.split(" [")[0] for d in f["details"]), f["kernel"])
        if key in out:
            out[key]["count"] += 1
        else:
            out[key] = {**f, "count": 1}
    return list(out.values())


def _locate(finding: dict, line: str) -> None:
    if finding["kernel"] is None and (at := _AT_KERNEL.search(line)):
        finding["kernel"] = at.group(1).strip()
    if finding["file"] is None and (where := _LOCATION.search(line)):
        finding["file"], finding["line"] = where.group(1), _count(where.group(2))
        if finding["kernel"] is None and where.group(3):
            finding["kernel"] = where.group(3)


def summarize(tool: str, log_path: Path, run_verdict: str) -> tuple[str, dict[str, Any]]:
    """The run's verdict under the tool, and the record's ``sanitizer`` field."""
    text, unread = read_tool_log(log_path)
    parsed = parse_log(text)
    findings = parsed["findings"]
    in_stage = [f for f in findings if f["stage_kernel"]]
    field = {
        "tool": tool,
        "verdict": VERDICTS[tool] if in_stage else "CLEAN",
        "run_verdict": run_verdict,
        "errors": parsed["errors"],
        "warnings": parsed["warnings"],
        "findings_total": len(findings),
        "findings_in_stage": len(in_stage),
        "findings": group(in_stage + [f for f in findings if not f["stage_kernel"]])[:MAX_FINDINGS],
        "log": LOG_NAME if text else None,
        "completed": parsed["errors"] is not None,  # the tool printed its summary (the worker exited)
        "notes": [unread] if unread else [],
    }
    return (VERDICTS[tool] if in_stage else run_verdict), field
