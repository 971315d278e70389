"""Stage D's consumer schedules and the defaults chosen by measurement, on CPU.

What a CPU can prove (no GPU here; CUTE_DSL_ARCH=sm_90a):
  * every configuration compiles (d 64/128, bf16/fp16, causal, GQA, identity softmax, the
    tuning variants) and keeps the probed layouts and the P hand-over proof;
  * with ``k_release=pinned`` the SASS of the overlap schedules has every MUFU.EX2 of the
    softmax between ``WARPGROUP.DEPBAR.LE gsb0, 0x1`` (S ready) and ``... 0x0`` (PV done),
    no spills and no wgmma serialization (ptxas C7513). (On an H200 the FlashAttention-4
    order, ``k_release=early``, which lets ptxas put most exp2s after the PV wait, was 2-3%
    faster all the same: it is the default);
  * the auto defaults are the ones docs/perf-notes.md measured fastest.

Speed and GPU correctness: benchmarks/gpu_tune_d.sh (one GPU call per phase)."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

from workbench.compile.resources import find_nvdisasm  # noqa: E402


def _params(**kw):
    from workbench.kernels.stage import Params

    return Params(kw)


def test_stage_d_defaults_follow_the_measurements():
    """auto picks what measured fastest (docs/perf-notes.md, tuning rounds 2 and 3):
    pingpong; 3 consumer WGs (192-row Q tiles) for d=64 non-causal, 2 otherwise (3 were
    slower for causal d=64); longest-first tile order for causal; persistent, dynamic when
    causal and at d=96 and 128, the last wave split along the keys where dynamic and non-causal;
    K released early and O rescaled at the step's end."""
    import yaml

    from stages.fmha import split_kv
    from stages.fmha.stage_d_fmha import StageD, kernel_options
    from workbench.errors import UserError

    # kernel.yaml is the one list of choices: unset variants take its first value (auto)
    y = yaml.safe_load((ROOT / "stages" / "fmha" / "kernel.yaml").read_text())
    d = next(s for s in y["stages"] if s["letter"] == "d")
    assert d["variants"]["schedule"][0] == "auto"
    assert kernel_options({})["schedule"] == "auto"
    assert kernel_options({"schedule": "overlap"})["schedule"] == "overlap"
    with pytest.raises(UserError, match="schedule=fast"):
        kernel_options({"schedule": "fast"})

    def kernel(d, causal, params=None, **variants):
        p = _params(m=100, n=100, d=d, dtype="bf16", batch=1, heads=2, kv_heads=1, causal=causal, **(params or {}))
        return StageD().make_kernel(p, variants)

    k = kernel(128, False)
    assert (k.schedule, k.num_consumer_wg, k.tile_m, k.lpt, k.persistent) == ("pingpong", 2, 128, False, True)
    assert (k.k_release, k.o_rescale) == ("early", "end")
    k = kernel(128, True)
    assert (k.persistent, k.dynamic, k.lpt) == (True, True, True)
    k = kernel(128, True, persistent="off")
    assert (k.persistent, k.dynamic) == (False, False)
    # d = 128 non-causal: the global counter too (H100 +0.3-1.3 % over round robin, round 16)
    # d = 96 non-causal: the global counter against one CTA per tile, fp16 +2-4 % (round 17)
    # d = 192 and 256 non-causal: the global counter for the split tail's few-wave gain (round 21);
    # d = 64 non-causal for the short tile its WGs share (round 22)
    assert [kernel(d, False).dynamic for d in (64, 96, 128, 192, 256)] == [True, True, True, True, True]
    assert all(kernel(d, False).persistent for d in (64, 96, 128, 192, 256))
    assert kernel(96, True).dynamic and kernel(256, False, persistent="on").persistent
    k = kernel(64, False)
    assert (k.schedule, k.num_consumer_wg, k.tile_m, k.num_threads, k.consumer_regs) == ("pingpong", 3, 192, 512, 160)
    assert k.two_masked is False
    k = kernel(64, True)
    assert (k.schedule, k.num_consumer_wg, k.lpt) == ("pingpong", 2, True)
    assert kernel(128, True, tile_order="natural").lpt is False
    assert kernel(128, False, schedule="serial").schedule == "serial"
    assert kernel(64, False, consumers="2").schedule == "pingpong"
    # causal 192-row Q tiles: the first two visited KV tiles take the mask (mask.py)
    k = kernel(64, True, consumers="3")
    assert (k.tile_m, k.two_masked) == (192, True)
    assert kernel(64, True).two_masked is False
    # one Q slot per consumer WG unless q_buffers=2 (measured no faster: a variant)
    assert (kernel(128, False).q_stages, kernel(64, False).q_stages) == (2, 3)
    assert kernel(64, False, q_buffers="2").q_stages == 6
    # the split-KV tail wherever the kernel is dynamic, non-causal and fixed-length: d = 96 to 256
    # non-causal by default (H100: +34 % at d = 128 s = 4096 with 5 heads, batch 1; round 18), cutting
    # only launches of few waves at d = 192 and 256 (round 21); d = 64 shares its short tile instead
    assert [kernel(d, False).split_tail for d in (64, 96, 128, 192, 256)] == [False, True, True, True, True]
    assert [kernel(d, False).split_max_waves for d in (96, 128, 192, 256)] == [0, 0, split_kv.FEW_WAVES, split_kv.FEW_WAVES]
    # d = 192 and 256 stay as before where the launch is not plain: a window, paged, V narrower than K
    # (d = 256 then one CTA per tile: persistent=off measured faster there)
    windowed, paged = kernel(256, False, {"window_left": 300}), kernel(256, False, {"page_size": 16})
    assert (windowed.persistent, paged.persistent, windowed.split_tail) == (False, False, False)
    assert not kernel(192, False, {"dv": 128}).dynamic and kernel(192, False, {"page_size": 16}).walk
    assert not kernel(128, True).split_tail and not kernel(128, False, persistent="on").split_tail
    assert kernel(64, False, short_tile="whole").split_tail and not kernel(128, False, split_tail="off").split_tail
    with pytest.raises(UserError, match="split_tail=on needs persistent=dynamic, no causal mask or window"):
        kernel(64, True, persistent="on", split_tail="on")
    # the short tile shared by the WGs (short_tile.py): d = 64 non-causal's 3 WGs and 3 ring stages
    # only, never with the split-KV tail; auto shares it wherever the scheduler is dynamic (round 22)
    assert [kernel(d, False).short_split for d in (64, 96, 128, 192, 256)] == [True, False, False, False, False]
    assert not kernel(64, False, persistent="on").short_split and not kernel(64, False, {"window_left": 300}).short_split
    shared = kernel(64, False, persistent="dynamic", short_tile="split")
    assert shared.short_split and not shared.split_tail and shared.kv_stages == shared.num_consumer_wg == 3
    with pytest.raises(UserError, match="short_tile=split needs 3 consumer WGs"):
        kernel(128, False, short_tile="split")
    with pytest.raises(UserError, match="short_tile=split needs no causal mask or window"):
        kernel(64, False, {"window_left": 300}, short_tile="split")
    with pytest.raises(UserError, match="split_tail=on needs short_tile=whole"):
        kernel(64, False, persistent="dynamic", short_tile="split", split_tail="on")

