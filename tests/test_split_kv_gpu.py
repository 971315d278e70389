"""On a GPU: stage D's split-KV tail (``-V split_tail=on``, auto's choice at d = 96 and 128
non-causal; stages/fmha/split_kv.py).

* Where a 132-CTA grid leaves a last, partial wave (m = 4096 with 5 heads: 160 work tiles of
  128 rows; 7 heads for the 192-row tiles of d = 64 and 96), the kernel cuts it in exactly
  the pieces ``split_kv.pieces_for`` predicts: every slot of the workspace sized for them is
  written and every arrival count is back at zero after the launch (the next launch's).
* Its O and LSE are the unsplit kernel's up to rounding, and as close to the fp32 reference.
* Where the tiles fill whole waves, nothing past the scheduler's counters is asked for.
* A launch whose arrival counts outnumber the last one's (d = 96's 3 WGs after d = 128's 2) is
  right on the buffer that launch left its partials in.
* The pieces are added in piece order whichever arrives last, so a cutting launch gives the
  same bits every time, and launches on two streams at once (each stream its own buffer) give
  the launch alone's bits.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CPU machines
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from stages.fmha import reference, split_kv  # noqa: E402
from stages.fmha import stage_d_fmha as sd  # noqa: E402
from workbench.kernels.stage import Params  # noqa: E402

from stage_d_gpu import launch, nan_outputs, random_inputs  # noqa: E402


def _params(**kw):
    base = dict(m=4096, n=1000, d=128, dtype="bf16", batch=1, heads=5, kv_heads=1, causal=False)
    base.update(kw)
    return Params(base)


CASES = [  # d, heads, n, dtype, extra variants, softcap
    (128, 5, 1000, "bf16", {}, 0.0),
    (128, 5, 300, "fp16", {}, 0.0),
    (128, 5, 4100, "bf16", {}, 30.0),
    (128, 5, 8192, "bf16", {}, 0.0),  # the 128 x 176 long kernel, O staged in Q
    (64, 7, 1000, "bf16", {"persistent": "dynamic"}, 0.0),  # 3 consumer WGs
    (96, 7, 1000, "fp16", {}, 0.0),  # P through shared memory
    (256, 5, 1000, "bf16", {"persistent": "dynamic"}, 0.0),  # O staged in Q, lazy rescale
]


@pytest.mark.parametrize("d,heads,n,dtype,variants,softcap", CASES, ids=lambda x: str(x))
def test_split_tail_cuts_as_planned_and_matches_the_unsplit_kernel(d, heads, n, dtype, variants, softcap):
    st = sd.StageD()
    p = _params(d=d, heads=heads, n=n, dtype=dtype, softcap=softcap)
    inputs = random_inputs(p)
    plain = st.compile(p, {**variants, "split_tail": "off"}, "sm_90a")
    split = st.compile(p, {**variants, "split_tail": "on"}, "sm_90a")
    assert split.split_tail and not plain.split_tail

    n_sms = sd.sm_count(inputs["q"].device)
    words = sd.split_words(split, inputs["q"], n, n_sms)
    tiles = -(-p.m // split.tile_m) * heads
    tail = split_kv.tail_of(tiles, min(tiles, n_sms))
    wgs = split.tile_m // 64
    slot = split_kv.slot_words(64 * d // 128, 2)
    assert tail > 0 and words > split_kv.COUNTERS, (tiles, n_sms)
    k = (words - split_kv.PARTIALS_BASE) // (tail * wgs * slot)
    assert k >= 2

    buf = sd.tile_counter(inputs["q"].device, words)
    buf.zero_()
    want = launch(st, plain, p, inputs)
    got = launch(st, split, p, inputs)
    for _ in range(5):  # the same bits every launch: the pieces are added in piece order
        again = launch(st, split, p, inputs)
        assert all(torch.equal(again[name], got[name]) for name in got), "a cutting launch's bits changed between launches"

    counts = buf[split_kv.COUNTERS: split_kv.COUNTERS + tail * wgs]
    assert int(counts.abs().sum()) == 0, "an arrival count was left non-zero"
    assert int(buf[0]) == 0 and int(buf[1]) == 0, "the scheduler's counters were left non-zero"
    base = split_kv.PARTIALS_BASE
    slots = buf[base: base + tail * k * wgs * slot].view(tail * k * wgs, slot)
    unwritten = (slots == 0).all(dim=1).nonzero().flatten().tolist()
    assert not unwritten, f"slots never written (the kernel cut in fewer than {k} pieces?): {unwritten[:8]}"

    o_ref, lse_ref = reference.attention_bshd(
        inputs["q"], inputs["k"], inputs["v"], torch.float32, causal=False, softcap=softcap,
    )
    for name, ref in (("o", o_ref), ("lse", lse_ref)):
        a, b = got[name].float(), want[name].float()
        assert torch.isfinite(a).all(), name
        err_split = (a - ref.float()).abs().max().item()
        err_plain = (b - ref.float()).abs().max().item()
        assert err_split <= 1.5 * err_plain + 1e-3, (name, err_split, err_plain)
        assert (a - b).abs().max().item() <= (2e-2 if name == "o" else 1e-3), name


def test_whole_waves_ask_for_no_workspace():
    st = sd.StageD()
    p = _params(heads=4, m=4096, n=1000)  # 128 tiles: one partial wave, nothing to cut
    inputs = random_inputs(p)
    split = st.compile(p, {"split_tail": "on"}, "sm_90a")
    assert sd.split_words(split, inputs["q"], p.n, sd.sm_count(inputs["q"].device)) == split_kv.COUNTERS
    out = launch(st, split, p, inputs)
    assert torch.isfinite(out["o"].float()).all()


def test_a_launch_with_more_counts_is_right_after_one_that_left_partials():
    # the H100 perf sweep of 2026-12-06: d = 128 s = 4096 then d = 96 s = 8192 (fp16) on one
    # grown buffer; d = 96's counts lay on d = 128's stale partials and 130 WGs never stored
    st = sd.StageD()
    first = _params(d=128, heads=5, n=4096)
    second = _params(d=96, heads=7, n=4096)
    a_in, b_in = random_inputs(first), random_inputs(second)
    a = st.compile(first, {"split_tail": "on"}, "sm_90a")
    b = st.compile(second, {"split_tail": "on"}, "sm_90a")
    n_sms = sd.sm_count(a_in["q"].device)
    words = max(sd.split_words(a, a_in["q"], first.n, n_sms), sd.split_words(b, b_in["q"], second.n, n_sms))
    tiles_a = -(-first.m // a.tile_m) * first.heads
    tiles_b = -(-second.m // b.tile_m) * second.heads
    counts_a = split_kv.tail_of(tiles_a, n_sms) * (a.tile_m // 64)
    counts_b = split_kv.tail_of(tiles_b, n_sms) * (b.tile_m // 64)
    assert counts_b > counts_a, (counts_a, counts_b)  # the second counts past the first's counts
    buf = sd.tile_counter(a_in["q"].device, words)
    buf.zero_()
    launch(st, a, first, a_in)
    assert int(buf[split_kv.PARTIALS_BASE:].abs().sum()) > 0  # partials were left behind
    got = launch(st, b, second, b_in)
    o_ref, lse_ref = reference.attention_bshd(b_in["q"], b_in["k"], b_in["v"], torch.float32, causal=False)
    assert torch.isfinite(got["lse"].float()).all(), "rows never written"
    assert (got["o"].float() - o_ref.float()).abs().max().item() < 2e-2
    assert int(buf[split_kv.COUNTERS: split_kv.PARTIALS_BASE].abs().sum()) == 0


def test_launches_on_two_streams_at_once_each_use_their_own_counters():
    # wb's launcher keeps one counter buffer per (device, stream): two launches at once, each
    # cutting its last wave, neither takes the other's tiles or counts on its partials
    st = sd.StageD()
    p = _params(d=128, heads=5, n=4096)
    inputs = [random_inputs(p, seed=s) for s in (1, 2)]
    split = st.compile(p, {"split_tail": "on"}, "sm_90a")
    want = [launch(st, split, p, x) for x in inputs]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    got = [[], []]
    for _ in range(10):
        for i, s in enumerate(streams):
            with torch.cuda.stream(s):
                outs = nan_outputs(st, p)
                st.launch(split, inputs[i], outs)
                got[i].append(outs)
    for s in streams:
        torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    # bit-equal: the last piece of a split tile to arrive adds every piece in piece order, so
    # which arrives last does not show; a tile the other launch took would stay NaN
    for i in range(2):
        bad = [j for j, o in enumerate(got[i]) if not (torch.equal(o["o"], want[i]["o"]) and torch.equal(o["lse"], want[i]["lse"]))]
        assert not bad, f"stream {i}: launches {bad} differ from the launch alone"
