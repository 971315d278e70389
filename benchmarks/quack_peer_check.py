"""GPU check of the quack MoE peer (stages/moe/peer_quack.py); installs nothing.

On the device machine, from the repository root, after the DSL and peers are installed
(.gpu/p1 + .gpu/p2, see README) and .whl-peers/ (cloudpickle) beside them:
    . benchmarks/gpu_quack_env.sh && python3 benchmarks/quack_peer_check.py [--reps 40] [--skip-tuned]

1. correctness at a small shape (T 512, H 256, I 128, E 8, top-2, one expert no token picks):
   the peer against a plain torch fp32 computation; PASS when its max error is within twice
   that of a torch pipeline rounding where the peer rounds (h, the down-projection's output
   and the combine weights in bf16) - quack's own test criterion. The same for the
   up-projection alone (stage C's peer).
2. speed at Qwen3-30B-A3B's shape (H 2048, I 768, E 128, top-8, T 8192), bf16: the quack
   pipeline with quack's default tiles and autotuned, its up-projection alone, and the torch
   grouped pipeline (torch._grouped_mm) of DESIGN.md's table. Timer as DESIGN.md: a GPU
   sleep queued first, a 256 MiB L2 flush before each repeat, CUDA events, median.
Exit status 1 when a check FAILs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from stages.moe import peer_quack  # noqa: E402
from stages.moe.plan import make_plan  # noqa: E402


def make_case(T, H, I, E, k, seed=0, empty_expert=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(T, H, device=dev, generator=g).to(bf)
    w1 = (torch.randn(E, H, 2 * I, device=dev, generator=g) / H**0.5).to(bf)
    w2 = (torch.randn(E, I, H, device=dev, generator=g) / I**0.5).to(bf)
    logits = torch.randn(T, E, device=dev, generator=g)
    if empty_expert:
        logits[:, E - 1] = -float("inf")
    vals, ids = torch.topk(logits, k, dim=-1)
    return {"x": x, "w1": w1, "w2": w2, "topk_ids": ids.to(torch.int32), "topk_weights": torch.softmax(vals, -1)}


def torch_moe(inp, dtype, round_weights=False, up_only=False):
    """Per token and expert, plainly: y[t] = Σ_j w · W2[e]ᵀ silu(g)·u with gate/up
    interleaved in W1. dtype float32: the reference (every step fp32). dtype bf16: fp32
    accumulate, rounded to bf16 where the peer rounds. up_only: h (R, I) in plan order."""
    x, w1, w2 = inp["x"].float(), inp["w1"].float(), inp["w2"].float()
    ids, wts = inp["topk_ids"].long(), inp["topk_weights"].float()
    if round_weights:
        wts = wts.to(dtype).float()
    T, k = ids.shape
    plan = make_plan(inp["topk_ids"], w1.shape[0])
    rows, cu, inverse = plan.rows, plan.cu_seqlens, plan.inverse
    hs = []
    y = torch.zeros(T, x.shape[1], device=x.device)
    outs = torch.empty(T * k, x.shape[1], device=x.device)
    for e in range(w1.shape[0]):
        lo, hi = int(cu[e]), int(cu[e + 1])
        if lo == hi:
            continue
        d = x[rows[lo:hi].long()] @ w1[e]
        h = (torch.nn.functional.silu(d[:, 0::2]) * d[:, 1::2]).to(dtype).float()
        hs.append(h)
        outs[lo:hi] = (h @ w2[e]).to(dtype).float()
    if up_only:
        return torch.cat(hs)
    for j in range(k):
        y += wts[:, j : j + 1] * outs[inverse[:, j]]
    return y.to(dtype).float()


def check(name, got, ref, pt):
    err = (got.float() - ref).abs().max().item()
    err_pt = (pt - ref).abs().max().item()
    ok = err <= 2 * err_pt + 1e-5
    scale = ref.abs().max().item()
    print(f"{name}: max |peer - fp32| = {err:.3e} (relative {err / scale:.2e}); torch bf16 pipeline {err_pt:.3e}  {'PASS' if ok else 'FAIL'}")
    return ok


def time_ms(fn, reps):
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    torch.cuda._sleep(200_000_000)  # ~0.1 s: the host enqueues every repeat ahead of the GPU
    for a, b in ev:
        flush.zero_()
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    t = sorted(a.elapsed_time(b) for a, b in ev)
    return t[len(t) // 2]


def torch_grouped_pipeline(inp, E):
    x, w1, w2, ids, wts = (inp[n] for n in ("x", "w1", "w2", "topk_ids", "topk_weights"))

    def run():
        plan = make_plan(ids, E)
        rows, cu, inverse = plan.rows, plan.cu_seqlens, plan.inverse
        d = torch._grouped_mm(x.index_select(0, rows), w1, offs=cu[1:])
        h = torch.nn.functional.silu(d[:, 0::2]) * d[:, 1::2]
        out = torch._grouped_mm(h, w2, offs=cu[1:])
        return peer_quack.combine(out, inverse, wts)

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--skip-tuned", action="store_true", help="time quack's default tiles only")
    args = ap.parse_args()
    import cutlass
    import quack

    try:
        import cloudpickle  # quack's compile workers take process-local epilogues through it

        pickle_note = f"cloudpickle {cloudpickle.__version__}"
    except ImportError:
        pickle_note = "no cloudpickle (quack compiles in-process where its workers need it)"
    print(pickle_note)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; quack from {os.path.dirname(quack.__file__)}; cutlass from {os.path.dirname(cutlass.__file__)}")
    ok = True

    inp = make_case(512, 256, 128, 8, 2, empty_expert=True)
    t0 = time.time()
    peer = peer_quack.make_quack_peer(inp, {"quack_tuned": "false"})
    if peer is None:
        print("quack peer unavailable:", peer_quack.missing_note())
        return 1
    print(f"peer built (compiles included) in {time.time() - t0:.1f} s")
    ref, pt = torch_moe(inp, torch.float32), torch_moe(inp, torch.bfloat16, round_weights=True)
    ok &= check("moe ffn (quack up + down, torch combine)", peer(), ref, pt)
    up = peer_quack.make_quack_up_peer(inp, {"quack_tuned": "false"})
    ok &= check("up-projection + swiglu (stage C)", up(), torch_moe(inp, torch.float32, up_only=True), torch_moe(inp, torch.bfloat16, up_only=True))

    T, H, I, E, k = 8192, 2048, 768, 128, 8
    inp = make_case(T, H, I, E, k, seed=1)
    flop = 2 * T * k * H * 2 * I + 2 * T * k * I * H
    runs = [("quack pipeline, default tiles", lambda: peer_quack.make_quack_peer(inp, {"quack_tuned": "false"}))]
    if not args.skip_tuned:
        runs.append(("quack pipeline, autotuned", lambda: peer_quack.make_quack_peer(inp, {"quack_tuned": True})))
        runs.append(("quack pipeline, autotuned, dynamic scheduler",
                     lambda: peer_quack.make_quack_peer(inp, {"quack_tuned": True, "quack_dynamic_scheduler": True})))
    runs.append(("quack up-projection + swiglu only (autotuned)" if not args.skip_tuned else "quack up-projection + swiglu only",
                 lambda: peer_quack.make_quack_up_peer(inp, {"quack_tuned": str(not args.skip_tuned)})))
    runs.append(("torch grouped pipeline (_grouped_mm)", lambda: torch_grouped_pipeline(inp, E)))
    print(f"\nQwen3-30B-A3B shape: T {T}, H {H}, I {I}, E {E}, top-{k}, bf16; median of {args.reps}")
    for name, build in runs:
        t0 = time.time()
        try:
            fn = build()
            ms = time_ms(fn, args.reps)
        except Exception as e:  # one peer failing must not hide the others
            print(f"  {name}: ERROR {type(e).__name__}: {str(e)[:300]}")
            continue
        f = 2 * T * k * H * 2 * I if "only" in name else flop  # the up-projection's FLOPs alone
        print(f"  {name}: {ms:.3f} ms, {f / ms / 1e9:.0f} TFLOP/s (built in {time.time() - t0:.0f} s)")
    print("\nALL PASS" if ok else "\nSOME FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