D_COMPILES = [
    (128, "bf16", False, 4, 4, {"schedule": "overlap"}),
    (128, "fp16", True, 8, 2, {"schedule": "overlap"}),
    (64, "bf16", True, 4, 2, {"schedule": "overlap"}),
    (64, "fp16", False, 6, 2, {"schedule": "overlap", "consumers": "2"}),
    (128, "bf16", True, 4, 2, {"schedule": "pingpong"}),
    (64, "bf16", False, 4, 4, {"schedule": "pingpong", "consumers": "2"}),
    (64, "bf16", False, 4, 2, {}),  # the default: 3 consumer WGs, pingpong
    (64, "bf16", False, 4, 2, {"consumers": "3", "schedule": "serial"}),
    (64, "bf16", True, 4, 2, {"consumers": "3"}),  # causal 192-row Q tiles, two masked visits
    (64, "fp16", True, 4, 4, {"consumers": "3", "schedule": "serial", "persistent": "off"}),
    (64, "bf16", False, 4, 2, {"q_buffers": "2"}),
    (128, "fp16", True, 4, 2, {"q_buffers": "2"}),
    (64, "fp16", False, 4, 2, {"consumers": "3", "kv_load": "k_ahead"}),
    (128, "bf16", True, 4, 2, {"tile_order": "lpt", "o_rescale": "end", "kv_load": "k_ahead"}),
    (128, "bf16", False, 4, 2, {"persistent": "dynamic"}),
    (64, "fp16", False, 4, 2, {"persistent": "dynamic", "split_tail": "on", "short_tile": "whole"}),  # 3 WGs' partials
    (64, "bf16", False, 4, 2, {"persistent": "dynamic", "short_tile": "split"}),  # the WGs share a short tile
    (64, "fp16", True, 4, 4, {"persistent": "off"}),
    (128, "bf16", True, 4, 2, {"softmax": "identity", "schedule": "overlap"}),
    (64, "fp16", False, 2, 1, {"softmax": "identity", "schedule": "pingpong"}),
]


