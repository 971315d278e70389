"""MEMORY.md's speed block from bench records: which records count (complete measurements),
the latest TFLOP/s per case and card with the peers' beside them, and where an entry from
before rows existed belongs. `wb bench` folds its record in as it ends; `wb import` folds in
the bench records it brings."""

from __future__ import annotations

from typing import Any

from workbench.kernels.registry import kernel_module, load_kernels
from workbench.records import memory
from workbench.records.provenance import short_commit
from workbench.text import decimal_int


def measured(record: dict[str, Any]) -> bool:
    """A bench record whose measurement is complete: not one whose worker (or a later one of
    --processes) hung, crashed or was interrupted. Only those reach MEMORY.md's speed block;
    the others keep what they timed in their record."""
    return record.get("verdict") not in ("HANG", "CRASH", "INTERRUPTED", "LOST")


def speed_edit(records: list[dict[str, Any]], ws=None):
    """The `speed` edit that folds these bench records (oldest first) into MEMORY.json's
    speed data (latest per case and card) and MEMORY.md's speed block. With `ws`, entries
    from before `row` (a migrated MEMORY.md) get theirs from their kernel (legacy_row)."""
    def merge(old: Any) -> dict:
        data = old if isinstance(old, dict) else {}
        for record in filter(measured, records):
            provenance = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
            card = provenance.get("gpu") or "?"
            for case in record.get("bench", []):
                key = f"{record['stage']} · {case['case']} · {card}"
                data[key] = {
                    "tflops": case.get("tflops"),
                    "verdict": case.get("verdict"),
                    "peers": {k: v.get("tflops") for k, v in (case.get("peers") or {}).items()},
                    "run": record["id"],
                    "commit": short_commit(provenance) or None,
                    "date": (record.get("started") or "")[:10],
                }
                if case.get("row") is not None:
                    column = case.get("column") or "n"
                    data[key]["row"] = case["row"]
                    n = (case.get("params") or {}).get(column)
                    data[key]["n"] = n if isinstance(n, int) and not isinstance(n, bool) else None
                    if column != "n":
                        data[key]["column"] = column
        if ws is not None:
            for key, entry in data.items():
                if entry.get("row") is None and key.count(" · ") >= 2:
                    placed = legacy_row(ws, *key.split(" · ")[:2])
                    if placed is not None:
                        entry["row"], entry["n"] = placed
        return data

    return memory.data_block("speed", merge)  # rendered by memory.render_speed


def legacy_row(ws, stage_id: str, case: str) -> tuple[str, int | None] | None:
    """MEMORY.md's row and column of a case recorded before rows were (None: its stage is
    gone): the case without n, without what the kernel's case_params hook derives from the
    rest, and without parameters equal to the one their '=other' default copies."""
    kernel_name, _, _ = stage_id.partition("/")
    kernel = load_kernels(ws).get(kernel_name)
    spec = next((s for s in kernel.stages if s.id == stage_id), None) if kernel is not None else None
    if spec is None:
        return None
    words = [w.split("=", 1) for w in case.split() if "=" in w]
    params = dict(words)
    derive = getattr(kernel_module(kernel.dir, "bench_hooks"), "case_params", None)
    hidden = {"n"}
    for key, value in params.items():
        others = {k: v for k, v in params.items() if k != key}
        try:
            if derive is not None and str(derive(dict(others)).get(key)) == value:
                hidden.add(key)
        except (ValueError, TypeError, ZeroDivisionError):  # an odd old case: keep the key
            pass
        default = spec.params[key].default if key in spec.params else None
        if isinstance(default, str) and default.startswith("=") and params.get(default[1:]) == value:
            hidden.add(key)
    n = params.get("n", "")
    return " ".join(f"{k}={v}" for k, v in words if k not in hidden), decimal_int(n)
