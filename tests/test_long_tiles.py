"""Causal d=64 builds two kernels (stages/fmha/geometry.long_consumers): the 128-row one and,
beside it, the 192-row one (3 consumer WGs) that runs from LONG_M query rows on. On the CPU:
which configurations get the second kernel, that the stage's compile returns both under two
kernel names and picks by m, that `wb shapes` lists the first build's probes only, and that
the exported op (stages/fmha/export_op.py, run here with stand-in functions) picks as the
stage does. The speed that justifies it is measured on a GPU (docs/perf-notes.md)."""

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stages.fmha import export_op  # noqa: E402
from stages.fmha import geometry  # noqa: E402


@pytest.mark.parametrize(
    "d, causal, windowed, varlen, paged, expected",
    [
        (64, True, False, False, False, 3),
        (64, False, False, False, False, None),  # non-causal d=64 is 192-row already
        (128, True, False, False, False, None),
        (96, True, False, False, False, None),
        (64, True, True, False, False, None),  # a window: masked steps at both edges
        (64, True, False, True, False, None),  # varlen would choose by max_seqlen_q: not measured
        (64, True, False, False, True, None),
    ],
)
def test_only_causal_d64_fixed_length_without_a_window_gets_the_long_kernel(d, causal, windowed, varlen, paged, expected):
    assert geometry.long_consumers(d, causal, windowed, varlen, paged) == expected


def _params(**over):
    from workbench.kernels.stage import Params

    p = {"d": 64, "dtype": "bf16", "heads": 4, "kv_heads": 4, "causal": True, "m": 1024, "n": 1024, "batch": 2,
         "align": "top_left", "window_left": -1, "window_right": -1, "softcap": 0.0, "varlen": False,
         "seqlens": "", "seqlens_k": "", "page_size": 0}
    p.update(over)
    return Params(p)


def test_the_stage_compiles_both_kernels_under_two_names_and_picks_by_m():
    pytest.importorskip("cutlass")
    from stages.fmha import host
    from stages.fmha.stage_d_fmha import StageD
    from workbench.compile.probe import capture, with_keys
    from workbench.compile.trace import tracing

    stage = StageD()
    with capture("d") as both_probes, tracing("d", "sm_90a") as state:
        both = stage.compile(_params(), host.variants_of("d", {}), "sm_90a")
    assert both.fn_long is not None and both.long_m == geometry.LONG_M == 4096
    assert both.for_rows(4095) is both.fn and both.for_rows(4096) is both.fn_long
    names = [k.name for k in state.kernels]
    assert len(names) == 2 and "FmhaForward_128x128_" in names[0] and "FmhaForward_192x128_" in names[1], names
    # the probes are the 128-row build's alone: the same keys and layouts as consumers=2 by itself
    with capture("d") as short_probes, tracing("d", "sm_90a"):
        short = stage.compile(_params(), host.variants_of("d", {"consumers": "2"}), "sm_90a")
    assert short.fn_long is None and short.for_rows(8192) is short.fn
    assert [(r["key"], r["layout"]) for r in with_keys(list(both_probes))] == [
        (r["key"], r["layout"]) for r in with_keys(list(short_probes))
    ]


def _fake_fns(with_long=True):
    calls = []

    def make(name):
        def fn(q, *rest):
            calls.append((name, q.shape[1]))
        return fn

    fns = {"fn": (make("fn"), {})}
    if with_long:
        fns["fn_long"] = (make("fn_long"), export_op.piece_info("fn_long", None, type("C", (), {"long_m": 4096})()))
    return fns, calls


def test_the_exported_op_launches_the_long_kernel_from_min_m_rows_on():
    dev = torch.device("cpu")
    export_op._per_device[dev] = (torch.zeros(2, dtype=torch.int32), 132, torch.empty(1))  # no CUDA here
    try:
        fns, calls = _fake_fns()
        assert fns["fn_long"][1] == {"min_m": 4096} and export_op.piece_info("fn", None, None) == {}
        for m in (1, 4095, 4096, 9000):
            q = torch.empty(1, m, 2, 64, dtype=torch.bfloat16)
            k = torch.empty(1, 64, 2, 64, dtype=torch.bfloat16)
            o, lse = export_op.launch(fns, q, k, k, causal=True)
            assert o.shape == q.shape and lse.shape == (1, 2, m)
        assert calls == [("fn", 1), ("fn", 4095), ("fn_long", 4096), ("fn_long", 9000)]
        only, calls = _fake_fns(with_long=False)  # every other configuration: fn for every m
        export_op.launch(only, torch.empty(1, 8192, 2, 64, dtype=torch.bfloat16), k, k)
        assert calls == [("fn", 8192)]
    finally:
        export_op._per_device.pop(dev, None)
        export_op._lse_like.clear()