@pytest.mark.parametrize("d,dtype,causal,heads,kv_heads,variants", D_COMPILES, ids=lambda x: str(x))
def test_stage_d_new_schedules_compile(d, dtype, causal, heads, kv_heads, variants):
    from workbench.compile.probe import capture

    from stages.fmha.stage_d_fmha import StageD

    p = _params(m=1000, n=17, d=d, dtype=dtype, batch=2, heads=heads, kv_heads=kv_heads, causal=causal)
    with capture() as records:
        compiled = StageD().compile(p, variants, "sm_90a")
    probes = {r["name"]: r["layout"] for r in records}
    assert compiled.fn is not None
    assert "verified" in compiled.p_check
    assert (compiled.heads, compiled.kv_heads, compiled.causal) == (heads, kv_heads, causal)
    assert probes["tSrS"] == "((2,2,16),1,1):((1,2,4),0,0)"
    assert probes["tOrP"] == "((2,2,2),1,8):((1,2,4),0,8)"


# --------------------------------------------------------------------------------------
# SASS: the softmax runs under the PV WGMMA
# --------------------------------------------------------------------------------------
def loop_ex2_placement(sass: str) -> list[tuple[int, int]]:
    """For each ``DEPBAR.LE gsb0, 0x1`` (wait for S with the PV MMA still in flight): the
    MUFU.EX2 count up to the next ``DEPBAR.LE gsb0, 0x0``, and after it up to the next
    HGMMA/EXIT."""
    ins = [line for line in sass.splitlines() if re.search(r"/\*[0-9a-f]{4}\*/", line)]
    out = []
    for i, line in enumerate(ins):
        if "DEPBAR.LE gsb0, 0x1" not in line:
            continue
        j, before = i + 1, 0
        while j < len(ins) and "DEPBAR.LE gsb0, 0x0" not in ins[j]:
            before += "MUFU.EX2" in ins[j]
            j += 1
        k, after = j + 1, 0
        while k < len(ins) and "HGMMA" not in ins[k] and "EXIT" not in ins[k]:
            after += "MUFU.EX2" in ins[k]
            k += 1
        out.append((before, after))
    return out



@pytest.mark.skipif(find_nvdisasm() is None, reason="nvdisasm not installed (pip install 'cute-wb[sass]')")
@pytest.mark.slow  # eight cold sm_90a compiles of stage D (--keep forces them)
@pytest.mark.parametrize(
    "d,dtype,causal,schedule",
    [
        (128, "bf16", False, "overlap"),
        (128, "bf16", True, "overlap"),
        (128, "fp16", True, "pingpong"),
        (128, "bf16", False, "pingpong"),
        (64, "bf16", False, "overlap"),
        (64, "fp16", False, "overlap"),  # fp16 once made ptxas serialize every wgmma (C7513)
        (64, "bf16", True, "pingpong"),
        (64, "fp16", True, "pingpong"),
    ],
    ids=lambda x: str(x),
)
def test_softmax_runs_under_the_pv_mma(fmha_ws, wb, d, dtype, causal, schedule):
    # 2 consumer WGs: with 3 (d=64's default) the overlap schedules spill (160 registers)
    proc = wb("compile", "d", "-p", f"d={d}", "-p", f"dtype={dtype}", "-p", f"causal={str(causal).lower()}",
              "-V", f"schedule={schedule}", "-V", "consumers=2", "-V", "k_release=pinned", "-V", "o_rescale=mid", "-V", "persistent=off",
              "--keep", "sass,ptx", "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    found = rec["sass"]["instructions"]
    assert any(name.startswith("HGMMA") for name in found), found
    (kernel,) = rec["resources"]["kernels"]
    assert kernel["spill_store_bytes"] == 0 and kernel["spill_load_bytes"] == 0, kernel
    # serialized wgmma shows as a WARPGROUP.ARRIVE/DEPBAR pair around every HGMMA (serial: 8)
    assert found.get("WARPGROUP", 0) <= 8, found
    arts = {Path(k).suffix: fmha_ws / v for k, v in rec["artifacts"].items()}
    placement = loop_ex2_placement(arts[".sass"].read_text())
    assert placement, "no DEPBAR.LE gsb0, 0x1: the overlap loop is missing"
    # 2 rows x 32 columns of P per thread + 2 alphas = 66 exp2 per tile and thread
    for before, after in placement:
        assert before >= 64 and after == 0, placement
    ptxas = shutil.which("ptxas")
    if ptxas:
        import subprocess

        res = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(arts[".ptx"]), "-o", os.devnull],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "C7513" not in res.stderr, "ptxas serialized the wgmma: " + res.stderr[-1000:]
