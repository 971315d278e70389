"""The exported stage D op with and without room for its split-KV tail, same process, same
tensors. On the GPU machine, after `wb export` of a non-causal d = 128 configuration and
`pip install` of the package (or PYTHONPATH=<site>):

    python benchmarks/export_split_tail.py [--shapes 1,5120,4,2,4096 ...] [--reps 50] [--json]

A shape is batch,m,heads,kv_heads,n (d = 128, bf16; heads and kv_heads as exported). Rows:

  op          torch.ops.wb_fmha.fwd as installed: its stream's buffer holds the partials, so
              the kernel cuts a partial last wave of work tiles along the keys
  two words   the same op given the scheduler's two counters alone (what the op passed
              before it sized the buffer; the kernel then cuts nothing)

Device time per call: CUDA events around --reps back-to-back calls after 10 warm-up calls,
the median of 5 such rounds, the two rows interleaved round by round. Also checks that the
two rows' outputs are within rounding of each other (the split tile's pieces are added in
another order than the whole tile's KV steps).
"""

from __future__ import annotations

import argparse
import json
import statistics


def _timed(fn, reps: int) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps  # µs per call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1,5120,4,2,4096", "1,4608,4,2,4096", "2,4096,4,2,4096"])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch
    import wb_fmha

    op = torch.ops.wb_fmha.fwd
    dev = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.current_stream().cuda_stream
    rows = []
    for text in args.shapes:
        b, m, h, hk, n = map(int, text.split(","))
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, m, h, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, n, hk, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, n, hk, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        out = op(q, k, v)
        torch.cuda.synchronize()
        room = wb_fmha._op._per_stream[(dev, stream)]
        short = (torch.zeros(2, dtype=torch.int32, device=dev), *room[1:])
        sized = wb_fmha._op.workspace_words

        def use(entry):
            # the op grows a stream's buffer to workspace_words: the two-word row keeps it short
            wb_fmha._op.workspace_words = sized if entry is room else (lambda fns, sms: 2)
            wb_fmha._op._per_stream[(dev, stream)] = entry
            wb_fmha._op._lse_like.clear()

        def call():
            return op(q, k, v)

        use(short)
        plain = call()
        torch.cuda.synchronize()
        assert wb_fmha._op._per_stream[(dev, stream)] is short, "the op replaced the two-word buffer"
        use(room)
        times = {"op": [], "two words": []}
        for _ in range(5):
            for name, entry in (("op", room), ("two words", short)):
                use(entry)
                for _ in range(10):
                    call()
                times[name].append(_timed(call, args.reps))
        use(room)
        flops = 4 * b * h * m * n * 128
        diff = (out[0].float() - plain[0].float()).abs().max().item()
        row = {"shape": text, "tiles": b * h * -(-m // 128), "sms": room[1], "buffer_words": int(room[0].numel()),
               "max_abs_diff": diff}
        for name, ts in times.items():
            us = statistics.median(ts)
            row[name] = {"us": us, "tflops": flops / us / 1e6}
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'shape b,m,h,hk,n':>18} {'tiles':>6} {'op µs':>9} {'TFLOP/s':>8} {'2 words µs':>11} {'TFLOP/s':>8} {'ratio':>6} {'max|diff|':>9}")
        for r in rows:
            print(f"{r['shape']:>18} {r['tiles']:>6} {r['op']['us']:9.1f} {r['op']['tflops']:8.1f} {r['two words']['us']:11.1f} "
                  f"{r['two words']['tflops']:8.1f} {r['two words']['us'] / r['op']['us']:6.3f} {r['max_abs_diff']:9.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
