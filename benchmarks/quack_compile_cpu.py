"""Compile the quack MoE peer's two GEMMs for sm_90a on a machine with no GPU.

    QUACK_ARCH=90 CUTE_DSL_ARCH=sm_90a QUACK_CACHE_DIR=<dir> python benchmarks/quack_compile_cpu.py

quack compiles against symbolic fake tensors (QUACK_ARCH picks the kernel class without a
GPU); its torch API then fails only at the launch (CPU tensors), after the compiled object
has landed in QUACK_CACHE_DIR. Two things need a GPU before that and are stubbed here: the
persistent scheduler's cluster count (an H200's 132 SMs) and the driver. Prints one line per
GEMM: compiled, or the error. The kernels are the same for every shape (quack's shapes are
symbolic), with quack's default tiles (tuned=False).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from stages.moe import peer_quack  # noqa: E402
from stages.moe.plan import make_plan  # noqa: E402

H200_SMS = 132


def _launched_or_compiled(name, call):
    t0 = time.time()
    try:
        call()
        print(f"{name}: ran (a GPU is here?)")
        return True
    except ValueError as e:  # tvm-ffi refusing CPU tensors: the compile is done
        if "expected device_type=cuda" not in str(e):
            raise
        print(f"{name}: compiled in {time.time() - t0:.1f} s")
        return True


def main():
    if not os.environ.get("QUACK_ARCH") or not os.environ.get("QUACK_CACHE_DIR"):
        print("set QUACK_ARCH=90, CUTE_DSL_ARCH=sm_90a and QUACK_CACHE_DIR", file=sys.stderr)
        return 2
    fns = peer_quack._quack()
    if fns is None:
        print(peer_quack.missing_note(), file=sys.stderr)
        return 2
    gemm, gemm_act = fns
    import quack.gemm as qgemm
    import quack.gemm_runtime.host as qhost

    def clusters(cluster_size, **_):
        return H200_SMS // cluster_size

    qhost.get_max_active_clusters = qgemm.get_max_active_clusters = clusters
    T, H, I, E, k = 64, 256, 128, 4, 2
    x, w1, w2 = torch.randn(T, H).bfloat16(), torch.randn(E, H, 2 * I).bfloat16(), torch.randn(E, I, H).bfloat16()
    plan = make_plan(torch.randint(0, E, (T, k), dtype=torch.int32), E)
    rows, cu = plan.rows, plan.cu_seqlens
    h = torch.randn(T * k, I).bfloat16()
    _launched_or_compiled(
        "up: gemm_act swiglu, varlen M, gathered A",
        lambda: gemm_act(x, w1, activation="swiglu", cu_seqlens_m=cu, A_idx=rows, store_preact=False, tuned=False),
    )
    _launched_or_compiled("down: gemm, varlen M", lambda: gemm(h, w2, cu_seqlens_m=cu, tuned=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
