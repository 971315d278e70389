"""The `cutlass-example` bench peer (stages/fmha/peer_cutlass.py).

CPU: without WB_CUTLASS_EXAMPLES (or with a wrong path) make_peer returns None and wb bench
says how to set it. With a CUTLASS checkout's examples/python/CuTeDSL in WB_CUTLASS_EXAMPLES
(the only place these tests look for it; skipped when unset), the adapter compiles the
example's kernel for sm_90a from CPU tensors. GPU: its O matches torch SDPA.
"""

import importlib.util
import math
import os
from pathlib import Path

import pytest

from stages.fmha import peer_cutlass, peers
from workbench.run.bench import BenchJob

torch = pytest.importorskip("torch")

EXAMPLES = os.environ.get("WB_CUTLASS_EXAMPLES") or ""
have_example = pytest.mark.skipif(
    not (EXAMPLES and (Path(EXAMPLES).expanduser() / peer_cutlass.EXAMPLE).is_file()) or importlib.util.find_spec("cutlass") is None,
    reason=f"needs nvidia-cutlass-dsl and WB_CUTLASS_EXAMPLES set to a CUTLASS checkout's examples/python/CuTeDSL (with {peer_cutlass.EXAMPLE})",
)


def _inputs(b=1, s=128, h=2, kv_heads=2, d=64, dtype=torch.bfloat16, device="cpu"):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, s, h, d, generator=g).to(dtype)
    k = torch.randn(b, s, kv_heads, d, generator=g).to(dtype)
    v = torch.randn(b, s, kv_heads, d, generator=g).to(dtype)
    return {"q": q.to(device), "k": k.to(device), "v": v.to(device)}


def test_unset_env_means_not_installed(monkeypatch):
    monkeypatch.delenv("WB_CUTLASS_EXAMPLES", raising=False)
    assert peers.make_peer("cutlass-example", _inputs(), {"causal": False}) is None
    assert "set WB_CUTLASS_EXAMPLES" in peers.missing_note("cutlass-example")
    assert peers.missing_note("fa4") is None


def test_wrong_path_means_not_installed(monkeypatch, tmp_path):
    monkeypatch.setenv("WB_CUTLASS_EXAMPLES", str(tmp_path))
    assert peers.make_peer("cutlass-example", _inputs(), {"causal": True}) is None
    note = peers.missing_note("cutlass-example")
    assert str(tmp_path) in note and "fmha.py" in note


def test_bench_records_the_note_as_a_skip(monkeypatch):
    monkeypatch.delenv("WB_CUTLASS_EXAMPLES", raising=False)
    got = BenchJob.make_peer(peers, "cutlass-example", _inputs(), {"causal": False})
    assert got == {"skipped": "not installed: set WB_CUTLASS_EXAMPLES to the examples/python/CuTeDSL folder of a CUTLASS checkout"}


def test_cli_knows_the_peer(fmha_ws, wb):
    out = wb("bench", "--peers", "nope", cwd=fmha_ws)
    assert out.returncode != 0
    assert "cutlass-example" in out.stdout + out.stderr


@pytest.fixture
def example(monkeypatch):
    monkeypatch.setenv("WB_CUTLASS_EXAMPLES", EXAMPLES)
    module = peer_cutlass.load_example()
    assert module is not None
    return module


class _Hopper:
    """The example's persistent grid asks the driver for the SM count at trace time."""

    def get_device_multiprocessor_count(self):
        return 132


@have_example
@pytest.mark.slow
@pytest.mark.parametrize(
    "d,causal,dtype,s,kv_heads",
    [(64, False, torch.bfloat16, 128, 2), (128, True, torch.float16, 200, 1), (64, False, torch.bfloat16, 200, 1)],
)
def test_compiles_for_sm90a_without_gpu(example, monkeypatch, d, causal, dtype, s, kv_heads):
    monkeypatch.setattr(example.fmha_utils, "HardwareInfo", _Hopper)
    x = _inputs(b=2, s=s, h=2, kv_heads=kv_heads, d=d, dtype=dtype)
    peer = peer_cutlass.ExamplePeer(example, x["q"], x["k"], x["v"], causal, 1 / math.sqrt(d), arch="sm_90a")
    assert peer.compiled is not None
    assert peer.o.shape == x["q"].shape and peer.lse.shape == (2, s, 2, 1)


@have_example
@pytest.mark.parametrize(
    "x,message",
    [
        (_inputs(d=96), "d=96"),
        (_inputs(dtype=torch.float32), "bf16 or fp16"),
        (_inputs(h=3, kv_heads=2), "divisible"),
    ],
)
def test_unsupported_cases_say_why(example, x, message):
    with pytest.raises((ValueError, NotImplementedError), match=message):
        peer_cutlass.check_case(example, x["q"], x["k"], x["v"], False, 0.125)


@pytest.mark.gpu
@have_example
@pytest.mark.parametrize(
    "d,causal,dtype,s,kv_heads",
    [(64, False, torch.bfloat16, 256, 4), (128, True, torch.bfloat16, 384, 4), (128, False, torch.float16, 200, 2)],
)
def test_matches_sdpa_on_gpu(monkeypatch, d, causal, dtype, s, kv_heads):
    import torch.nn.functional as F

    monkeypatch.setenv("WB_CUTLASS_EXAMPLES", EXAMPLES)
    x = _inputs(b=2, s=s, h=4, kv_heads=kv_heads, d=d, dtype=dtype, device="cuda")
    run = peers.make_peer("cutlass-example", x, {"causal": causal})
    o = run()
    torch.cuda.synchronize()
    q, k, v = (x[n].transpose(1, 2).float() for n in ("q", "k", "v"))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=kv_heads != 4).transpose(1, 2)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o.float(), ref, atol=2e-2, rtol=2e-2)
