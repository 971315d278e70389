"""`wb export moe/d`, the CPU side: a stage whose compile returns several kernels (the MoE FFN's
up-projection at two tile heights, down-projection and combine) exports one shared object with
one TVM-FFI symbol per piece and each piece's launch facts in the manifest; the installed
package imports without cutlass, wb or the stages (an import blocker), loads all four symbols
without a GPU, gives y's shape under FakeTensorMode and torch.compile(fullgraph=True), and
refuses in one line what the kernels were not compiled for. One sm_90a compile of stage D's
kernels (module-scoped). What a GPU proves (bits equal to `wb run moe/d`) is
`wb run moe/d --exported DIR` on the GPU box."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import copy_repo_workspace, run_wb
from test_export import _pip_install, _run_checks

pytest.importorskip("tvm_ffi", reason="wb export needs apache-tvm-ffi (pip install 'wb[export]')")

PIECES = ["combine", "down", "up", "up_few_rows"]


@pytest.fixture(scope="module")
def moe_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-moe")
    ws = copy_repo_workspace(root / "ws")
    env = {"WB_HOME": str(root / "home")}
    out = root / "pkg"
    done = run_wb("--workspace", ws, "export", "moe/d", "-p", "topk=2", "--out", out, "--allow-unverified", "--json", cwd=ws, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    site = root / "site"
    _pip_install(out, site)
    return {"out": out, "site": site, "manifest": json.loads((out / "wb_moe" / "manifest.json").read_text())}


def test_each_kernel_of_the_stage_is_its_own_symbol_in_one_library_with_its_launch_facts(moe_export):
    (cfg,) = moe_export["manifest"]["configs"]
    assert cfg["key"] == {"h": 2048, "i": 768, "dtype": "bf16", "activation": "swiglu", "topk": 2}
    assert sorted(cfg["pieces"]) == PIECES and cfg["symbol"] is None
    assert cfg["pieces"]["up"]["info"] == {"n_tiles": 6, "tile_m": 128, "n_out": 768}  # 2i = 1536 / 256-column tiles, SwiGLU halves
    assert cfg["pieces"]["up_few_rows"]["info"]["tile_m"] == 64 and cfg["pieces"]["down"]["info"]["n_out"] == 2048
    so = moe_export["out"] / "wb_moe" / cfg["library"]
    exported = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True).stdout
    symbols = sorted(line.split()[-1] for line in exported.splitlines() if " T " in line)
    assert symbols == sorted("__tvm_ffi_" + p["symbol"] for p in cfg["pieces"].values())


MOE_CHECKS = """
import json, sys, warnings
import torch
warnings.simplefilter("ignore")
import wb_moe
out = {"loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("cutlass", "workbench", "stages"))}
fns = wb_moe.load(wb_moe.CONFIGS[0])
out["pieces"] = sorted(fns)
from torch._subclasses.fake_tensor import FakeTensorMode

def refusal(*args, **kwargs):
    try:
        torch.ops.wb_moe.ffn(*args, **kwargs)
    except ValueError as exc:
        return str(exc)
    return None

bf = torch.bfloat16
with FakeTensorMode():
    def cuda(*shape, dtype=bf):
        return torch.empty(*shape, dtype=dtype, device="cuda")
    x, w1, w2 = cuda(100, 2048), cuda(8, 2048, 1536), cuda(8, 768, 2048)
    ids, w = cuda(100, 2, dtype=torch.int32), cuda(100, 2, dtype=torch.float32)
    out["fake"] = list(torch.ops.wb_moe.ffn(x, w1, w2, ids, w).shape)
    out["topk3"] = refusal(x, w1, w2, cuda(100, 3, dtype=torch.int32), cuda(100, 3, dtype=torch.float32))
    out["ids64"] = refusal(x, w1, w2, cuda(100, 2, dtype=torch.int64), w)
    out["w2shape"] = refusal(x, w1, cuda(8, 700, 2048), ids, w)
    out["gelu"] = refusal(x, w1, w2, ids, w, activation="gptoss")
m = lambda *s, dtype=bf: torch.empty(*s, dtype=dtype, device="meta")
step = torch.compile(lambda *a: torch.ops.wb_moe.ffn(*a) * 2, fullgraph=True, backend="eager")
out["compiled"] = list(step(m(33, 2048), m(8, 2048, 1536), m(8, 768, 2048), m(33, 2, dtype=torch.int32), m(33, 2, dtype=torch.float32)).shape)
c = lambda *s, dtype=bf: torch.zeros(*s, dtype=dtype)
out["cpu"] = refusal(c(4, 2048), c(8, 2048, 1536), c(8, 768, 2048), c(4, 2, dtype=torch.int32), c(4, 2, dtype=torch.float32))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def moe_checks(moe_export):
    return _run_checks(moe_export["site"], MOE_CHECKS)


def test_the_package_imports_and_loads_every_piece_without_cutlass_wb_or_a_gpu(moe_checks):
    assert moe_checks["loaded"] == [] and moe_checks["pieces"] == PIECES


def test_y_has_xs_shape_under_fake_tensors_and_torch_compile(moe_checks):
    assert moe_checks["fake"] == [100, 2048] and moe_checks["compiled"] == [33, 2048]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("topk3", "configuration not exported"),
        ("ids64", "topk_ids.dtype: expected int32, got int64"),
        ("w2shape", "w2.shape: expected (8, 768, 2048)"),
        ("gelu", "(the closest exported differs in activation)"),
        ("cpu", "x.device: expected cuda, got cpu"),
    ],
)
def test_each_refusal_is_one_line_naming_what_was_expected_and_given(moe_checks, case, expected):
    message = moe_checks[case]
    assert message and message.startswith("wb_moe::ffn: ") and "\n" not in message and expected in message, message
