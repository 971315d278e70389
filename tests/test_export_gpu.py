"""`wb export` on a GPU (docs/export.md): the configuration is first verified by `wb run` in a
throw-away copy of this workspace, so it exports without --allow-unverified and the manifest
names that run; the installed op then gives the in-tree kernel's bits exactly (o and lse,
GQA, causal and not, tails, on a side stream; on two streams at once, each launch whole;
every long kernel a configuration carries, at the shapes stage D launches it for), is
captured in a CUDA graph and replays with new inputs, and refuses misaligned and unexported calls before any launch (the CUDA context stays
usable after them). The launch-cost numbers come from benchmarks/export_launch_cost.py."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_repo_workspace, run_wb

pytestmark = pytest.mark.gpu

CONFIGS = [{"d": d, "causal": causal, "varlen": varlen} for d in (64, 128) for causal in ("false", "true") for varlen in ("false", "true")]
COMMON = {"heads": "4", "kv_heads": "2", "dtype": "bf16"}


def _install(out: Path, site: Path) -> None:
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(out)],
        capture_output=True, text=True,
    )
    if pip.returncode != 0:  # no setuptools on a bare GPU box: the package folder is all there is
        shutil.copytree(out / "wb_fmha", site / "wb_fmha")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Verified by `wb run` in a copy of the workspace, then exported there (needs a C
    compiler on this machine). WB_EXPORT_PREBUILT=DIR instead uses a package exported
    elsewhere (the CPU box, --allow-unverified) of the same configurations."""
    pytest.importorskip("tvm_ffi")
    root = tmp_path_factory.mktemp("export-gpu")
    ws = copy_repo_workspace(root / "ws")
    env = {"WB_HOME": str(root / "home")}
    site = root / "site"
    prebuilt = os.environ.get("WB_EXPORT_PREBUILT")
    if prebuilt:
        _install(Path(prebuilt), site)
        manifest = json.loads((site / "wb_fmha" / "manifest.json").read_text())
    else:
        for cfg in CONFIGS:
            params = {**COMMON, **cfg}
            ran = run_wb("run", "fmha/d", *[x for k, v in params.items() for x in ("-p", f"{k}={v}")], "--n", "1000", cwd=ws, env=env)
            assert ran.returncode == 0, ran.stdout + ran.stderr
        out = root / "pkg"
        args = ["-p", "d=64,128", "-p", "causal=false,true", "-p", "varlen=false,true"] + [x for k, v in COMMON.items() for x in ("-p", f"{k}={v}")]
        done = run_wb("export", "fmha/d", *args, "--out", out, "--json", cwd=ws, env=env)
        assert done.returncode == 0, done.stdout + done.stderr  # verified: no --allow-unverified
        manifest = json.loads(done.stdout)
        _install(out, site)
    sys.path.insert(0, str(site))
    try:
        import wb_fmha
    finally:
        sys.path.remove(str(site))
    return {"ws": ws, "manifest": manifest, "module": wb_fmha, "prebuilt": bool(prebuilt)}


_compiled: dict = {}


def _in_tree(ws: Path, params: dict, q, k, v, pieces: list | None = None, cu_seqlens: tuple = ()):
    """Stage D as `wb run` launches it: the stage's own compile (once per configuration) and
    launch; ``pieces`` gets the name of the kernel it launched (export_op.PIECES);
    ``cu_seqlens``: (cu_seqlens_q, cu_seqlens_k) of a varlen launch (params varlen=True)."""
    import torch

    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.kernels.stage import Params

    key = json.dumps(params, sort_keys=True, default=str)
    if key not in _compiled:
        from workbench.workspace import find_workspace

        workspace = find_workspace(str(ws))
        spec = resolve_stage(workspace, "fmha/d", load_kernels(workspace))
        stage = spec.load()
        resolved = spec.resolve_params({k_: str(v_).lower() for k_, v_ in params.items()})
        _compiled[key] = (stage, stage.compile(Params(resolved), spec.resolve_variants({}), "sm_90a"))
    stage, compiled = _compiled[key]
    if pieces is not None:  # which of stage D's kernels the stage launches for these m and n
        fn = compiled.for_shape(q.shape[1], k.shape[1])
        from stages.fmha.export_op import PIECES

        pieces.append(next(name for name in PIECES if getattr(compiled, name) is fn))
    o = torch.full_like(q, float("nan"))
    if cu_seqlens:
        lse = torch.full((q.shape[1], q.shape[0]), float("nan"), device=q.device)
        inputs = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_seqlens[0], "cu_seqlens_k": cu_seqlens[1]}
    else:
        lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"), device=q.device)
        inputs = {"q": q, "k": k, "v": v}
    stage.launch(compiled, inputs, {"o": o, "lse": lse})
    return o, lse


