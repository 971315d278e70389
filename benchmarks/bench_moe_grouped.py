"""Speed of MoE stage C's grouped GEMM against a dense matmul of the same size (GPU).

    python benchmarks/bench_moe_grouped.py [--t 8192] [--shapes qwen3,mixtral,deepseek,gptoss]
                                           [--tile-m 128] [--tile-n 256] [--stages auto] [--check]

For each model shape (H, I, E, top-k) and T tokens, routed by the top-k of random logits:

* up:    stage C's kernel, x (T, H) gathered through the plan, W1 (E, H, 2I), SwiGLU -> (R, I)
* down:  the same kernel without gather (A by TMA), h (R, I) @ W2 (E, I, H) -> (R, H)
* dense: torch.matmul of the up-projection's size, (R, H) @ (H, 2I), and of the down's
* torch._grouped_mm of the same up-projection, where this torch has it

TFLOP/s = 2·R·K·N / t; the goal (docs: the MoE brief) is >= 75% of the dense matmul at
Mixtral and DeepSeek-V3 shapes at T = 8192, >= 60% at Qwen3-30B-A3B. Timing: wb's own
(workbench.run.timing.time_cuda: L2 flushed, CUDA events, median). The plan is built once,
outside the timed call (stage C's launch builds it per call; see the line "plan").
``--check`` also compares the up-projection with the torch reference at each shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # name: (H, I, E, top-k)
    "qwen3": (2048, 768, 128, 8),
    "mixtral": (4096, 14336, 8, 2),
    "deepseek": (7168, 2048, 256, 8),
    "gptoss": (2880, 2880, 128, 4),
}
GOAL = {"qwen3": 0.60, "mixtral": 0.75, "deepseek": 0.75, "gptoss": None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--t", type=int, default=8192)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--tile-m", type=int, default=128)
    ap.add_argument("--tile-n", type=int, default=256)
    ap.add_argument("--stages", default="auto")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()

    import torch

    from stages.moe import stage_c_grouped as sc
    from stages.moe.plan import make_plan
    from workbench.run.timing import time_cuda

    stages = sc.AUTO_STAGES[args.tile_m, args.tile_n] if args.stages == "auto" else int(args.stages)
    dev = "cuda"
    dt = torch.bfloat16
    print(f"T = {args.t}, bf16, tile {args.tile_m} x {args.tile_n} x 64, {stages} stages, {torch.cuda.get_device_name()}")
    for name in args.shapes.split(","):
        H, I, E, k = SHAPES[name]
        T = args.t
        R = T * k
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(T, H, device=dev, generator=g).to(dt)
        w1 = (torch.randn(E, H, 2 * I, device=dev, generator=g) / H**0.5).to(dt)
        w2 = (torch.randn(E, I, H, device=dev, generator=g) / I**0.5).to(dt)
        ids = torch.topk(torch.randn(T, E, device=dev, generator=g), k, dim=-1).indices.to(torch.int32)
        plan = make_plan(ids, E)
        h = torch.empty(R, I, device=dev, dtype=dt)
        y = torch.empty(R, H, device=dev, dtype=dt)
        tiles = {"tile_m": args.tile_m, "tile_n": args.tile_n, "stages": stages}
        _, up = sc.compile_grouped("bf16", H, 2 * I, "swiglu", True, **tiles)
        _, down = sc.compile_grouped("bf16", I, H, "none", False, **tiles)

        rows: list[tuple[str, float, float]] = []

        def timed(label, fn, flops):
            ms = time_cuda(fn, reps=args.reps)["median_ms"]
            rows.append((label, ms, flops / ms / 1e9))

        f_up, f_down = 2.0 * R * H * 2 * I, 2.0 * R * I * H
        timed("up   stage C (gather, swiglu)", lambda: sc.run_grouped(up, x, w1, h, plan.rows, plan.cu_seqlens), f_up)
        timed("down stage C (no gather, TMA A)", lambda: sc.run_grouped(down, h, w2, y, plan.rows, plan.cu_seqlens), f_down)
        a_d, b_d = torch.randn(R, H, device=dev, dtype=dt), torch.randn(H, 2 * I, device=dev, dtype=dt)
        timed("up   dense matmul (R, H) @ (H, 2I)", lambda: torch.matmul(a_d, b_d), f_up)
        a_d2, b_d2 = torch.randn(R, I, device=dev, dtype=dt), torch.randn(I, H, device=dev, dtype=dt)
        timed("down dense matmul (R, I) @ (I, H)", lambda: torch.matmul(a_d2, b_d2), f_down)
        timed("plan (make_plan, not in the rows above)", lambda: make_plan(ids, E), 0.0)
        if hasattr(torch, "_grouped_mm"):
            xs = x[plan.rows.long()]
            offs = plan.cu_seqlens[1:].contiguous()
            try:
                timed("up   torch._grouped_mm (pre-gathered)", lambda: torch._grouped_mm(xs, w1, offs=offs), f_up)
            except Exception as exc:  # noqa: BLE001 (a peer that does not run is reported, not fatal)
                print(f"  torch._grouped_mm: {type(exc).__name__}: {exc}")

        print(f"\n{name}: H={H} I={I} E={E} top-{k} R={R}")
        for label, ms, tf in rows:
            print(f"  {label:<42} {ms:8.3f} ms {tf:7.1f} TFLOP/s" if tf else f"  {label:<42} {ms:8.3f} ms")
        up_ratio = rows[0][2] / rows[2][2]
        down_ratio = rows[1][2] / rows[3][2]
        goal = GOAL[name]
        print(f"  up / dense {up_ratio:.2f}   down / dense {down_ratio:.2f}" + (f"   (goal >= {goal:.2f})" if goal else ""))
        if args.check:
            ref = sc.grouped_reference(x, ids, w1, "swiglu", torch.float32)
            err = (h.float() - ref).abs().max().item()
            print(f"  check up: max |h - ref_fp32| = {err:.3g} (max |ref| {ref.abs().max().item():.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
