"""Stage D's ``cluster=2``: two CTAs of a cluster on neighbouring Q tiles of one (batch, head),
each loading half of every K and V tile and multicasting it into both. On CPU: the one-line
refusals where a cluster's CTAs would not visit the same KV tiles in step, what ``auto``
becomes under it, and the sm_90a compile (multicast loads in the SASS, no spill). GPU:
benchmarks/gpu_tune_d.sh cluster (docs/perf-notes.md round 31)."""

import json
import os

import pytest

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
cutlass = pytest.importorskip("cutlass")


def make(**kw):
    from stages.fmha.fmha_forward import FmhaForward

    return FmhaForward(cutlass.BFloat16, kw.pop("d", 128), 4, 4, **kw)


@pytest.mark.parametrize("kw,why", [
    ({"causal": True}, "no causal mask or window"),
    ({"window_left": 256}, "no causal mask or window"),
    ({"varlen": True}, "fixed lengths"),
    ({"page_size": 64}, "no paged KV"),
    ({"persistent": "dynamic"}, "persistent=on or off"),
])
def test_cluster_is_refused_where_its_ctas_would_not_walk_the_same_kv_tiles(kw, why):
    with pytest.raises(ValueError, match=f"cluster=2 needs .*{why}"):
        make(cluster=2, **kw)
    with pytest.raises(ValueError, match="cluster must be 1 or 2, not 4"):
        make(cluster=4)


def test_cluster_takes_round_robin_and_leaves_the_dynamic_schedulers_pieces_off():
    """auto persistence is round robin under a cluster (an even grid keeps a cluster's tiles
    neighbours), so the split tail and the shared short tile (dynamic only) are off; the
    kernel's name says so; cluster=1 is the default kernel, unchanged."""
    k = make(cluster=2)
    assert (k.cluster_m, k.persistent, k.dynamic, k.walk, k.split_tail) == (2, True, False, True, False)
    assert str(k).endswith("_128x128_rr_c2")
    assert not make(d=64, cluster=2).short_split
    assert not make(cluster=2, persistent="off").persistent
    plain = make()
    assert (plain.cluster_m, plain.dynamic) == (1, True) and not str(plain).endswith("_c2")


def test_wb_refuses_a_causal_cluster_in_one_line(fmha_ws, wb):
    proc = wb("compile", "d", "-p", "causal=true", "-V", "cluster=2", cwd=fmha_ws)
    last = proc.stderr.strip().splitlines()[-1]  # (after the compile's progress line)
    assert proc.returncode == 2 and last == "wb: error: fmha/stage-d: cluster=2 needs no causal mask or window", proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # cold sm_90a compiles of stage D's three d = 128 kernels
def test_cluster_kernels_multicast_k_and_v_without_spilling(fmha_ws, wb):
    """Each kernel of d = 128 non-causal (the default and both long kernels) issues its K and V
    loads as multicast TMA (Q's stay plain) and fits its registers."""
    proc = wb("compile", "d", "--d", "128", "-V", "cluster=2", "--keep", "sass", "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    kernels = rec["resources"]["kernels"]
    assert len(kernels) == 3 and all((k["spill_store_bytes"], k["spill_load_bytes"]) == (0, 0) for k in kernels), kernels
    sass = [fmha_ws / v for k, v in rec["artifacts"].items() if k.endswith(".sass")]
    assert len(sass) == 3
    for path in sass:
        text = path.read_text()
        assert text.count("UTMALDG.4D.MULTICAST") >= 4, path  # K and V, at least two boxes each
        assert "UTMALDG.4D " in text  # Q: a plain load