def test_the_manifest_names_the_runs_that_verified_each_configuration(exported):
    if exported["prebuilt"]:
        pytest.skip("WB_EXPORT_PREBUILT: exported elsewhere, unverified")
    configs = exported["manifest"]["configs"]
    assert len(configs) == len(CONFIGS) and all(cfg["verified_by"] for cfg in configs)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch, m, n", [(2, 1000, 1000), (1, 17, 4099), (3, 300, 77)])
def test_the_exported_op_gives_the_in_tree_kernels_bits(exported, causal, batch, m, n):
    import torch

    g = torch.Generator(device="cuda").manual_seed(m * 7 + n)
    q = torch.randn(batch, m, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(batch, n, 2, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(batch, n, 2, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the op launches on the caller's current stream
        o, lse = torch.ops.wb_fmha.fwd(q, k, v, causal=causal)
    torch.cuda.current_stream().wait_stream(side)
    o_ref, lse_ref = _in_tree(exported["ws"], {**COMMON, "d": 128, "causal": causal}, q, k, v)
    torch.cuda.synchronize()
    assert torch.equal(o, o_ref), (o.float() - o_ref.float()).abs().max()
    assert torch.equal(lse, lse_ref) or torch.equal(lse.nan_to_num(), lse_ref.nan_to_num())


def test_a_launch_with_a_partial_last_wave_is_cut_along_the_keys_with_the_in_tree_kernels_bits(exported):
    # 160 work tiles (m = 5120, 4 heads) on a Hopper's 132 CTAs: the op's buffer holds the
    # partials, so the kernel cuts the last 28 tiles as wb's own launcher lets it (the op used
    # to pass its two counters alone, and cut nothing), and adds the pieces in piece order
    import torch

    from stages.fmha import split_kv

    g = torch.Generator(device="cuda").manual_seed(11)
    q = torch.randn(1, 5120, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 4096, 2, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, 4096, 2, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    torch.ops.wb_fmha.fwd(q, k, v)  # allocates the stream's buffer
    torch.cuda.synchronize()
    buf = exported["module"]._op._per_stream[(q.device, torch.cuda.current_stream().cuda_stream)][0]
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    tiles = 4 * 5120 // 128
    assert split_kv.tail_of(tiles, min(tiles, sms)) > 0, sms
    assert split_kv.pieces_for(tiles, min(tiles, sms), 4096 // 128, buf.numel(), 2, split_kv.slot_words(64, 2)) > 1
    buf[split_kv.PARTIALS_BASE:].zero_()
    o, lse = torch.ops.wb_fmha.fwd(q, k, v)
    torch.cuda.synchronize()
    assert int(buf[split_kv.PARTIALS_BASE:].abs().sum()) > 0, "no piece stored a partial: nothing was cut"
    assert int(buf[: split_kv.PARTIALS_BASE].abs().sum()) == 0, "a counter was left non-zero"
    o_ref, lse_ref = _in_tree(exported["ws"], {**COMMON, "d": 128, "causal": False}, q, k, v)
    torch.cuda.synchronize()
    assert torch.equal(o, o_ref) and torch.equal(lse, lse_ref), (o.float() - o_ref.float()).abs().max()



# (d, causal, m, n): where geometry.long_kernels launches each long kernel the exported
# configurations carry (d = 64 non-causal's round-robin twin from m = 8192, its 192-row causal
# kernel from m = 4096, d = 128's 192 x 128 kernel from m = n = 8192 and 128 x 176 one from
# n = 8192), and a shape below them all
LONG_SHAPES = [(64, False, 8192, 1000), (64, True, 4096, 4096), (128, False, 8192, 8192), (128, False, 1000, 8192), (64, False, 1000, 1000)]


@pytest.mark.parametrize("d, causal, m, n", LONG_SHAPES)
def test_the_op_launches_the_long_kernel_the_stage_launches_with_its_bits(exported, d, causal, m, n):
    import torch

    mod = exported["module"]
    g = torch.Generator(device="cuda").manual_seed(d + m + n)
    q = torch.randn(1, m, 4, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, n, 2, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, n, 2, d, device="cuda", dtype=torch.bfloat16, generator=g)
    fns = mod.load(mod.select(mod._op.call_key(q, k, v, causal=causal)))
    launched = []
    real = dict(fns)
    try:  # each piece wrapped in place (the op keys its per-stream state on the dict's id)
        for name, (fn, info) in real.items():
            fns[name] = (lambda *a, _fn=fn, _name=name: (launched.append(_name), _fn(*a))[1], info)
        o, lse = torch.ops.wb_fmha.fwd(q, k, v, causal=causal)
    finally:
        fns.update(real)
    stage_launched = []
    o_ref, lse_ref = _in_tree(exported["ws"], {**COMMON, "d": d, "causal": causal}, q, k, v, stage_launched)
    torch.cuda.synchronize()
    assert launched == stage_launched, (launched, stage_launched, {name: info for name, (_, info) in real.items()})
    assert torch.equal(o, o_ref) and torch.equal(lse, lse_ref), (o.float() - o_ref.float()).abs().max()


def _packed(lens_q, lens_k, d, seed):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(sum(lens_q), 4, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(sum(lens_k), 2, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(sum(lens_k), 2, d, device="cuda", dtype=torch.bfloat16, generator=g)
    cu = [torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device="cuda") for lens in (lens_q, lens_k)]
    return q, k, v, cu


# very unequal lengths in one batch, an empty sequence, keys != queries (bottom-right is not
# exported here: top-left causal, as the stage's default)
VARLEN_LENS = [([1, 17, 1000, 0, 300, 4096], [1, 17, 1000, 5, 300, 4096]), ([700, 129], [900, 2000])]


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens_q, lens_k", VARLEN_LENS)
def test_the_varlen_op_gives_the_in_tree_kernels_bits(exported, d, causal, lens_q, lens_k):
    import torch

    q, k, v, cu = _packed(lens_q, lens_k, d, sum(lens_q) + d)
    o, lse = torch.ops.wb_fmha.fwd(q, k, v, causal=causal, cu_seqlens_q=cu[0], cu_seqlens_k=cu[1])
    o_ref, lse_ref = _in_tree(exported["ws"], {**COMMON, "d": d, "causal": causal, "varlen": True}, q, k, v, cu_seqlens=tuple(cu))
    torch.cuda.synchronize()
    assert o.shape == q.shape and lse.shape == (4, q.shape[0])
    assert torch.equal(o, o_ref), (o.float() - o_ref.float()).abs().max()
    assert torch.equal(lse.nan_to_num(), lse_ref.nan_to_num())


def test_the_varlen_op_follows_cu_seqlens_changed_in_place_and_in_a_cuda_graph(exported):
    # the tile table is kept on cu_seqlens_q until either tensor changes in place; in a graph
    # it is built by the captured ops, so a replay reads the offsets it is given then
    import torch

    q, k, v, cu = _packed([1000, 24], [1000, 24], 128, 3)
    torch.ops.wb_fmha.fwd(q, k, v, cu_seqlens_q=cu[0], cu_seqlens_k=cu[1])
    split = torch.tensor([0, 24, 1024], dtype=torch.int32, device="cuda")
    for t in cu:
        t.copy_(split)  # the same totals, other sequences
    o, _ = torch.ops.wb_fmha.fwd(q, k, v, cu_seqlens_q=cu[0], cu_seqlens_k=cu[1])
    want, _ = _in_tree(exported["ws"], {**COMMON, "d": 128, "causal": False, "varlen": True}, q, k, v, cu_seqlens=tuple(cu))
    torch.cuda.synchronize()
    assert torch.equal(o, want), "the op kept the tile table of the offsets before the change"
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_graph, lse_graph = torch.ops.wb_fmha.fwd(q, k, v, causal=True, cu_seqlens_q=cu[0], cu_seqlens_k=cu[1])
    for lens in ([512, 512], [1, 1023], [1023, 1]):
        offsets = torch.tensor([0, lens[0], 1024], dtype=torch.int32, device="cuda")
        for t in cu:
            t.copy_(offsets)
        graph.replay()
        o_eager, lse_eager = torch.ops.wb_fmha.fwd(q, k, v, causal=True, cu_seqlens_q=cu[0], cu_seqlens_k=cu[1])
        torch.cuda.synchronize()
        assert torch.equal(o_graph, o_eager) and torch.equal(lse_graph.nan_to_num(), lse_eager.nan_to_num()), lens

def test_launches_on_two_streams_at_once_each_get_every_tile(exported):
    # two micro-batches overlapped: each stream's launches take their work tiles from their
    # own scheduler counters (one shared pair let a launch take the other's tiles)
    import torch

    g = torch.Generator(device="cuda").manual_seed(5)
    qkv = [[torch.randn(8, 2048, h, 128, device="cuda", dtype=torch.bfloat16, generator=g) for h in (4, 2, 2)] for _ in range(2)]
    want = [torch.ops.wb_fmha.fwd(*x)[0] for x in qkv]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    got = [[], []]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    for _ in range(20):
        for i, s in enumerate(streams):
            with torch.cuda.stream(s):
                got[i].append(torch.ops.wb_fmha.fwd(*qkv[i])[0])
    for s in streams:
        torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    for i in range(2):
        bad = [j for j, o in enumerate(got[i]) if not torch.equal(o, want[i])]
        assert not bad, f"stream {i}: launches {bad} differ from the launch alone"


def test_the_op_is_captured_in_a_cuda_graph_and_replays_with_new_inputs(exported):
    import torch

    q = torch.randn(2, 512, 4, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 700, 2, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 700, 2, 128, device="cuda", dtype=torch.bfloat16)
    torch.ops.wb_fmha.fwd(q, k, v)  # loads the object, allocates the scheduler's counters
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o, lse = torch.ops.wb_fmha.fwd(q, k, v)
    for seed in range(3):
        torch.manual_seed(seed)
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        graph.replay()
        o_eager, lse_eager = torch.ops.wb_fmha.fwd(q, k, v)
        torch.cuda.synchronize()
        assert torch.equal(o, o_eager) and torch.equal(lse, lse_eager)


def test_refusals_happen_before_launch_and_leave_the_device_usable(exported):
    import torch

    q = torch.randn(1, 128, 4, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 128, 2, 128, device="cuda", dtype=torch.bfloat16)
    raw = torch.zeros(q.numel() + 8, device="cuda", dtype=torch.bfloat16)
    torch.ops.wb_fmha.fwd(raw[:q.numel()].view_as(q), k, k)  # accepted: its signature is remembered
    with pytest.raises(ValueError, match="16-byte aligned base"):
        torch.ops.wb_fmha.fwd(raw[1 : 1 + q.numel()].view_as(q), k, k)
    with pytest.raises(ValueError, match="configuration not exported.*d=96"):
        torch.ops.wb_fmha.fwd(q[..., :96].contiguous(), k[..., :96].contiguous(), k[..., :96].contiguous())
    with pytest.raises(ValueError, match="configuration not exported.*kv_heads=4"):
        torch.ops.wb_fmha.fwd(q, q, q)
    o, _ = torch.ops.wb_fmha.fwd(q, k, k)
    torch.cuda.synchronize()
    assert torch.isfinite(o.float()).all()


def test_torch_compile_runs_the_op_without_a_graph_break(exported):
    import torch

    q = torch.randn(1, 256, 4, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 256, 2, 128, device="cuda", dtype=torch.bfloat16)

    def step(q, k, v):
        o, lse = torch.ops.wb_fmha.fwd(q, k, v, causal=True)
        return o.float().sum(-1), lse

    got = torch.compile(step, fullgraph=True)(q, k, k)
    want = step(q, k, k)
    torch.cuda.synchronize()
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0])


def test_opcheck_schema_and_fake_tensor_agree_with_the_real_op(exported):
    import torch

    q = torch.randn(2, 200, 4, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 300, 2, 128, device="cuda", dtype=torch.bfloat16)
    for kwargs in ({}, {"causal": True}):
        torch.library.opcheck(
            torch.ops.wb_fmha.fwd.default, (q, k, k), kwargs, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static")
        )
