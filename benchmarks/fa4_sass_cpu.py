"""FlashAttention-4's Hopper forward compiled on a machine without a GPU, for a SASS comparison
with stage D's (`wb compile d --keep sass`); docs/perf-notes.md round 14 compares the two.

    pip install --no-deps --target /tmp/fa4site .gpu/p2/flash_attn_4-*.whl .gpu/p2/quack_kernels-*.whl .gpu/p2/einops-*.whl
    PYTHONPATH=/tmp/fa4site python benchmarks/fa4_sass_cpu.py --d 64 --s 4096 [--causal] --out /tmp/fa4

FA4's interface is called on FakeTensorMode tensors of (batch 16384/s, s, 2048/d heads, d), as
if on a 132-SM sm_90a card; the DSL keeps the cubin it compiles (CUTE_DSL_KEEP_CUBIN), which
nvdisasm turns into OUT/*.sass. quack's autotuner imports triton, which a CPU machine may lack:
a stand-in module takes its place (FA4's forward does not autotune)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import types
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--s", type=int, default=4096)
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--out", type=Path, required=True, help="folder for the cubin and its SASS")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.update(FLASH_ATTENTION_ARCH="sm_90a", CUTE_DSL_ARCH="sm_90a", FLASH_ATTENTION_NUM_SMS="132",
                      CUTE_DSL_KEEP_CUBIN="1", CUTE_DSL_DUMP_DIR=str(args.out))
    stand_in = types.ModuleType("quack.autotuner")
    stand_in.autotune = lambda *a, **k: (lambda f: f)
    stand_in.AutotuneConfig = type("AutotuneConfig", (), {"__init__": lambda self, *a, **k: None})
    sys.modules.setdefault("quack.autotuner", stand_in)

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        from flash_attn.cute import interface
    except ImportError as exc:
        sys.exit(f"fa4_sass_cpu: FlashAttention-4 is not importable ({exc}); see the install line in this script's docstring")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from workbench.compile.resources import find_nvdisasm

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    shape = (max(1, 16384 // args.s), args.s, max(1, 2048 // args.d), args.d)
    with FakeTensorMode(allow_non_fake_inputs=True):
        q, k, v = (torch.empty(shape, dtype=dtype, device="cuda") for _ in range(3))
        interface._flash_attn_fwd(q, k, v, causal=args.causal)
    nvdisasm = find_nvdisasm()
    cubins = sorted(args.out.rglob("*.cubin"))
    if not cubins or nvdisasm is None:
        sys.exit(f"fa4_sass_cpu: {'no cubin was kept in ' + str(args.out) if not cubins else 'nvdisasm not found'}")
    for cubin in cubins:
        sass = cubin.with_suffix(".sass")
        sass.write_text(subprocess.run([nvdisasm, "-c", str(cubin)], capture_output=True, text=True, check=True).stdout)
        print(sass)


if __name__ == "__main__":
    main()
