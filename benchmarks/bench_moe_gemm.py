"""Speed of MoE stages A and B (one expert's up-projection) against a dense matmul (GPU).

    python benchmarks/bench_moe_gemm.py [--m 8192] [--shapes qwen3,mixtral,deepseek,gptoss]
        [--variants "persistent=on;persistent=off;cluster_m=2;tile_n=128;group_m=1"]
        [--activation swiglu] [--check]

For each model shape (H, I) and each variant set (``;``-separated, each a ``,``-separated
list of key=value stage variants; the empty set is the defaults): stage A (D = X·W1,
(m, 2I) stored) and stage B (the activation fused, (m, I) stored) on one set of random
bf16 tensors, and torch.matmul of the same (m, H) x (H, 2I). TFLOP/s = 2·m·H·2I / t; the
goal is >= 75% of the dense matmul. Timing: wb's own (workbench.run.timing.time_cuda: L2
flushed before each repeat, CUDA events, median). ``--check`` compares each variant's
output with the fp32 reference first (max abs error next to the bf16 torch error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # name: (H, I) of one expert
    "qwen3": (2048, 768),
    "mixtral": (4096, 14336),
    "deepseek": (7168, 2048),
    "gptoss": (2880, 2880),
}


def parse_variants(text: str) -> list[dict]:
    out = []
    for part in text.split(";"):
        part = part.strip()
        out.append(dict(kv.split("=", 1) for kv in part.split(",")) if part else {})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=8192)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--variants", default=";persistent=off;cluster_m=2;tile_n=128;group_m=1")
    ap.add_argument("--activation", default="swiglu")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()

    import torch

    from stages.moe import reference
    from stages.moe.stage_a_gemm import StageA
    from stages.moe.stage_b_swiglu import StageB
    from workbench.kernels.stage import Params
    from workbench.run.timing import time_cuda

    torch.manual_seed(0)
    for name in args.shapes.split(","):
        h, i = SHAPES[name]
        p = Params({"m": args.m, "h": h, "i": i, "dtype": "bf16", "activation": args.activation, "e": 1, "topk": 1})
        x = torch.randn(args.m, h, device="cuda", dtype=torch.bfloat16)
        w1 = (torch.randn(h, 2 * i, device="cuda") / h**0.5).to(torch.bfloat16)
        flops = 2.0 * args.m * h * 2 * i
        dense = time_cuda(lambda: x @ w1, reps=args.reps)["median_ms"]
        print(f"{name}: m={args.m} h={h} i={i}  dense {flops / dense / 1e9:.0f} TFLOP/s ({dense:.3f} ms)")
        ref32 = reference.gemm(x, w1, torch.float32) if args.check else None
        for variants in parse_variants(args.variants):
            label = ",".join(f"{k}={v}" for k, v in variants.items()) or "defaults"
            for letter, stage, key in (("A", StageA(), "d"), ("B", StageB(), "out")):
                compiled = stage.compile(p, variants, "sm_90a")
                outs = {key: torch.empty(stage.outputs(p)[key].shape, device="cuda", dtype=torch.bfloat16)}
                ins = {"x": x, "w1": w1}
                run = lambda: stage.launch(compiled, ins, outs)  # noqa: E731
                note = ""
                if args.check:
                    run()
                    torch.cuda.synchronize()
                    want = reference.activate(ref32, args.activation if key == "out" else "identity")
                    lo = stage.reference(ins, p, variants, torch.bfloat16)[key].float()
                    err = (outs[key].float() - want).abs().max().item()
                    note = f"  err {err:.3g} (torch bf16 {(lo - want).abs().max().item():.3g})"
                ms = time_cuda(run, reps=args.reps)["median_ms"]
                tf = flops / ms / 1e9
                print(f"  {letter} {label:36s} {tf:6.0f} TFLOP/s  {tf / (flops / dense / 1e9):5.1%} of dense{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
