"""On a GPU: `wb run d --trace` builds stage D with clock stamps, launches it once, writes a
trace file Perfetto loads, and the traced build computes the untraced build's bits."""

import json

import pytest

from conftest import run_wb
from workbench.run import timeline

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("causal, wgs", [("true", 2), ("false", 3)])
def test_wb_run_trace_of_stage_d(fmha_ws, causal, wgs):
    proc = run_wb("run", "d", "--d", "64", "--n", "2048", "-p", f"causal={causal}", "-f", "random", "--seeds", "1", "--trace", "--json", cwd=fmha_ws)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    found = record["trace"]
    assert "error" not in found, found
    assert found["lanes"] == ["producer"] + [f"WG{w}" for w in range(1, wgs + 1)]
    assert all(v == 0 for v in found["bits_differing_from_untraced"].values()), found["bits_differing_from_untraced"]
    assert found["ctas"] > 0 and found["tiles_per_cta"][0] >= 1
    assert 0 < found["cta_end_first_ns"] <= found["cta_end_last_ns"] < 1e8
    events = json.loads((fmha_ws / "runs" / record["id"] / "trace.json").read_text())
    assert timeline.validate(events) == []
