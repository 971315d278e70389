"""Host glue of the MoE stages: dtypes, fake tensors for compiling, launch tensors, the stream.

Plain Python that runs outside any trace. ``compile_for``, ``fake_tensor``, ``fake_stream``,
``to_cute``, ``current_stream`` and ``cute_dtype`` are workbench.kernels.cute_host's (the
stage-author API every CuTe kernel family shares); this module adds MoE's own checks.
"""

from __future__ import annotations

import functools

from workbench.kernels.cute_host import (  # noqa: F401
    compile_for,
    cute_dtype,
    current_stream,
    fake_stream,
    fake_tensor,
    to_cute,
)

#: alignment (elements) the kernels assume of every row stride: TMA needs 16-byte strides
ALIGN_ELEMS = 8


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
