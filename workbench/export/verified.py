"""Which runs verified a configuration: the passing GPU runs of runs/ on the current sources.

A run verifies a configuration when it is a `wb run` record (kind "run") of the same stage
with verdict PASS, made on a GPU, with the same compile-time parameters and variants, and the
stage's source files hash today exactly as they did for that run (provenance.sources): an
edit since makes the run say nothing about what is exported now. Runtime-only parameters
(sizes) may differ: one compile serves them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from workbench.records.provenance import file_hashes
from workbench.records.store import iter_records


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a).lower() == str(b).lower()


def current_sources(ws, spec) -> dict[str, str]:
    return file_hashes(spec.source_files(), ws.root)


def passing_runs(
    records: Iterable[dict], spec, compile_params: dict[str, Any], variants: dict[str, str], sources: dict[str, str]
) -> list[str]:
    """Ids of the records that verify (compile_params, variants) of ``spec``, newest first."""
    ids = []
    for rec in records:
        if rec.get("kind") != "run" or rec.get("stage") != spec.id or rec.get("verdict") != "PASS":
            continue
        prov = rec.get("provenance") or {}
        if not prov.get("gpu") or prov.get("sources") != sources:
            continue
        params = rec.get("params") or {}
        if not all(_same(params.get(k), v) for k, v in compile_params.items()):
            continue
        given = rec.get("variants") or {}
        if not all(_same(given.get(k), v) for k, v in variants.items()):
            continue
        ids.append(str(rec.get("id")))
    return ids


def load_records(runs_dir: Path) -> list[dict]:
    return list(iter_records(runs_dir))
