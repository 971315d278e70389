"""The quack MoE peer (stages/moe/peer_quack.py): the plan it uses (stages/moe/plan.make_plan)
and its combine on the CPU, its refusals, and (GPU) the pipeline against a plain fp32
computation."""

import pytest

torch = pytest.importorskip("torch")

from stages.moe import peer_quack  # noqa: E402
from stages.moe.plan import make_plan  # noqa: E402


def _ids(T, k, E, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.topk(torch.randn(T, E, generator=g), k, dim=-1).indices.to(torch.int32)


def test_plan_sorts_rows_by_expert_stably_and_inverts():
    ids = _ids(37, 3, 6)
    ids[:, 0] = 2  # one expert many tokens pick; expert 5 may be empty
    p = make_plan(ids, 6)
    rows, cu, inverse = p.rows, p.cu_seqlens, p.inverse
    T, k = ids.shape
    assert cu.dtype == rows.dtype == torch.int32
    assert cu[0] == 0 and cu[-1] == T * k
    for e in range(6):
        lo, hi = int(cu[e]), int(cu[e + 1])
        want = [t for t in range(T) for j in range(k) if ids[t, j] == e]  # token order kept
        assert rows[lo:hi].tolist() == want
    for t in range(T):
        for j in range(k):
            p = int(inverse[t, j])
            assert rows[p] == t and cu[ids[t, j]] <= p < cu[ids[t, j] + 1]


def test_combine_weights_each_routed_row_once():
    ids = _ids(11, 2, 4)
    inverse = make_plan(ids, 4).inverse
    out = torch.randn(22, 5)
    w = torch.rand(11, 2)
    want = torch.stack([w[t, 0] * out[inverse[t, 0]] + w[t, 1] * out[inverse[t, 1]] for t in range(11)])
    torch.testing.assert_close(peer_quack.combine(out, inverse, w), want)


def test_refuses_cpu_tensors_and_gptoss_with_a_reason():
    pytest.importorskip("quack.gemm_interface")
    inp = {"x": torch.zeros(4, 8), "w1": torch.zeros(2, 8, 6), "w2": torch.zeros(2, 3, 8),
           "topk_ids": _ids(4, 1, 2), "topk_weights": torch.ones(4, 1)}
    assert peer_quack.make_quack_peer(inp, {}) is None
    assert "CUDA" in peer_quack.missing_note()
    assert peer_quack.make_quack_up_peer(inp, {"activation": "gptoss"}) is None
    assert "clamp" in peer_quack.missing_note()


def test_missing_quack_is_a_note_not_an_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_quack(name, *a, **kw):
        if name.startswith("quack"):
            raise ImportError("no module named quack")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_quack)
    assert peer_quack.make_quack_peer({}, {}) is None
    assert "not importable" in peer_quack.missing_note()


@pytest.mark.gpu
def test_quack_pipeline_matches_fp32_torch():
    pytest.importorskip("quack.gemm_interface")
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "quack_peer_check.py"
    spec = importlib.util.spec_from_file_location("quack_peer_check", path)
    chk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chk)
    inp = chk.make_case(300, 128, 64, 6, 2, empty_expert=True)
    peer = peer_quack.make_quack_peer(inp, {"quack_tuned": "false"})
    assert peer is not None, peer_quack.missing_note()
    ref = chk.torch_moe(inp, torch.float32)
    pt = chk.torch_moe(inp, torch.bfloat16, round_weights=True)
    assert chk.check("moe", peer(), ref, pt)


def test_cutlass_outside_site_packages_is_keyed_by_name():
    """quack 0.6.5 fingerprints any function outside a site-packages path by its globals; a
    cutlass installed with `pip --target /tmp/site` then hits cutlass's ContextVar. After the
    peer's patch a cutlass function there is keyed by name; other code is fingerprinted."""
    identity = pytest.importorskip("quack.gemm_runtime.identity")
    from contextvars import ContextVar

    def fn_in(module, path):
        ns = {"__name__": module, "_VAR": ContextVar("v")}
        exec(compile("def f():\n    return _VAR\n", path, "exec"), ns)
        return ns["f"]

    cut, mine = fn_in("cutlass._mlir_helpers.op", "/tmp/site/cutlass/op.py"), fn_in("mine", "/tmp/site/mine.py")
    peer_quack._quack()
    assert identity.function_semantic_key(cut)[0] == "extern_function"
    with pytest.raises(TypeError, match="semantic key"):
        identity.function_semantic_key(mine)


def _cuda_elf_arches(obj: bytes):
    """The SM numbers of the CUDA ELF images embedded in a host object file."""
    import struct

    found, i = [], obj.find(b"\x7fELF", 1)
    while i >= 0:
        if struct.unpack_from("<H", obj, i + 18)[0] == 190:  # EM_CUDA
            found.append(struct.unpack_from("<I", obj, i + 48)[0] & 0xFF)
        i = obj.find(b"\x7fELF", i + 4)
    return found


@pytest.mark.slow
def test_peer_gemms_compile_for_sm90_without_a_gpu(tmp_path):
    """quack's varlen gather gemm_act(swiglu) and varlen gemm trace and go through ptxas for
    sm_90 here, with cutlass reached through a path without "site-packages" (as /tmp/site on
    the GPU machine): the ContextVar fingerprint error does not come back."""
    pytest.importorskip("quack.gemm_interface")
    import os
    import pathlib
    import subprocess
    import sys

    import cutlass

    root = pathlib.Path(__file__).parents[1]
    link = tmp_path / "site"  # no "site-packages" in this path
    link.mkdir()
    (link / "cutlass").symlink_to(pathlib.Path(cutlass.__file__).parent)
    env = dict(os.environ, QUACK_ARCH="90", CUTE_DSL_ARCH="sm_90a", QUACK_CACHE_DIR=str(tmp_path / "cache"))
    code = f"import runpy, sys; sys.path.insert(0, {str(link)!r}); sys.argv = ['x']; runpy.run_path({str(root / 'benchmarks' / 'quack_compile_cpu.py')!r}, run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.stdout.count("compiled in") == 2, r.stdout + r.stderr[-3000:]
    objs = sorted((tmp_path / "cache").rglob("*.o"))
    assert len(objs) == 2
    for o in objs:
        assert _cuda_elf_arches(o.read_bytes()) == [90]
