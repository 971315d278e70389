"""Where stage D's time goes, piece by piece, at the model shapes (GPU).

    python benchmarks/moe_breakdown.py [--t 8192] [--shapes qwen3,mixtral,gptoss,deepseek]

Stage D compiled with its default variants (as `wb bench moe` runs it), on the `random`
fixture's inputs. Each piece is timed alone with wb's timer (workbench.run.timing.time_cuda:
L2 flushed, CUDA events, median), on the tensors the whole launch would use:

    route    top-k + softmax of the logits (stages/moe/pipeline.route)
    plan     stages/moe/plan.make_plan
    up       the grouped up-projection + SwiGLU (the kernel the launch picks: up_tile=auto)
    down     the grouped down-projection
    combine  the weighted combine back to tokens
    whole    StageD.launch, end to end (includes the two activations' allocations)

"overhead" = route + plan + combine over whole: the brief asks for <= 10% at T = 8192.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_moe_grouped import SHAPES  # noqa: E402  name: (H, I, E, top-k)


def breakdown(t: int, h: int, i: int, e: int, topk: int, variants: dict) -> dict[str, float]:
    import torch

    from stages.moe import pipeline
    from stages.moe.combine import run_combine
    from stages.moe.plan import make_plan
    from stages.moe.stage_d_moe import StageD
    from workbench.kernels.fixtures import get_fixture, load_fixtures
    from workbench.kernels.stage import Params
    from workbench.run.timing import time_cuda

    stage = StageD()
    p = Params(dict(t=t, h=h, i=i, e=e, topk=topk, dtype="bf16", activation="swiglu", routing="logits"))
    full = {"combine": "cute", "up_tile": "auto", "down_tile": "128x256", "epilogue": "smem", "bug": "none", **variants}
    compiled = stage.compile(p, full, "sm_90a")
    specs = stage.inputs(p)
    root = Path(__file__).resolve().parents[1]
    inputs = get_fixture(load_fixtures(root / "fixtures"), "random", specs).make(specs, p, 0, "cuda")
    y = torch.empty((t, h), dtype=torch.bfloat16, device="cuda")
    x, w1, w2, logits = inputs["x"], inputs["w1"], inputs["w2"], inputs["logits"]
    ids, weights = pipeline.route(logits, topk)
    plan = make_plan(ids, e)
    R = plan.num_rows
    hbuf = torch.empty((R, i), dtype=x.dtype, device="cuda")
    out = torch.empty((R, h), dtype=x.dtype, device="cuda")
    up = compiled.up_few_rows if compiled.up_few_rows is not None and R <= pipeline.FEW_ROWS * e else compiled.up

    def ms(fn) -> float:
        return time_cuda(fn, reps=30)["median_ms"]

    pieces = {
        "route": ms(lambda: pipeline.route(logits, topk)),
        "plan": ms(lambda: make_plan(ids, e)),
        "up": ms(lambda: pipeline.launch_grouped(up, x, w1, hbuf, plan.rows, plan.cu_seqlens)),
        "down": ms(lambda: pipeline.launch_grouped(compiled.down, hbuf, w2, out, plan.rows, plan.cu_seqlens)),
    }
    if compiled.combine is not None:
        pieces["combine"] = ms(lambda: run_combine(compiled.combine, y, out, plan.inverse, weights))
    else:
        pieces["combine"] = ms(lambda: pipeline.combine(y, out, plan.inverse, weights))
    pieces["whole"] = ms(lambda: stage.launch(compiled, inputs, {"y": y}))
    return pieces


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--t", type=int, default=8192)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("-V", "--variant", action="append", default=[], help="stage D variant key=value (default: its defaults)")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("moe_breakdown: needs a CUDA GPU", file=sys.stderr)
        return 2
    variants = dict(v.split("=", 1) for v in args.variant)
    print(f"card: {torch.cuda.get_device_name()} · T = {args.t} · variants {variants or 'default'}")
    print(f"{'shape':10} {'route':>7} {'plan':>7} {'up':>7} {'down':>7} {'combine':>8} {'whole':>7}  overhead  (ms)")
    for name in args.shapes.split(","):
        h, i, e, k = SHAPES[name]
        b = breakdown(args.t, h, i, e, k, variants)
        over = (b["route"] + b["plan"] + b["combine"]) / b["whole"]
        print(f"{name:10} {b['route']:7.3f} {b['plan']:7.3f} {b['up']:7.3f} {b['down']:7.3f} {b['combine']:8.3f} "
              f"{b['whole']:7.3f}  {over:7.1%}")
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
