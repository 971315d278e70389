"""Host time per call of the exported stage D op, beside FA4 and SDPA in the same process
(issue 17's target: <= 15 µs median at a tiny shape). On the GPU machine, from the repo root,
after `wb export` and `pip install` of the package (or PYTHONPATH=<site>):

    python benchmarks/export_launch_cost.py [--calls 1000] [--shape 1,128,4,2,128] [--varlen] [--json]

Host time = wall time of the Python call alone (perf_counter around each call; no
synchronize inside the loop; the queue is kept short by a synchronize every 50 calls, outside
the timed region), median over --calls calls after 50 warm-up calls. Rows:

  wb_fmha op             torch.ops.wb_fmha.fwd: dispatcher, host checks, output allocation,
                         TVM-FFI call (DLPack of 6 tensors, env stream), launch
  wb_fmha.fwd entry      the package's eager entry: the same checks and launch, no dispatcher
  wb_fmha unchecked      the launch alone (output allocation + TVM-FFI call), no checks
  tvm-ffi call only      the TVM-FFI call with preallocated outputs
  in-tree (wb run)       stage D's own launch: from_dlpack per tensor + the JIT function
  fa4                    flash_attn.cute.flash_attn_func (when installed)
  sdpa                   F.scaled_dot_product_attention (flash backend, the default choice)

--varlen (a package exported with varlen=true for heads, kv_heads, d): the same batch packed,
(batch * seqlen, heads, d) with cu_seqlens, and rows for the varlen op with its work-tile
table cached (the same cu_seqlens every call, as a model's layers share them), rebuilt (the
offsets changed in place before every call: torch.autograd.graph.increment_version, no
kernel), and FA4's flash_attn_varlen_func.

Also a device-time row per op (CUDA events over 200 back-to-back calls) so a small host
number is not mistaken for a fast kernel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def host_us(fn, calls: int) -> float:
    import torch

    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i % 50 == 49:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return statistics.median(times) * 1e6


def device_us(fn, calls: int = 200) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def varlen_rows(q, k, v, b: int, s: int, causal: bool) -> dict:
    """The varlen op's rows: the batch packed, its work-tile table cached or rebuilt, FA4's
    varlen path beside (when installed)."""
    import torch

    pq, pk, pv = (t.reshape(b * s, *t.shape[2:]) for t in (q, k, v))
    cu = torch.arange(0, b * s + 1, s, dtype=torch.int32, device="cuda")
    cu_k = cu.clone()

    def cached():
        return torch.ops.wb_fmha.fwd(pq, pk, pv, causal=causal, cu_seqlens_q=cu, cu_seqlens_k=cu_k)

    def rebuilt():
        torch.autograd.graph.increment_version(cu)  # as an in-place change would: the op builds the table again
        return torch.ops.wb_fmha.fwd(pq, pk, pv, causal=causal, cu_seqlens_q=cu, cu_seqlens_k=cu_k)

    rows = {"varlen op, table cached": cached, "varlen op, table rebuilt": rebuilt}
    try:
        from flash_attn.cute import flash_attn_varlen_func

        def fa4_varlen():
            return flash_attn_varlen_func(pq, pk, pv, cu_seqlens_q=cu, cu_seqlens_k=cu_k, max_seqlen_q=s, max_seqlen_k=s, causal=causal)

        fa4_varlen()
        rows["fa4 varlen"] = fa4_varlen
    except ImportError:
        print("fa4 varlen row skipped: flash_attn.cute not installed", file=sys.stderr)
    return rows


def main() -> None:
    import torch
    import torch.nn.functional as F

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--shape", default="1,128,4,2,128", help="batch,seqlen,heads,kv_heads,d (the export must hold heads, kv_heads, d)")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--varlen", action="store_true", help="time the varlen op too (packed sequences, cu_seqlens)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    b, s, h, hk, d = (int(x) for x in args.shape.split(","))

    import wb_fmha

    q = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16)
    rows = {}

    def op():
        return torch.ops.wb_fmha.fwd(q, k, v, causal=args.causal)

    def entry():
        return wb_fmha.fwd(q, k, v, causal=args.causal)

    ffi_fn = wb_fmha.load(wb_fmha.select(wb_fmha._op.call_key(q, k, v, causal=args.causal)))

    def unchecked():
        return wb_fmha._op.launch(ffi_fn, q, k, v, causal=args.causal)

    o_pre, lse_pre = torch.empty_like(q), torch.empty(b, h, s, device="cuda")
    counter = torch.zeros(2, dtype=torch.int32, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def ffi_only():
        ffi_fn["fn"][0](q, k, v, o_pre, lse_pre, counter, sms, None, None, None, None, None)

    rows["wb_fmha op"] = op
    rows["wb_fmha.fwd entry"] = entry
    rows["wb_fmha unchecked"] = unchecked
    rows["tvm-ffi call only"] = ffi_only

    try:  # stage D as `wb run` launches it (needs cutlass and the repository)
        from workbench.kernels.registry import load_kernels, resolve_stage
        from workbench.kernels.stage import Params
        from workbench.workspace import find_workspace

        ws = find_workspace(str(Path(__file__).resolve().parents[1]))
        ws.activate()
        spec = resolve_stage(ws, "fmha/d", load_kernels(ws))
        stage = spec.load()
        params = spec.resolve_params({"d": str(d), "heads": str(h), "kv_heads": str(hk), "causal": str(args.causal).lower()})
        compiled = stage.compile(Params(params), spec.resolve_variants({}), "sm_90a")
        o = torch.empty_like(q)
        lse = torch.empty(b, h, s, device="cuda")

        def in_tree():
            stage.launch(compiled, {"q": q, "k": k, "v": v}, {"o": o, "lse": lse})

        rows["in-tree (wb run)"] = in_tree
    except Exception as exc:  # noqa: BLE001 - a benchmark row, not a test
        print(f"in-tree row skipped: {exc}", file=sys.stderr)

    try:
        from flash_attn.cute import flash_attn_func

        def fa4():
            return flash_attn_func(q, k, v, causal=args.causal)

        fa4()
        rows["fa4"] = fa4
    except ImportError:
        print("fa4 row skipped: flash_attn.cute not installed", file=sys.stderr)

    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def sdpa():
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=args.causal, enable_gqa=h != hk)

    rows["sdpa"] = sdpa
    if args.varlen:
        rows.update(varlen_rows(q, k, v, b, s, args.causal))

    results = []
    for name, fn in rows.items():
        results.append({"name": name, "host_us": round(host_us(fn, args.calls), 2), "device_us": round(device_us(fn), 2)})
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": {"batch": b, "seqlen": s, "heads": h, "kv_heads": hk, "d": d, "causal": args.causal},
        "calls": args.calls,
        "manifest": {k: wb_fmha.MANIFEST[k] for k in ("stage", "commit", "dirty", "dsl_version", "tvm_ffi_version")},
    }
    try:
        import torch_c_dlpack_ext  # noqa: F401

        meta["torch_c_dlpack_ext"] = True
    except ImportError:
        meta["torch_c_dlpack_ext"] = False
    if args.json:
        print(json.dumps({"meta": meta, "rows": results}, indent=2))
        return
    print(f"{meta['gpu']}  torch {meta['torch']}  shape {args.shape} causal={args.causal}  median of {args.calls} calls")
    for r in results:
        print(f"  {r['name']:<20} host {r['host_us']:>8.2f} µs   device {r['device_us']:>8.2f} µs")


if __name__ == "__main__":
    main()
