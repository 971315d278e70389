"""On a GPU: `wb run d --trace` and `wb run moe/c --trace` build the kernel with clock stamps,
launch it once, write a trace file Perfetto loads, and the traced build computes the
untraced build's bits."""

import json

import pytest

from conftest import run_wb
from workbench.run import timeline

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("causal, wgs", [("true", 2), ("false", 3)])
def test_wb_run_trace_of_stage_d(fmha_ws, causal, wgs):
    """d = 64 at n = 1000: non-causal, the last Q tile's 40 rows are a short tile the untraced
    default shares between its WGs and the traced build does not, so the bits are compared
    with an untraced short_tile=whole build."""
    proc = run_wb("run", "d", "--d", "64", "--n", "1000", "-p", f"causal={causal}", "-f", "random", "--seeds", "1", "--trace", "--json", cwd=fmha_ws)
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


def test_a_launch_that_splits_its_last_wave_is_traced_unsplit_and_compared_with_its_unsplit_twin(fmha_ws):
    """d = 128 non-causal at 2048 work tiles (15.5 per CTA on 132 SMs): the untraced default
    splits the last wave along the keys, the traced build cannot; the trace says so and its
    bits equal an untraced split_tail=off build's (against the run's own build, 441993 O and
    553 LSE elements differed: round 25)."""
    proc = run_wb("run", "d", "--d", "128", "--n", "4096", "-p", "batch=4", "-p", "heads=16", "-p", "causal=false",
                  "-f", "random", "--seeds", "1", "--trace", "--json", cwd=fmha_ws)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    found = record["trace"]
    assert "error" not in found, found
    assert all(v == 0 for v in found["bits_differing_from_untraced"].values()), found["bits_differing_from_untraced"]
    assert found["tiles_per_cta"][1] >= 15
    events = json.loads((fmha_ws / "runs" / record["id"] / "trace.json").read_text())
    assert "split_tail=off: not traced" in events["otherData"]["title"]
    assert timeline.validate(events) == []


def test_a_configuration_whose_default_is_not_persistent_traces_its_persistent_twin(fmha_ws):
    """d=256 with a sliding window runs one CTA per tile by default (tile_scheduler.persistence;
    without a window it is dynamic since round 21); the per-CTA timeline is laid out for
    persistent CTAs, so --trace builds persistent=on, computes the untraced default's bits and
    says which build it traced."""
    proc = run_wb("run", "d", "--d", "256", "--n", "1024", "-p", "window_left=300", "-f", "random", "--seeds", "1",
                  "--trace", "--json", cwd=fmha_ws)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    found = record["trace"]
    assert "error" not in found, found
    assert all(v == 0 for v in found["bits_differing_from_untraced"].values()), found["bits_differing_from_untraced"]
    events = json.loads((fmha_ws / "runs" / record["id"] / "trace.json").read_text())
    assert "persistent=on: the default, off, has no per-CTA timeline" in events["otherData"]["title"]
    assert timeline.validate(events) == []
    proc = run_wb("run", "d", "--d", "256", "--n", "1024", "-V", "persistent=off", "--trace", cwd=fmha_ws)
    assert proc.returncode == 2 and "persistent=off is not traced" in proc.stderr


def test_wb_run_trace_of_moe_stage_c(fmha_ws):
    """The moe grouped GEMM traced: 768 work tiles over the card's CTAs (several per CTA), the
    producer's and both consumer warpgroups' phases, the same bits as the untraced build."""
    proc = run_wb("run", "moe/c", "-p", "t=8192", "-f", "random", "--seeds", "1", "--trace", "--json", cwd=fmha_ws)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    found = record["trace"]
    assert "error" not in found, found
    assert found["lanes"] == ["producer", "WG1", "WG2"]
    assert all(v == 0 for v in found["bits_differing_from_untraced"].values()), found["bits_differing_from_untraced"]
    assert found["tiles_per_cta"][1] >= 5  # 768 tiles on at most 132 CTAs
    assert {"WG: mainloop (MMA over k)", "producer: load the k slabs"} <= set(found["phase_median_ns"])
    events = json.loads((fmha_ws / "runs" / record["id"] / "trace.json").read_text())
    assert timeline.validate(events) == []
