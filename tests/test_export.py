"""`wb export` (docs/export.md), the CPU side: a stage's configuration becomes a package that
pip installs; the installed package imports with neither cutlass nor wb importable (proved by
an import blocker, not by their absence), registers the op with a fake implementation whose
shapes are right under FakeTensorMode, on meta tensors and under torch.compile(fullgraph=True),
loads its shared object (TVM-FFI, libcute_dsl_runtime) on a machine without a GPU, and refuses
on the host, in one line naming what was expected and what was given, every argument the
kernel was not compiled for. The same for the kernel `wb new kernel` scaffolds, so the road is
not the fmha kernel's alone. Two sm_90a compiles in all (one per kernel, module-scoped).

What only a GPU proves (same bits as `wb run`, CUDA graphs, launch cost) is in
test_export_gpu.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import copy_repo_workspace, copy_toy_ws, run_wb

pytest.importorskip("tvm_ffi", reason="wb export needs apache-tvm-ffi (pip install 'wb[export]')")

BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cutlass", "workbench", "stages", "nvidia_cutlass_dsl", "cuda"):
            raise ImportError("blocked by the test: " + name)
sys.meta_path.insert(0, _Block())
"""


def _pip_install(pkg: Path, site: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(pkg)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _run_checks(site: Path, body: str) -> dict:
    """Run ``body`` (after the import blocker) in a new interpreter that sees the installed
    package only through ``site``; it prints one JSON line, returned here."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WB_WORKSPACE")}
    env["PYTHONPATH"] = str(site)
    script = BLOCKER + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(site), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fmha_export(tmp_path_factory):
    """fmha stage D, two configurations (d=64, 2 heads, 1 KV head, bf16; fixed lengths and
    varlen), exported from a copy of this workspace (no runs: --allow-unverified) and
    pip-installed into a target folder."""
    root = tmp_path_factory.mktemp("export-ws")
    ws = copy_repo_workspace(root / "ws")
    env = {"WB_HOME": str(root / "home")}
    out = root / "pkg"
    done = run_wb(
        "--workspace", ws, "export", "fmha/d", "-p", "d=64", "-p", "heads=2", "-p", "kv_heads=1", "-p", "varlen=false,true",
        "--out", out, "--allow-unverified", "--json", cwd=ws, env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    site = root / "site"
    _pip_install(out, site)
    return {"ws": ws, "env": env, "out": out, "site": site, "stdout": done.stdout, "stderr": done.stderr}


@pytest.fixture(scope="module")
def scaffold_export(tmp_path_factory):
    """The kernel `wb new kernel gemmx` writes, exported and installed the same way."""
    root = tmp_path_factory.mktemp("export-scaffold")
    ws = root / "ws"
    copy_toy_ws(ws)
    env = {"WB_HOME": str(root / "home")}
    assert run_wb("new", "kernel", "gemmx", cwd=ws, env=env).returncode == 0
    refused = run_wb("export", "gemmx/a", "--out", root / "refused", cwd=ws, env=env)
    out = root / "pkg"
    done = run_wb("export", "gemmx/a", "-p", "out_dtype=bf16", "--out", out, "--allow-unverified", cwd=ws, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    site = root / "site"
    _pip_install(out, site)
    return {"ws": ws, "env": env, "out": out, "site": site, "refused": refused, "stdout": done.stdout}


def test_the_manifest_names_stage_commit_dsl_arch_and_each_configuration(fmha_export):
    from workbench.export.build import CONFIG_KEYS, SCHEMA_KEYS

    manifest = json.loads((fmha_export["out"] / "wb_fmha" / "manifest.json").read_text())
    assert set(manifest) == set(SCHEMA_KEYS)
    assert manifest["stage"] == "fmha/stage-d" and manifest["namespace"] == "wb_fmha" and manifest["op"] == "fwd"
    assert manifest["arch"] == "sm_90a" and manifest["dsl_version"] == "4.8.1"
    assert manifest["commit"] is None or len(manifest["commit"]) == 40
    cfg, varlen = manifest["configs"]
    assert set(cfg) == set(CONFIG_KEYS)
    assert cfg["key"] == {
        "d": 64, "dtype": "bf16", "heads": 2, "kv_heads": 1, "causal": False, "align": "top_left",
        "window_left": -1, "window_right": -1, "softcap": 0.0, "dv": 64,
    }
    # varlen is in a key only where it is on: a fixed-length configuration keeps its old key
    assert varlen["key"] == {**cfg["key"], "varlen": True}
    # its one kernel, with what the op's tile table needs (d = 64 non-causal: 192-row tiles)
    assert list(varlen["pieces"]) == ["fn"] and varlen["pieces"]["fn"]["info"] == {"tile_m": 192, "bottom_right": False}
    assert cfg["verified_by"] == []  # a copy of the workspace has no runs: --allow-unverified
    library = fmha_export["out"] / "wb_fmha" / cfg["library"]
    assert library.is_file()
    # what the package checks before it loads the object (test_a_damaged_shared_object_...)
    assert cfg["library_size"] == library.stat().st_size
    assert cfg["library_sha256"] == hashlib.sha256(library.read_bytes()).hexdigest()
    # --json prints the same manifest; the missing verification is said loudly on stderr
    assert json.loads(fmha_export["stdout"])["configs"][0]["id"] == cfg["id"]
    assert "UNVERIFIED" in fmha_export["stderr"]


def test_the_shared_object_holds_the_kernel_and_needs_only_the_runtime_and_tvm_ffi(fmha_export):
    cfg = json.loads((fmha_export["out"] / "wb_fmha" / "manifest.json").read_text())["configs"][0]
    so = fmha_export["out"] / "wb_fmha" / cfg["library"]
    dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
    needed = sorted(line.split("[")[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line)
    assert needed == ["libcute_dsl_runtime.so", "libtvm_ffi.so"], needed
    exported = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True).stdout
    # two pieces: the non-causal d=64 configuration builds its round-robin kernel from m = 8192 beside the default
    assert cfg["symbol"] is None and list(cfg["pieces"]) == ["fn", "fn_long"], cfg
    assert cfg["pieces"]["fn_long"]["info"] == {"min_m": 8192, "min_n": 0}, cfg
    assert sorted(line.split()[-1] for line in exported.splitlines() if " T " in line) == sorted(
        "__tvm_ffi_" + piece["symbol"] for piece in cfg["pieces"].values())
    blob = so.read_bytes()
    assert blob.find(b"\x7fELF", 1) > 0  # the cubin is inside


# the op's refusal as a string (None when it ran), for the check scripts
REFUSAL = """
def refusal(*args, **kwargs):
    try:
        torch.ops.wb_fmha.fwd(*args, **kwargs)
    except ValueError as exc:
        return str(exc)
    return None
"""

FMHA_CHECKS = """
import json, sys, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import wb_fmha
out = {"warned": [str(w.message) for w in caught], "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("cutlass", "workbench"))}
from torch._subclasses.fake_tensor import FakeTensorMode
""" + REFUSAL + """
bf = torch.bfloat16
with FakeTensorMode():  # fake CUDA tensors work in a CPU build of torch, but only made fresh (no .to, no views)
    def cuda(*shape, dtype=bf, stride=None):
        if stride is not None:
            return torch.empty_strided(shape, stride, dtype=dtype, device="cuda")
        return torch.empty(*shape, dtype=dtype, device="cuda")
    q = cuda(3, 100, 2, 64); k = cuda(3, 70, 1, 64)
    o, lse = torch.ops.wb_fmha.fwd(q, k, k)
    out["fake"] = [list(o.shape), str(o.dtype), o.device.type, list(lse.shape), str(lse.dtype)]
    out["causal"] = refusal(q, k, k, causal=True)
    out["d96"] = refusal(cuda(3, 100, 2, 96), cuda(3, 70, 1, 96), cuda(3, 70, 1, 96))
    out["gqa"] = refusal(cuda(3, 100, 4, 64), k, k)
    h = torch.float16
    out["fp16"] = refusal(cuda(3, 100, 2, 64, dtype=h), cuda(3, 70, 1, 64, dtype=h), cuda(3, 70, 1, 64, dtype=h))
    f = torch.float32
    out["fp32"] = refusal(cuda(3, 100, 2, 64, dtype=f), cuda(3, 70, 1, 64, dtype=f), cuda(3, 70, 1, 64, dtype=f))
    out["rank"] = refusal(cuda(100, 2, 64), cuda(70, 1, 64), cuda(70, 1, 64))
    out["lastdim"] = refusal(cuda(3, 100, 2, 64, stride=(25600, 256, 128, 2)), k, k)
    # varlen: packed (total, heads, d) with cu_seqlens (batch + 1,) int32
    vq, vk, cu = cuda(250, 2, 64), cuda(180, 1, 64), cuda(4, dtype=torch.int32)
    o, lse = torch.ops.wb_fmha.fwd(vq, vk, vk, cu_seqlens_q=cu, cu_seqlens_k=cu)
    out["varlen_fake"] = [list(o.shape), str(o.dtype), list(lse.shape), str(lse.dtype)]
    out["varlen_one"] = refusal(vq, vk, vk, cu_seqlens_q=cu)
    out["varlen_int64"] = refusal(vq, vk, vk, cu_seqlens_q=cuda(4, dtype=torch.int64), cu_seqlens_k=cu)
    out["varlen_counts"] = refusal(vq, vk, vk, cu_seqlens_q=cu, cu_seqlens_k=cuda(3, dtype=torch.int32))
    out["varlen_rank"] = refusal(q, k, k, cu_seqlens_q=cu, cu_seqlens_k=cu)
    out["varlen_causal"] = refusal(vq, vk, vk, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu)
m_q = torch.empty(2, 33, 2, 64, dtype=bf, device="meta"); m_k = torch.empty(2, 17, 1, 64, dtype=bf, device="meta")
o, lse = torch.ops.wb_fmha.fwd(m_q, m_k, m_k)
out["meta"] = [list(o.shape), list(lse.shape)]
m_cu = torch.empty(3, dtype=torch.int32, device="meta")
o, lse = torch.ops.wb_fmha.fwd(m_q[0], m_k[0], m_k[0], cu_seqlens_q=m_cu, cu_seqlens_k=m_cu)
out["varlen_meta"] = [list(o.shape), list(lse.shape)]

def step(q, k, v):
    o, lse = torch.ops.wb_fmha.fwd(q, k, v)
    return o * 2, lse.exp()
compiled = torch.compile(step, fullgraph=True, backend="eager")
o2, l2 = compiled(m_q, m_k, m_k)
out["compiled"] = [list(o2.shape), list(l2.shape)]
# the package's eager entry wb_fmha.fwd: the op itself under torch.compile and for tensor
# subclasses, the same checks as the op for plain tensors
def step_entry(q, k, v):
    o, lse = wb_fmha.fwd(q, k, v)
    return o * 2, lse.exp()
o3, l3 = torch.compile(step_entry, fullgraph=True, backend="eager")(m_q, m_k, m_k)
out["entry_compiled"] = [list(o3.shape), list(l3.shape)]
with FakeTensorMode():
    o4, _ = wb_fmha.fwd(cuda(3, 100, 2, 64), cuda(3, 70, 1, 64), cuda(3, 70, 1, 64))
    out["entry_fake"] = list(o4.shape)
try:
    wb_fmha.fwd(torch.zeros(1, 128, 2, 64, dtype=bf), torch.zeros(1, 128, 1, 64, dtype=bf), torch.zeros(1, 128, 1, 64, dtype=bf))
    out["entry_cpu"] = None
except ValueError as exc:
    out["entry_cpu"] = str(exc)

cq = torch.zeros(1, 128, 2, 64, dtype=bf); ck = torch.zeros(1, 128, 1, 64, dtype=bf)
out["cpu"] = refusal(cq, ck, ck)
raw = torch.zeros(1 * 128 * 2 * 64 + 1, dtype=bf)
out["misaligned"] = refusal(raw[1:].view(1, 128, 2, 64), ck, ck)
# the shared object loads here (no GPU, no cutlass): its own TVM-FFI check refuses CPU tensors
fns = wb_fmha.load(wb_fmha.CONFIGS[0])  # {piece: (function, info)}: fn alone, not causal d=64
out["pieces"] = {name: info for name, (_, info) in fns.items()}
# the varlen configuration's object loads too, and refuses CPU tensors in its own check
vfn = wb_fmha.load(wb_fmha.CONFIGS[1])["fn"][0]
cu = torch.tensor([0, 128], dtype=torch.int32)
try:
    vfn(cq[0], ck[0], ck[0], cq[0], torch.zeros(2, 128), torch.zeros(2, dtype=torch.int32), 1, cu, cu, torch.zeros(2, dtype=torch.int32), None, None)
    out["tvm_ffi_varlen"] = None
except Exception as exc:
    out["tvm_ffi_varlen"] = f"{type(exc).__name__}: {exc}"
fn = fns["fn"][0]
try:
    fn(cq, ck, ck, cq, torch.zeros(1, 2, 128), torch.zeros(2, dtype=torch.int32), 1, None, None, None, None, None)
    out["tvm_ffi"] = None
except Exception as exc:
    out["tvm_ffi"] = f"{type(exc).__name__}: {exc}"
# the per-signature memo of passed checks: a misaligned base with an accepted signature is still
# refused, and an accepted signature is not checked again (devices waived here: no GPU)
orig_check, orig_launch, calls = wb_fmha._op.check, wb_fmha._op.launch, {"check": 0, "launch": 0}
def cpu_check(*args, fake=False, **kwargs):
    calls["check"] += 1
    return [p for p in orig_check(*args, fake=fake, **kwargs) if "device" not in p]
def no_launch(fn, *args, **kwargs):
    calls["launch"] += 1
    return cq.new_empty(cq.shape), torch.empty(1, 2, 128)
wb_fmha._op.check, wb_fmha._op.launch = cpu_check, no_launch
wb_fmha._functions[wb_fmha.CONFIGS[0]["id"]] = fns
memo = [refusal(cq, ck, ck), refusal(raw[1:].view(1, 128, 2, 64), ck, ck), refusal(cq, ck, ck), refusal(cq, ck, ck)]
out["memo"] = {"refusals": memo, **calls}
wb_fmha._op.check, wb_fmha._op.launch = orig_check, orig_launch
out["loaded_after"] = sorted(m for m in sys.modules if m.split(".")[0] in ("cutlass", "workbench"))
print(json.dumps(out))
"""


PAGED_CHECKS = REFUSAL + """
import json
import torch
import wb_fmha
from torch._subclasses.fake_tensor import FakeTensorMode

bf, i32 = torch.bfloat16, torch.int32
out = {}
with FakeTensorMode():
    def cuda(*shape, dtype=bf):
        return torch.empty(*shape, dtype=dtype, device="cuda")
    q, kc, bt, lens = cuda(3, 100, 2, 64), cuda(40, 64, 1, 64), cuda(3, 5, dtype=i32), cuda(3, dtype=i32)
    o, lse = torch.ops.wb_fmha.fwd(q, kc, kc, block_table=bt, cache_seqlens=lens)
    out["fake"] = [list(o.shape), list(lse.shape), str(lse.dtype)]
    out["one"] = refusal(q, kc, kc, block_table=bt)
    out["int64"] = refusal(q, kc, kc, block_table=bt, cache_seqlens=cuda(3, dtype=torch.int64))
    out["batch"] = refusal(q, kc, kc, block_table=cuda(2, 5, dtype=i32), cache_seqlens=lens)
    out["no_pages"] = refusal(q, kc, kc, block_table=cuda(3, 0, dtype=i32), cache_seqlens=lens)
    out["page16"] = refusal(q, cuda(160, 16, 1, 64), cuda(160, 16, 1, 64), block_table=bt, cache_seqlens=lens)
    # packed queries over the pages: cu_seqlens_q (batch + 1,) beside the table, no cu_seqlens_k
    vq, cu = cuda(250, 2, 64), cuda(4, dtype=i32)
    o, lse = torch.ops.wb_fmha.fwd(vq, kc, kc, cu_seqlens_q=cu, block_table=bt, cache_seqlens=lens)
    out["varlen_fake"] = [list(o.shape), list(lse.shape)]
    out["with_cu_k"] = refusal(vq, kc, kc, cu_seqlens_q=cu, cu_seqlens_k=cu, block_table=bt, cache_seqlens=lens)
    out["varlen_batch"] = refusal(vq, kc, kc, cu_seqlens_q=cuda(3, dtype=i32), block_table=bt, cache_seqlens=lens)
    out["varlen_causal"] = refusal(vq, kc, kc, causal=True, cu_seqlens_q=cu, block_table=bt, cache_seqlens=lens)
    out["unpaged"] = refusal(q, cuda(3, 70, 1, 64), cuda(3, 70, 1, 64))
# the object loads here (no GPU): its TVM-FFI check refuses CPU tensors in the paged signature
fn = wb_fmha.load(wb_fmha.CONFIGS[0])["fn"][0]
cq, ck = torch.zeros(1, 128, 2, 64, dtype=bf), torch.zeros(2, 64, 1, 64, dtype=bf)
try:
    fn(cq, ck, ck, cq, torch.zeros(1, 2, 128), torch.zeros(2, dtype=i32), 1, None, None, None,
       torch.zeros(1, 2, dtype=i32), torch.zeros(1, dtype=i32))
    out["tvm_ffi"] = None
except Exception as exc:
    out["tvm_ffi"] = f"{type(exc).__name__}: {exc}"
vfn = wb_fmha.load(wb_fmha.CONFIGS[1])["fn"][0]
cu = torch.tensor([0, 128], dtype=i32)
try:
    vfn(cq[0], ck, ck, cq[0], torch.zeros(2, 128), torch.zeros(2, dtype=i32), 1, cu, cu, torch.zeros(2, dtype=i32),
        torch.zeros(1, 2, dtype=i32), None)
    out["tvm_ffi_varlen"] = None
except Exception as exc:
    out["tvm_ffi_varlen"] = f"{type(exc).__name__}: {exc}"

# the package's boundary on plain CPU tensors, device checks and the launch stood in (no GPU)
def caught(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except (ValueError, RuntimeError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
orig_check = wb_fmha._op.check
wb_fmha._op.check = lambda *a, fake=False, **k: [p for p in orig_check(*a, fake=fake, **k) if "device" not in p]
wb_fmha._op.launch = lambda fn, q, *a, **k: (q.new_empty(q.shape), torch.empty(1))
wb_fmha.load = lambda cfg: None
q, kc = torch.zeros(3, 100, 2, 64, dtype=bf), torch.zeros(40, 64, 1, 64, dtype=bf)
bt, lens = torch.arange(15, dtype=i32).view(3, 5), torch.tensor([10, 20, 30], dtype=i32)
paged = dict(block_table=bt, cache_seqlens=lens)
out["cpu_ok"] = caught(wb_fmha.fwd, q, kc, kc, **paged)
out["align_moot"] = caught(wb_fmha.fwd, q, kc, kc, align="bottom_right", **paged)  # no mask: no edge to move
out["align_causal"] = caught(wb_fmha.fwd, q, kc, kc, causal=True, align="bottom_right", **paged)
qg = q.clone().requires_grad_()
out["grad"] = [caught(wb_fmha.fwd, qg, kc, kc, **paged), caught(torch.ops.wb_fmha.fwd, qg, kc, kc, **paged)]
with torch.no_grad():
    out["grad"].append(caught(wb_fmha.fwd, qg, kc, kc, **paged))
out["entry"] = {
    "causal_str": caught(wb_fmha.fwd, q, kc, kc, causal="false", **paged),
    "typo": caught(wb_fmha.fwd, q, kc, kc, block_tables=bt, cache_seqlens=lens),
    "softcap_none": caught(wb_fmha.fwd, q, kc, kc, softcap=None, **paged),
    "list": caught(wb_fmha.fwd, q, kc, kc, block_table=bt, cache_seqlens=[10, 20, 30]),
    "heads8": caught(wb_fmha.fwd, torch.zeros(3, 100, 8, 64, dtype=bf), kc, kc, **paged),
    "sliced_table": caught(wb_fmha.fwd, q, kc, kc, block_table=torch.arange(40, dtype=i32).view(8, 5)[1:4], cache_seqlens=lens),
    "empty_q": caught(wb_fmha.fwd, torch.zeros(3, 0, 2, 64, dtype=bf), kc, kc, **paged),
    "expanded_q": caught(wb_fmha.fwd, q[:1].expand(3, 100, 2, 64), kc, kc, **paged),
}
import weakref
before, refs = len(wb_fmha._ready), []
for _ in range(20):  # a fresh lengths tensor per call, as a serving loop makes them
    fresh = lens.clone()
    refs.append(weakref.ref(fresh))
    wb_fmha.fwd(q, kc, kc, block_table=bt, cache_seqlens=fresh)
    del fresh
out["memo"] = {"grew": len(wb_fmha._ready) - before, "alive": sum(r() is not None for r in refs)}
wrong = bt.clone()
wrong[1, 3] = 57
out["values"] = wb_fmha._op.check_values(q, kc, kc, block_table=wrong, cache_seqlens=torch.tensor([10, 400, -1], dtype=i32))
vq = torch.zeros(250, 2, 64, dtype=bf)
out["values_cu"] = wb_fmha._op.check_values(vq, kc, kc, cu_seqlens_q=torch.tensor([1, 100, 90, 300], dtype=i32), **paged)
out["values_ok"] = wb_fmha._op.check_values(vq, kc, kc, cu_seqlens_q=torch.tensor([0, 100, 200, 250], dtype=i32), **paged)
out["values_off"] = caught(wb_fmha.fwd, q, kc, kc, block_table=wrong, cache_seqlens=lens)
wb_fmha.CHECK_VALUES = True  # as WB_EXPORT_CHECK_VALUES=1 at import
out["values_on"] = caught(wb_fmha.fwd, q, kc, kc, block_table=wrong, cache_seqlens=lens)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def paged_checks(tmp_path_factory):
    """fmha stage D with a paged KV cache (d=64, 2 heads, 1 KV head, 64-key pages; fixed-length
    and packed queries), exported and installed like fmha_export, then PAGED_CHECKS in a new
    interpreter."""
    root = tmp_path_factory.mktemp("export-paged")
    ws = copy_repo_workspace(root / "ws")
    out = root / "pkg"
    done = run_wb(
        "--workspace", ws, "export", "fmha/d", "-p", "d=64", "-p", "heads=2", "-p", "kv_heads=1", "-p", "page_size=64",
        "-p", "varlen=false,true", "--out", out, "--allow-unverified", "--json", cwd=ws, env={"WB_HOME": str(root / "home")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _pip_install(out, root / "site")
    return {"manifest": json.loads(done.stdout), **_run_checks(root / "site", PAGED_CHECKS)}


def test_a_paged_configuration_takes_a_block_table_and_cache_seqlens(paged_checks):
    """page_size is in the key where it is on; the op takes the caches with block_table and
    cache_seqlens (int32, one row / length per sequence), its outputs shaped like a
    fixed-length call's; packed queries over the pages take cu_seqlens_q alone; a call without
    the pair, with wrong types or batch, other pages, cu_seqlens_k beside them, or contiguous
    K/V is refused in one line; each object's own check takes its signature."""
    cfg, varlen = paged_checks["manifest"]["configs"]
    assert cfg["key"]["page_size"] == 64 and list(cfg["pieces"]) == ["fn"]
    assert varlen["key"] == {**cfg["key"], "varlen": True}
    assert paged_checks["fake"] == [[3, 100, 2, 64], [3, 2, 100], "torch.float32"]
    assert "cache_seqlens: expected a tensor beside the other (paged KV takes both)" in paged_checks["one"]
    assert "cache_seqlens: expected int32 (batch,) with batch 3, got int64 (3,)" in paged_checks["int64"]
    assert "block_table: expected int32 (batch, pages per sequence) with batch 3, got int32 (2, 5)" in paged_checks["batch"]
    assert "got int32 (3, 0)" in paged_checks["no_pages"]
    assert "configuration not exported" in paged_checks["page16"] and "page_size=16" in paged_checks["page16"]
    assert paged_checks["varlen_fake"] == [[250, 2, 64], [2, 250]]
    assert "cu_seqlens_k: a paged cache's key lengths are cache_seqlens" in paged_checks["with_cu_k"]
    assert "block_table: expected int32 (batch, pages per sequence) with batch 2, got int32 (3, 5)" in paged_checks["varlen_batch"]
    assert "configuration not exported" in paged_checks["varlen_causal"] and "varlen=True" in paged_checks["varlen_causal"]
    assert paged_checks["tvm_ffi_varlen"] and "expected device_type=cuda" in paged_checks["tvm_ffi_varlen"], paged_checks["tvm_ffi_varlen"]
    assert "configuration not exported" in paged_checks["unpaged"]
    assert paged_checks["tvm_ffi"] and "expected device_type=cuda" in paged_checks["tvm_ffi"], paged_checks["tvm_ffi"]


def test_an_input_that_requires_grad_is_refused_unless_grad_is_off(paged_checks):
    """The op has no backward: an input that requires grad in grad mode is refused, through the
    entry and through torch.ops (the gradient would silently stop at the op); under no_grad it
    runs."""
    entry, op, no_grad = paged_checks["grad"]
    for message in (entry, op):
        assert message and "q.requires_grad: expected no gradient (the op is forward only" in message and "\n" not in message
    assert no_grad is None and paged_checks["cpu_ok"] is None


@pytest.mark.parametrize(
    "case, expected",
    [
        ("causal_str", "causal: expected bool, got str 'false'"),
        ("typo", "block_tables: not an argument (expected one of q, k, v, causal,"),
        ("softcap_none", "softcap: expected float, got NoneType"),
        ("heads8", "(the closest exported differs in heads), exported:"),
        ("sliced_table", "block_table: expected a 16-byte aligned base address, got 0x"),
        ("empty_q", "q.shape: expected no empty dim, got (3, 0, 2, 64)"),
        ("expanded_q", "q.stride: expected no zero stride (an expanded tensor: pass .contiguous()), got (0, 128, 64, 1)"),
    ],
)
def test_the_eager_entry_refuses_what_the_schema_or_the_kernel_would_in_one_line(paged_checks, case, expected):
    """The package's entry skips the dispatcher: its schema's refusals are its own (a string for a
    bool was the causal kernel), and the check refuses what the compiled kernel was not built for
    (a sliced int32 table off its 16-byte base, an empty or expanded tensor); a call of a
    configuration not exported names the fields the closest one differs in."""
    message = paged_checks["entry"][case]
    assert message and message.startswith("ExportError: wb_fmha::fwd: ") and "\n" not in message, message
    assert expected in message, message


def test_the_alignment_keys_a_configuration_only_where_a_mask_has_an_edge_to_move(paged_checks):
    """Without a causal mask or a window either alignment is the same kernel: a call with
    align="bottom_right" takes the top_left export; with causal it asks for another one."""
    assert paged_checks["align_moot"] is None
    assert "configuration not exported" in paged_checks["align_causal"] and "align=bottom_right" in paged_checks["align_causal"]


def test_a_list_through_the_entry_gets_the_schemas_error_not_an_internal_one(paged_checks):
    message = paged_checks["entry"]["list"]
    assert message.startswith("RuntimeError:") and "cache_seqlens" in message and "unhashable" not in message, message


def test_keyword_tensors_are_memoised_by_signature_and_not_kept_alive(paged_checks):
    """Twenty calls with a fresh lengths tensor each (a serving loop's): one memo entry for the
    signature, and none of the tensors kept alive by it."""
    assert paged_checks["memo"] == {"grew": 0, "alive": 0}


def test_check_values_names_the_first_bad_offset_page_and_length_and_runs_only_when_asked(paged_checks):
    """check_values (WB_EXPORT_CHECK_VALUES=1: a sync per call) reads the values the op leaves to
    the caller: a page outside the cache, a length past its row's pages, offsets that do not start
    at 0, decrease, or pass the packed rows; off by default."""
    assert paged_checks["values"] == [
        "block_table[1, 3] = 57: expected a page in [0, 40)",
        "cache_seqlens[1] = 400: expected a length in [0, 320] (the table row's 5 pages of 64)",
    ]
    assert paged_checks["values_cu"] == [
        "cu_seqlens_q[0] = 1: expected 0 (the first offset)",
        "cu_seqlens_q[2] = 90: expected offsets that never decrease",
        "cu_seqlens_q[3] = 300: expected at most the 250 packed rows",
    ]
    assert paged_checks["values_ok"] == [] and paged_checks["values_off"] is None
    assert paged_checks["values_on"] == "ExportError: wb_fmha::fwd: block_table[1, 3] = 57: expected a page in [0, 40)"


@pytest.fixture(scope="module")
def fmha_checks(fmha_export):
    return _run_checks(fmha_export["site"], FMHA_CHECKS)


def test_the_installed_package_imports_without_cutlass_or_wb_and_warns_it_is_unverified(fmha_checks):
    assert fmha_checks["loaded"] == [] and fmha_checks["loaded_after"] == []
    assert any("--allow-unverified" in w and "d=64" in w for w in fmha_checks["warned"]), fmha_checks["warned"]


def test_fake_outputs_have_the_kernels_shapes_under_fake_mode_meta_and_torch_compile(fmha_checks):
    assert fmha_checks["fake"] == [[3, 100, 2, 64], "torch.bfloat16", "cuda", [3, 2, 100], "torch.float32"]
    assert fmha_checks["meta"] == [[2, 33, 2, 64], [2, 2, 33]]
    assert fmha_checks["compiled"] == [[2, 33, 2, 64], [2, 2, 33]]  # fullgraph: no graph break


def test_a_varlen_configuration_takes_packed_sequences_and_cu_seqlens(fmha_checks):
    assert fmha_checks["varlen_fake"] == [[250, 2, 64], "torch.bfloat16", [2, 250], "torch.float32"]
    assert fmha_checks["varlen_meta"] == [[33, 2, 64], [2, 33]]
    refused = {case: fmha_checks[case] for case in ("varlen_one", "varlen_int64", "varlen_counts", "varlen_rank", "varlen_causal")}
    assert all(m is not None and m.startswith("wb_fmha::fwd: ") and "\n" not in m for m in refused.values()), refused
    assert "cu_seqlens_k: expected a tensor beside the other (varlen takes both)" in refused["varlen_one"]
    assert "cu_seqlens_q: expected int32 (batch + 1,) offsets, got int64 (4,)" in refused["varlen_int64"]
    assert "cu_seqlens_k: expected cu_seqlens_q's 4 offsets (one sequence each), got 3" in refused["varlen_counts"]
    assert "q: expected rank 3 (total, heads, d), got rank 4" in refused["varlen_rank"]
    assert "configuration not exported: got [d=64 dtype=bf16 heads=2 kv_heads=1 causal=True" in refused["varlen_causal"]
    assert "varlen=True" in refused["varlen_causal"]
    assert fmha_checks["tvm_ffi_varlen"] and "expected device_type=cuda" in fmha_checks["tvm_ffi_varlen"], fmha_checks["tvm_ffi_varlen"]


def test_the_eager_entry_is_the_op_under_compile_and_fake_tensors_and_checks_plain_ones(fmha_checks):
    assert fmha_checks["entry_compiled"] == [[2, 33, 2, 64], [2, 2, 33]]  # fullgraph: it traced the op
    assert fmha_checks["entry_fake"] == [3, 100, 2, 64]
    assert fmha_checks["entry_cpu"] and "q.device: expected cuda, got cpu" in fmha_checks["entry_cpu"]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("causal", "configuration not exported: got [d=64 dtype=bf16 heads=2 kv_heads=1 causal=True"),
        ("d96", "got [d=96 "),
        ("gqa", "heads=4 kv_heads=1"),
        ("fp16", "got [d=64 dtype=fp16"),
        ("fp32", "q.dtype: expected bf16 or fp16, got float32"),
        ("rank", "q: expected rank 4 (batch, seqlen, heads, d), got rank 3"),
        ("lastdim", "q.stride(-1): expected 1 (last dim contiguous), got 2"),
        ("cpu", "q.device: expected cuda, got cpu"),
        ("misaligned", "q: expected a 16-byte aligned base address"),
    ],
)
def test_each_refusal_is_one_line_naming_what_was_expected_and_given(fmha_checks, case, expected):
    message = fmha_checks[case]
    assert message is not None, f"{case} was not refused"
    assert message.startswith("wb_fmha::fwd: ") and "\n" not in message
    assert expected in message, message
    if case in ("causal", "d96", "gqa", "fp16"):
        assert "exported: [d=64 dtype=bf16 heads=2 kv_heads=1 causal=False" in message


def test_a_signature_that_passed_is_not_checked_again_but_a_misaligned_base_still_is(fmha_checks):
    memo = fmha_checks["memo"]
    assert memo["refusals"][0] is None and memo["refusals"][2] is None and memo["refusals"][3] is None
    assert "q: expected a 16-byte aligned base address" in memo["refusals"][1]
    # check ran for the first call and the misaligned one only; the kernel "ran" three times
    assert memo["check"] == 2 and memo["launch"] == 3, memo


def test_the_shared_object_loads_without_a_gpu_and_checks_its_own_arguments(fmha_checks):
    assert fmha_checks["tvm_ffi"] and "expected device_type=cuda" in fmha_checks["tvm_ffi"], fmha_checks["tvm_ffi"]


DAMAGED_LOAD = """
import hashlib, json, warnings
warnings.simplefilter("ignore")
import wb_fmha
cfg = wb_fmha.CONFIGS[0]
try:
    wb_fmha.load(cfg)
except ImportError as exc:
    print(json.dumps({"refused": str(exc), "path": exc.path}))
    raise SystemExit(0)
# loaded: a second load of the same library in this process does not hash it again
wb_fmha._functions.clear()
def no_hashing(*args, **kwargs):
    raise AssertionError("hashed twice")
hashlib.sha256 = no_hashing
wb_fmha.load(cfg)
print(json.dumps({"refused": None, "intact": sorted(wb_fmha._intact)}))
"""


def _installed_copy(fmha_export, tmp_path) -> Path:
    """A copy of the installed package (site/wb_fmha) to damage."""
    site = tmp_path / "site"
    shutil.copytree(fmha_export["site"] / "wb_fmha", site / "wb_fmha", ignore=shutil.ignore_patterns("__pycache__"))
    return site


SWAPPED_AFTER_CHECK = """
import json, os, tempfile, warnings
warnings.simplefilter("ignore")
import tvm_ffi
import wb_fmha
tempfile.tempdir = private = tempfile.mkdtemp()  # the links the loads make, and only those
cfg = wb_fmha.CONFIGS[0]
so = wb_fmha.HERE / cfg["library"]
wb_fmha.load(cfg)  # the runtime library, and the check's cache warmed the first time
wb_fmha._functions.clear()
fd = wb_fmha._intact[str(so)]
so.write_bytes(so.read_bytes()[:4096])  # after the check: loading this file dies with SIGBUS
module = wb_fmha._load_module(tvm_ffi, so, fd)
left = os.listdir(private)
print(json.dumps({"memfd": fd is not None, "loaded": module[cfg["pieces"]["fn"]["symbol"]] is not None if cfg.get("pieces") else True, "left": left}))
"""


def test_the_bytes_checked_are_the_bytes_loaded(fmha_export, tmp_path):
    """The package checked lib/<id>.so's size and sha256, then tvm_ffi loaded the file again by
    its path: a file changed in between (another install, a disk fault) loaded unchecked. The
    checked bytes now load from a sealed memfd, so the file truncated after the check (which
    would kill the process in dlopen) does not matter, and no temporary link is left."""
    site = _installed_copy(fmha_export, tmp_path)
    out = _run_checks(site, SWAPPED_AFTER_CHECK)
    assert out == {"memfd": True, "loaded": True, "left": []}, out


@pytest.mark.parametrize("damage", ["truncated", "one byte changed", "intact", "exported before checksums"])
def test_a_damaged_shared_object_is_an_import_error_not_a_bus_error(fmha_export, tmp_path, damage):
    """tvm_ffi.load_module of a truncated lib/<id>.so died with SIGBUS (the user's process, or
    wb's worker as an unexplained CRASH), and one with a byte changed in its cubin loaded. The
    manifest records each library's size and sha256; the package checks them before loading
    (once per library per process) and raises an ImportError naming the file."""
    site = _installed_copy(fmha_export, tmp_path)
    manifest_path = site / "wb_fmha" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    so = site / "wb_fmha" / manifest["configs"][0]["library"]
    blob = so.read_bytes()
    if damage == "truncated":
        so.write_bytes(blob[:4096])  # dlopen maps past the end of the file: SIGBUS
    elif damage == "one byte changed":
        at = blob.find(b"\x7fELF", 1) + 0x200  # inside the embedded cubin: dlopen does not notice
        so.write_bytes(blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :])
    elif damage == "exported before checksums":  # an older package's manifest: loads unchecked
        for cfg in manifest["configs"]:
            del cfg["library_size"], cfg["library_sha256"]
        manifest_path.write_text(json.dumps(manifest))
    out = _run_checks(site, DAMAGED_LOAD)
    if damage in ("intact", "exported before checksums"):
        assert out["refused"] is None
        assert out["intact"] == ([str(so.resolve())] if damage == "intact" else [])
        return
    message = out["refused"]
    assert message.startswith("wb_fmha::fwd: ") and "\n" not in message, message
    assert f"{so.resolve()} does not match what was exported" in message, message
    assert ("4096 bytes, exported" if damage == "truncated" else "sha256 ") in message, message
    assert "reinstall the package or export it again" in message and out["path"] == str(so.resolve())


def _library_of_first_config(text: str, library: str) -> str:
    """A manifest whose first configuration loads ``library`` (any .so on the machine was
    loaded as the kernel)."""
    manifest = json.loads(text)
    manifest["configs"][0]["library"] = library
    return json.dumps(manifest)


def _drop_key_of_first_config(text: str) -> str:
    manifest = json.loads(text)
    del manifest["configs"][0]["key"]
    return json.dumps(manifest)


MANIFEST_DAMAGES = [
    (None, "is missing"),
    # cut short by a copy (at the last brace: a cut at a fixed fraction lands inside a string or not
    # as the manifest grows, and the decoder's message differs)
    (lambda text: text.rstrip()[:-1], "is not valid JSON (Expecting "),
    (lambda text: "", "is not valid JSON (Expecting value: line 1 column 1"),
    (lambda text: "[]", "holds a JSON list, not an object"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "configs"}), "has no list of configs"),
    (lambda text: json.dumps({**json.loads(text), "namespace": "wb-fmha"}), "has namespace 'wb-fmha', not a Python name"),
    (_drop_key_of_first_config, "has configs[0] without 'key'"),
    (lambda text: _library_of_first_config(text, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
     "has configs[0].library '/usr/lib/x86_64-linux-gnu/libc.so.6', not a path inside the package"),
    (lambda text: _library_of_first_config(text, "lib/../../elsewhere.so"),
     "has configs[0].library 'lib/../../elsewhere.so', not a path inside the package"),
]

# each damaged copy imported in turn in one interpreter (the import stops at the manifest,
# before the op is registered, so the next copy imports afresh)
DAMAGED_IMPORTS = """
import json, sys, warnings
warnings.simplefilter("ignore")
out = []
for site in json.loads(sys.argv[1]):
    sys.path.insert(0, site)
    try:
        import wb_fmha
        out.append({"refused": None})
    except ImportError as exc:
        out.append({"refused": str(exc), "path": exc.path})
    except Exception as exc:  # not refused at the manifest: what happened instead
        out.append({"refused": None, "error": repr(exc)[:300]})
    finally:
        sys.path.remove(site)
        for name in [n for n in sys.modules if n == "wb_fmha" or n.startswith("wb_fmha.")]:
            del sys.modules[name]
print(json.dumps(out))
"""


def test_a_missing_or_damaged_manifest_is_an_import_error_naming_it(fmha_export, tmp_path):
    """Importing the package read manifest.json with a bare json.loads and indexing: a missing,
    truncated or hand-edited manifest was a FileNotFoundError, JSONDecodeError or KeyError that
    named neither the file nor the package; a library path outside the package loaded any .so."""
    paths = []
    for i, (damage, _) in enumerate(MANIFEST_DAMAGES):
        path = _installed_copy(fmha_export, tmp_path / str(i)) / "wb_fmha" / "manifest.json"
        if damage is None:
            path.unlink()
        else:
            path.write_text(damage(path.read_text()))
        paths.append(path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WB_WORKSPACE")}
    script = BLOCKER + textwrap.dedent(DAMAGED_IMPORTS)
    sites = json.dumps([str(p.parent.parent) for p in paths])
    done = subprocess.run([sys.executable, "-c", script, sites], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for path, (_, expected), out in zip(paths, MANIFEST_DAMAGES, json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
        message = out["refused"]
        assert message is not None and "\n" not in message, (expected, out)
        assert message.startswith(f"wb_fmha: {path.resolve()} {expected}"), message
        assert message.endswith("reinstall the package or export it again") and out["path"] == str(path.resolve())


def test_export_refuses_configurations_no_gpu_run_verified(fmha_export, tmp_path):
    done = run_wb(
        "--workspace", fmha_export["ws"], "export", "fmha/d", "-p", "d=64,128", "--out", tmp_path / "x",
        cwd=fmha_export["ws"], env=fmha_export["env"],
    )
    assert done.returncode == 2 and done.stderr.count("\n") <= 1, done.stderr
    assert "2 of 2 configuration(s) have no passing GPU run on the current sources" in done.stderr
    assert "--allow-unverified" in done.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-p", "m=256"], "m is not a compile-time parameter"),
        (["-p", "d=65"], "d=65 is not allowed: must be one of 64, 96, 128, 192, 256"),
        (["-p", "d="], "must look like key=value or key=v1,v2"),
        (["-V", "nope=1"], "has no variant 'nope'"),
        (["-p", "page_size=64", "-V", "paged_bug=first_length"], "-V paged_bug=first_length injects a bug on purpose"),
        (["-p", "causal=true", "-p", "window_right=5"], "causal sets window_right = 0: window_right=5 would be ignored"),
        (["--timeout", "nan"], "--timeout must be a positive, finite number of seconds"),
        (["--timeout", "0"], "--timeout must be a positive, finite number of seconds"),
    ],
)
def test_export_mistakes_are_one_line_errors(fmha_export, tmp_path, args, expected):
    done = run_wb(
        "--workspace", fmha_export["ws"], "export", "fmha/d", *args, "--out", tmp_path / "x", "--allow-unverified",
        cwd=fmha_export["ws"], env=fmha_export["env"],
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert expected in done.stderr, done.stderr
    assert not (tmp_path / "x").exists()


def test_an_out_where_nothing_can_be_written_is_one_line(fmha_export):
    """`--out` on a read-only file system (or under /proc) was an OSError traceback from the
    staging folder made beside it; now one line naming --out, before anything compiles."""
    done = run_wb(
        "--workspace", fmha_export["ws"], "export", "fmha/d", "-p", "d=64", "--out", "/proc/wb-no-such/pkg", "--allow-unverified",
        cwd=fmha_export["ws"], env=fmha_export["env"],
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("wb: error: --out /proc/wb-no-such/pkg: ") and "must be writable" in done.stderr


def test_an_existing_out_folder_is_kept_unless_forced_and_only_an_export_is_replaced(fmha_export, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    args = ("--workspace", fmha_export["ws"], "export", "fmha/d", "-p", "page_size=16", "--allow-unverified")
    kept = run_wb(*args, "--out", mine, cwd=fmha_export["ws"], env=fmha_export["env"])
    assert kept.returncode == 2 and "exists and is not empty" in kept.stderr
    forced = run_wb(*args, "--out", mine, "--force", cwd=fmha_export["ws"], env=fmha_export["env"])
    assert forced.returncode == 2 and "is not an earlier wb export (notes.txt)" in forced.stderr
    assert (mine / "notes.txt").read_text() == "mine"
    # a pyproject.toml beside other things is not an export either (a project, a workspace)
    (mine / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    forced = run_wb(*args, "--out", mine, "--force", cwd=fmha_export["ws"], env=fmha_export["env"])
    assert forced.returncode == 2 and "(notes.txt)" in forced.stderr and (mine / "notes.txt").exists()


def test_force_never_replaces_a_folder_that_only_looks_like_an_export(tmp_path):
    """A project with a pyproject.toml and a web app whose folder holds a manifest.json passed
    as an earlier export, and --force deleted it; now the manifest must be an export's and the
    pyproject.toml wb's."""
    from workbench.errors import UserError
    from workbench.export.build import check_out
    from workbench.workspace import Workspace

    (tmp_path / "ws").mkdir()
    project = tmp_path / "project"
    (project / "webapp").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[project]\nname = "my-own-project"\n')
    (project / "webapp" / "manifest.json").write_text('{"name": "My PWA"}')
    (project / "dist").mkdir()
    with pytest.raises(UserError, match=r"is not an earlier wb export \(webapp\)"):
        check_out(Workspace(tmp_path / "ws"), project, force=True)
    (project / "webapp" / "manifest.json").write_text('{"schema": 1, "stage": "k/stage-a", "package": "wb_k", "configs": []}')
    with pytest.raises(UserError, match=r"its pyproject.toml is not wb's"):
        check_out(Workspace(tmp_path / "ws"), project, force=True)
    assert (project / "webapp" / "manifest.json").exists() and (project / "dist").is_dir()


@pytest.mark.parametrize("code", [0, 3, None])
def test_a_stage_that_calls_sys_exit_during_the_export_is_one_line_not_a_silent_exit(toy_ws, monkeypatch, code):
    """wb export runs the stage's code in its own process (not a worker): a stage whose import or
    compile called sys.exit(0) ended wb with exit 0 and no output, as if the export were done."""
    from workbench.errors import UserError
    from workbench.export import build
    from workbench.kernels.registry import load_kernels
    from workbench.workspace import Workspace

    def exits(*args):
        raise SystemExit(code)

    monkeypatch.setattr(build, "_export", exits)
    ws = Workspace(toy_ws)
    spec = load_kernels(ws)["toy"].stages[0]
    with pytest.raises(UserError, match=rf"called sys.exit\({code!r}\) during the export; nothing was exported"):
        build.export_stage(ws, spec, {}, {}, "sm_90a", toy_ws.parent / "out")


def test_a_failed_export_removes_the_folders_it_made_to_hold_out(toy_ws, monkeypatch, tmp_path):
    """--out a/b/pkg: a failed build removed its staging folder but left a/b, made for it."""
    from workbench.export import build

    def fails(*args):
        raise RuntimeError("the compile failed")

    monkeypatch.setattr(build, "check_tools", lambda: None)
    monkeypatch.setattr(build, "check_out", lambda *args: None)
    monkeypatch.setattr(build, "load_op_module", lambda spec, stage: (None, None, None))
    monkeypatch.setattr(build, "plan", lambda *args: [{"id": "c0", "key": {}, "params": {}, "_all": {}}])
    monkeypatch.setattr(build, "_build", fails)
    monkeypatch.setattr("workbench.export.verified.passing_runs", lambda *args: ["r"])
    from workbench.kernels.registry import load_kernels
    from workbench.workspace import Workspace

    ws = Workspace(toy_ws)
    spec = load_kernels(ws)["toy"].stages[0]
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError, match="the compile failed"):
        build.export_stage(ws, spec, {}, {}, "sm_90a", tmp_path / "kept" / "a" / "b" / "pkg")
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_product_of_configurations_past_the_plan_limit_is_refused_before_it_is_built():
    """-p heads=1..128 -p kv_heads=1..128 -p window_left=-1..200 (3.3 million configurations)
    ran for minutes and took GBs before any check; `wb sweep` refuses such a product at once."""
    from workbench.errors import UserError
    from workbench.export.build import expand

    axis = [str(i) for i in range(1, 129)]
    with pytest.raises(UserError, match=r"of 3293184 cases \(128 x 128 x 201\)"):
        expand({"heads": axis, "kv_heads": axis, "window_left": [str(i) for i in range(-1, 200)]})
    assert len(expand({"d": ["64", "128"], "causal": ["false", "true"]})) == 4


@pytest.mark.parametrize("inside", ["stages/k/exp", "stages", "runs/x", ".wb/pkg"])
def test_out_inside_wbs_own_folders_is_refused(tmp_path, inside):
    """--out under stages/KERNEL/ was taken: the export's .py files then joined the kernel's
    source hash, so the compile cache and the very runs that verified the export went stale.
    runs/ and .wb/ are wb's to write. Each is one line, before anything is written."""
    from workbench.errors import UserError
    from workbench.export.build import check_out
    from workbench.workspace import Workspace

    (tmp_path / "ws" / "stages" / "k").mkdir(parents=True)
    (tmp_path / "ws" / "wb.yaml").write_text("")
    with pytest.raises(UserError, match="which wb keeps"):
        check_out(Workspace(tmp_path / "ws"), tmp_path / "ws" / inside, force=False)
    assert not (tmp_path / "ws" / inside).exists() or inside == "stages"
    check_out(Workspace(tmp_path / "ws"), tmp_path / "ws" / "dist", force=False)  # a folder of its own


def test_force_never_replaces_the_workspace_or_a_folder_holding_it(fmha_export, tmp_path):
    """`wb export -o . --force` inside the workspace once deleted stages/, fixtures/ and runs/
    (the workspace has a pyproject.toml, the old test of an export)."""
    ws = fmha_export["ws"]
    args = ("export", "fmha/d", "-p", "d=64", "--allow-unverified", "--force")
    before = sorted(p.name for p in ws.iterdir())
    for out in (ws, ws.parent, "."):
        done = run_wb(*args, "--out", out, cwd=ws, env=fmha_export["env"])
        assert done.returncode == 2 and "is the workspace or holds it" in done.stderr, done.stderr
    assert sorted(p.name for p in ws.iterdir()) == before
    here = tmp_path / "here"
    here.mkdir()
    done = run_wb("--workspace", ws, *args, "--out", here, cwd=here, env=fmha_export["env"])
    assert done.returncode == 2 and "is the current folder or holds it" in done.stderr, done.stderr


def test_force_replaces_an_earlier_export(fmha_export, tmp_path):
    earlier = tmp_path / "earlier"
    shutil.copytree(fmha_export["out"], earlier)
    (earlier / "build").mkdir(exist_ok=True)  # what pip leaves when it builds it there is part of it
    done = run_wb(
        "--workspace", fmha_export["ws"], "export", "fmha/d", "-p", "d=64", "-p", "heads=2", "-p", "kv_heads=1",
        "--out", earlier, "--allow-unverified", "--force", cwd=fmha_export["ws"], env=fmha_export["env"],
    )
    assert done.returncode == 0, done.stderr
    assert (earlier / "pyproject.toml").is_file() and not (earlier / "build").exists()


def test_the_product_of_the_lists_is_planned_once_per_distinct_configuration():
    from workbench.export.build import expand, parse_lists

    given = parse_lists(["d=64,128", "causal=false,true", "heads=4"])
    assert expand(given) == [
        {"d": "64", "causal": "false", "heads": "4"},
        {"d": "64", "causal": "true", "heads": "4"},
        {"d": "128", "causal": "false", "heads": "4"},
        {"d": "128", "causal": "true", "heads": "4"},
    ]


def test_a_run_verifies_only_its_own_configuration_on_the_current_sources():
    from types import SimpleNamespace

    from workbench.export.verified import passing_runs

    spec = SimpleNamespace(id="k/stage-a")
    sources = {"stages/k/stage_a.py": "abc"}
    good = {
        "id": "r1", "kind": "run", "stage": "k/stage-a", "verdict": "PASS", "params": {"d": 64, "causal": True, "n": 999},
        "variants": {"v": "x"}, "provenance": {"gpu": "NVIDIA H200", "sources": dict(sources)},
    }

    def variant(**changes):
        rec = json.loads(json.dumps(good))
        for key, value in changes.items():
            target, _, field = key.partition("__")
            if field:
                rec[target][field] = value
            else:
                rec[target] = value
        return rec

    records = [
        good,
        variant(id="fail", verdict="FAIL"),
        variant(id="cpu", provenance__gpu=None),
        variant(id="edited", provenance__sources={"stages/k/stage_a.py": "old"}),
        variant(id="d128", params__d=128),
        variant(id="other-variant", variants__v="y"),
        variant(id="bench", kind="bench"),
        variant(id="other-stage", stage="k/stage-b"),
        variant(id="text", params__causal="true"),  # a value spelled as text is the same value
    ]
    assert passing_runs(records, spec, {"d": 64, "causal": True}, {"v": "x"}, sources) == ["r1", "text"]


SCAFFOLD_CHECKS = """
import json, sys, warnings
import torch
warnings.simplefilter("ignore")
import gemmx
from torch._subclasses.fake_tensor import FakeTensorMode
out = {"loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("cutlass", "workbench", "stages"))}
def refusal(*args, **kwargs):
    try:
        torch.ops.gemmx.gemm(*args, **kwargs)
    except ValueError as exc:
        return str(exc)
    return None
with FakeTensorMode():
    a = torch.empty(100, 64, dtype=torch.bfloat16, device="cuda"); b = torch.empty(70, 64, dtype=torch.bfloat16, device="cuda")
    c = torch.ops.gemmx.gemm(a, b, out_dtype="bf16")
    out["fake"] = [list(c.shape), str(c.dtype)]
    out["fp32_out"] = refusal(a, b)
    out["k"] = refusal(a, torch.empty(70, 32, dtype=torch.bfloat16, device="cuda"), out_dtype="bf16")
out["cpu"] = refusal(torch.zeros(8, 8, dtype=torch.bfloat16), torch.zeros(8, 8, dtype=torch.bfloat16), out_dtype="bf16")
fn = gemmx.load(gemmx.CONFIGS[0])
try:
    fn(torch.zeros(8, 8, dtype=torch.bfloat16), torch.zeros(8, 8, dtype=torch.bfloat16), torch.zeros(8, 8, dtype=torch.bfloat16))
    out["tvm_ffi"] = None
except Exception as exc:
    out["tvm_ffi"] = str(exc)
print(json.dumps(out))
"""


def test_the_scaffolded_kernel_exports_the_same_way(scaffold_export):
    refused = scaffold_export["refused"]
    assert refused.returncode == 2 and "no passing GPU run" in refused.stderr
    manifest = json.loads((scaffold_export["out"] / "gemmx" / "manifest.json").read_text())
    assert manifest["stage"] == "gemmx/stage-a" and manifest["op"] == "gemm"
    assert [c["key"] for c in manifest["configs"]] == [{"dtype": "bf16", "out_dtype": "bf16"}]
    out = _run_checks(scaffold_export["site"], SCAFFOLD_CHECKS)
    assert out["loaded"] == []
    assert out["fake"] == [[100, 70], "torch.bfloat16"]
    assert "configuration not exported: got [dtype=bf16 out_dtype=fp32]" in out["fp32_out"]
    assert "b.shape: expected (n, 64) (k of a), got (70, 32)" in out["k"]
    assert out["cpu"].startswith("gemmx::gemm: a.device: expected cuda, got cpu")
    assert out["tvm_ffi"] and "expected device_type=cuda" in out["tvm_ffi"]


def _embedded_cubin(blob: bytes) -> bytes:
    """The cubin inside an exported shared object: the second ELF image, cut where its last
    table (section headers or program headers) ends."""
    import struct

    start = blob.find(b"\x7fELF", 1)
    assert start > 0
    e_phoff, e_shoff = struct.unpack_from("<QQ", blob, start + 0x20)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", blob, start + 0x36)
    end = max(e_shoff + e_shentsize * e_shnum, e_phoff + e_phentsize * e_phnum)
    return blob[start : start + end]


@pytest.mark.slow
def test_the_exported_kernel_is_the_in_tree_kernel_instruction_for_instruction(fmha_export, tmp_path):
    """A third sm_90a compile (d=64: ~5 s; `slow`): `wb compile --keep cubin` of the same
    configuration gives the same SASS as the cubin inside the exported object, instruction for
    instruction, so what is exported is what `wb run` verifies (only the host side differs)."""
    import re

    from workbench.compile.resources import disassemble, find_nvdisasm

    if find_nvdisasm() is None:
        pytest.skip("nvdisasm not installed (pip install 'cute-wb[sass]')")
    ws, env = fmha_export["ws"], fmha_export["env"]
    done = run_wb("compile", "fmha/d", "-p", "d=64", "-p", "heads=2", "-p", "kv_heads=1", "--keep", "cubin", "--json", cwd=ws, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(done.stdout)
    in_tree = (ws / record["artifacts"]["fmha-stage-d.sm_90a.cubin"]).read_bytes()  # relative to the workspace
    cfg = json.loads((fmha_export["out"] / "wb_fmha" / "manifest.json").read_text())["configs"][0]
    exported = _embedded_cubin((fmha_export["out"] / "wb_fmha" / cfg["library"]).read_bytes())

    def instructions(cubin: bytes, name: str) -> list[str]:
        (tmp_path / name).mkdir()
        text, why = disassemble(cubin, tmp_path / name)
        assert text is not None, why
        return [re.sub(r"/\*[0-9a-f]+\*/", "", line).split(";")[0].strip() for line in text.splitlines() if re.match(r"^\s*/\*[0-9a-f]{4}\*/", line)]

    ours, theirs = instructions(exported, "exported"), instructions(in_tree, "in-tree")
    assert len(ours) > 1000 and ours == theirs


def test_an_out_under_a_file_is_refused_before_compiling(tmp_path):
    """`wb export -o FILE/sub` compiled every configuration, then failed at the mkdir."""
    from workbench.errors import UserError
    from workbench.export.build import check_out
    from workbench.workspace import Workspace

    (tmp_path / "ws").mkdir()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="a-file is not a folder"):
        check_out(Workspace(tmp_path / "ws"), tmp_path / "a-file" / "sub" / "pkg", force=False)
    check_out(Workspace(tmp_path / "ws"), tmp_path / "new" / "pkg", force=False)  # folders to be made: fine


def test_an_out_that_is_a_link_or_a_file_is_refused_saying_which(tmp_path):
    """A symbolic link to a folder (/proc/self, a link made by hand) was refused as "exists and
    is not a folder", which it is; the refusal names the link."""
    from workbench.errors import UserError
    from workbench.export.build import check_out
    from workbench.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    (tmp_path / "ws").mkdir()
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="link is a symbolic link: wb does not write an export through one"):
        check_out(ws, tmp_path / "link", force=True)
    with pytest.raises(UserError, match="a-file exists and is not a folder"):
        check_out(ws, tmp_path / "a-file", force=True)


@pytest.mark.parametrize("line", ['raise RuntimeError("half written")', 'import sys; sys.exit("not ready")'])
def test_a_stage_module_that_fails_to_import_is_one_line(toy_ws, line):
    """`wb export` imported the stage in wb's own process: a stage module that raised on import
    was a traceback there, and one that called sys.exit() ended wb with its text and status 1."""
    path = toy_ws / "stages/toy/stage_a.py"
    path.write_text(line + "\n" + path.read_text())
    done = run_wb("export", "a", "--out", toy_ws.parent / "x", "--allow-unverified")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "stage_a.py: the stage module failed to import: RuntimeError: " in done.stderr
    assert not (toy_ws.parent / "x").exists()


@pytest.mark.parametrize("line, args, expected", [
    ("import os; os._exit(0)", [], r"toy/stage-a: the export failed in its worker \(the worker process died\)"),
    ("import time; time.sleep(600)", ["--timeout", "2"], r"toy/stage-a: the export ran past 2 s, so its worker was killed"),
])
def test_a_stage_that_ends_or_hangs_the_process_is_one_line_and_no_export(toy_ws, line, args, expected):
    """wb export ran the stage's code in wb's own process: a module that called os._exit(0)
    ended wb with exit 0 and no output, as if the export were done, and one that hung held wb
    for ever. The stage's code runs in a worker now: exit 2, one line, nothing exported."""
    import re

    path = toy_ws / "stages/toy/stage_a.py"
    path.write_text(line + "\n" + path.read_text())
    done = run_wb("export", "a", "--out", toy_ws.parent / "x", "--allow-unverified", *args)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stdout + done.stderr
    assert re.search(expected, done.stderr), done.stderr
    assert sorted(p.name for p in toy_ws.parent.iterdir()) == ["ws"]


def test_what_a_killed_export_worker_began_beside_out_is_removed_and_nothing_else(tmp_path):
    """A worker killed mid-build cannot remove its staging folder (.pkg.XXXX beside --out) or
    the folders it made to hold --out; the supervisor removes them: the staging folder the
    worker reported, and nothing else beside --out (it removed every new .pkg.* folder: another
    export's to the same --out, and with --out '*' any new dot folder there), and the folders
    made above --out while they are empty."""
    from workbench.export.build import missing_folders_above
    from workbench.run.export_job import _Begun

    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "a" / "b" / "*"
    before = _Begun(missing_folders_above(out))
    assert before.missing == [out.parent, out.parent.parent]
    out.parent.mkdir(parents=True)
    (out.parent / ".*.abc123" / "wb_toy").mkdir(parents=True)  # this export's
    (out.parent / ".*.other").mkdir()  # another export's, to the same --out, begun meanwhile
    (out.parent / ".my.project").mkdir()  # someone else's
    before.staging = out.parent / ".*.abc123"
    before.remove(out)
    assert sorted(p.name for p in out.parent.iterdir()) == [".*.other", ".my.project"]
    for name in (".*.other", ".my.project"):
        (out.parent / name).rmdir()
    before.remove(out)
    assert list((tmp_path / "kept").iterdir()) == []



def test_a_ctrl_c_during_the_export_ends_its_worker_and_exits_130(toy_ws):
    """A Ctrl-C while the stage's code runs (here: hangs in its import) ends the export's
    worker with its process group, says so in one line and exits 130; no process is left."""
    import signal
    import time

    from conftest import REPO

    path = toy_ws / "stages/toy/stage_a.py"
    path.write_text("import time; time.sleep(600)\n" + path.read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "export", "a", "--out", str(toy_ws.parent / "x"),
                             "--allow-unverified"], cwd=toy_ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    pidfiles = toy_ws / ".wb" / "pids"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(pidfiles.glob("*")) and proc.poll() is None:
        time.sleep(0.2)  # the worker is up once its pid file is written
    time.sleep(1.0)
    workers = [json.loads(p.read_text())["pid"] for p in pidfiles.glob("*")]
    assert workers, "no export worker started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    time.sleep(0.5)
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert sorted(p.name for p in toy_ws.parent.iterdir()) == ["ws"]


def test_the_package_folder_has_the_umasks_mode_not_mkdtemps(fmha_export):
    """The package is built in a staging folder made by mkdtemp (mode 0700) and renamed to
    --out: the package was unreadable to every other user (a team's shared dist/). It has
    the mode a mkdir would give it now."""
    from workbench.files import current_umask

    assert fmha_export["out"].stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_a_worker_that_dies_mid_build_leaves_no_staging_folder_beside_out(toy_ws):
    """The worker reports its staging folder (.<out>.XXXX beside --out) before it compiles; one
    that dies in the stage's compile (here os._exit(0)) cannot remove it, so wb does: nothing
    is left beside --out, and the folders made to hold it are gone too."""
    assert run_wb("new", "kernel", "gemmx", cwd=toy_ws).returncode == 0
    path = toy_ws / "stages/gemmx/stage_a_gemm.py"
    text = path.read_text()
    head = "    def compile(self, p: Params, variants, arch: str):\n"
    assert head in text
    path.write_text(text.replace(head, head + "        import os; os._exit(0)\n"))
    (toy_ws.parent / "dist").mkdir()
    done = run_wb("export", "gemmx/a", "-p", "out_dtype=bf16", "--allow-unverified", "--out", toy_ws.parent / "dist/a/pkg")
    assert done.returncode == 2 and "the worker process died" in done.stderr, done.stdout + done.stderr
    assert list((toy_ws.parent / "dist").iterdir()) == []
