"""Host glue of the MoE stages: dtypes, fake tensors for compiling, launch tensors, the stream.

Plain Python that runs outside any trace. ``compile_for``, ``fake_tensor``, ``fake_stream``,
``to_cute`` and ``current_stream`` are kernel-agnostic copies of stages/fmha/host.py's
helpers (same types, so the two families compile and launch alike); one shared stage-author
module for them is a later step.
"""

from __future__ import annotations

import functools
from typing import Type

import cutlass
import cutlass.cute as cute

#: alignment (elements) the kernels assume of every row stride: TMA needs 16-byte strides
ALIGN_ELEMS = 8


def cute_dtype(name: str) -> Type[cutlass.Numeric]:
    """'bf16' | 'fp16' | 'fp32' -> the cutlass numeric type."""
    return {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16, "fp32": cutlass.Float32}[name]


def compile_for(arch: str, fn, *args, keep_ptx: bool = False):
    """cute.compile for ``arch`` (e.g. 'sm_90a'); needs no GPU. ``keep_ptx`` keeps the PTX
    and cubin on the result (``.__ptx__``, ``.__cubin__``)."""
    opts = [cute.GPUArch(arch)]
    if keep_ptx:
        opts += [cute.KeepPTX(), cute.KeepCUBIN()]
    return cute.compile[tuple(opts)](fn, *args)


def fake_tensor(dtype: Type[cutlass.Numeric], ndim: int):
    """Fake row-major tensor for compile: extents Int32, strides Int64, all runtime values
    except the last stride (1); 16-byte aligned base. The type ``to_cute`` passes at launch."""
    from cutlass.cute.runtime import make_fake_tensor

    shape = tuple(cute.sym_int32() for _ in range(ndim))
    stride = tuple(cute.sym_int64() for _ in range(ndim - 1)) + (1,)
    return make_fake_tensor(dtype, shape, stride=stride, assumed_align=16)


def fake_stream():
    from cutlass.cute.runtime import make_fake_stream

    return make_fake_stream()


def to_cute(t):
    """torch CUDA tensor (last dim contiguous, 16-byte aligned base) -> CuTe tensor of the
    type ``fake_tensor`` declares."""
    from cutlass.cute.runtime import from_dlpack

    assert t.stride(-1) == 1 and t.data_ptr() % 16 == 0, "last dim contiguous, 16-byte aligned base"
    return from_dlpack(t.detach(), assumed_align=16).mark_layout_dynamic(leading_dim=t.dim() - 1)


def current_stream():
    """The current torch CUDA stream as a CUstream for a compiled call."""
    import torch
    from cuda.bindings import driver as cuda

    return cuda.CUstream(torch.cuda.current_stream().cuda_stream)


def sm_count(device) -> int:
    """Streaming multiprocessors of ``device`` (the grid of a persistent kernel)."""
    import torch

    return _sm_count(torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(index).multi_processor_count


def check_gemm_operands(x, w, out, out_cols: int) -> None:
    """Refuse operands the GEMM kernel does not handle (the compiled function does not check):
    x (M, K), w (K, N), out (M, out_cols), one dtype, row strides multiples of 8 elements
    (16 bytes: TMA's rule, and the epilogue's vector stores), 16-byte aligned bases."""
    problems = []
    m, k = x.shape
    kw, n = w.shape
    if kw != k:
        problems.append(f"x is (M, {k}) but w has {kw} rows")
    if tuple(out.shape) != (m, out_cols):
        problems.append(f"output shape {tuple(out.shape)} != ({m}, {out_cols})")
    for name, t in (("x", x), ("w", w), ("out", out)):
        if t.stride(-1) != 1:
            problems.append(f"{name}'s last dim is not contiguous")
        elif t.dim() == 2 and t.shape[0] > 1 and t.stride(0) % ALIGN_ELEMS:
            problems.append(f"{name}'s row stride {t.stride(0)} is not a multiple of {ALIGN_ELEMS}")
        if t.data_ptr() % 16:
            problems.append(f"{name} is not 16-byte aligned")
    if not (x.dtype == w.dtype == out.dtype):
        problems.append(f"dtypes differ: x {x.dtype}, w {w.dtype}, out {out.dtype}")
    if problems:
        raise ValueError("moe gemm launch: " + "; ".join(problems))
