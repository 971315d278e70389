"""Host glue of the FMHA stages: compile, fake tensors, launch tensors, the stream, the
variants a stage is given. Plain Python that runs outside any trace; every stage imports
it (``common`` holds what the kernels trace: layouts, atoms, device helpers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Type

import cutlass
import cutlass.cute as cute


def compile_for(arch: str, fn, *args, keep_ptx: bool = False):
    """cute.compile for ``arch`` (e.g. 'sm_90a'); needs no GPU. The arch is passed as a
    compile option, so CUTE_DSL_ARCH need not be set (it is read once, at import).
    ``keep_ptx``: keep the PTX and cubin on the result (``.__ptx__``, ``.__cubin__``)."""
    opts = [cute.GPUArch(arch)]
    if keep_ptx:
        opts += [cute.KeepPTX(), cute.KeepCUBIN()]
    return cute.compile[tuple(opts)](fn, *args)


def fake_tensor(dtype: Type[cutlass.Numeric], ndim: int):
    """Fake row-major tensor for compile: every extent (Int32) and stride (Int64) a runtime
    value except the last stride (1), 16-byte aligned base. It is exactly the type
    ``to_cute`` passes at launch, so one compile serves any sequence length / batch (the
    kernels take d and the tile sizes from their own constants).

    (A first version compiled with 64-bit symbolic extents and launched with static
    from_dlpack tensors; on the H200 every launch failed with CUDA_LAUNCH_INVALID_CONFIG.)"""
    from cutlass.cute.runtime import make_fake_tensor

    shape = tuple(cute.sym_int32() for _ in range(ndim))
    stride = tuple(cute.sym_int64() for _ in range(ndim - 1)) + (1,)
    return make_fake_tensor(dtype, shape, stride=stride, assumed_align=16)


def fake_stream():
    from cutlass.cute.runtime import make_fake_stream

    return make_fake_stream()


def to_cute(t):
    """torch CUDA tensor (last dim contiguous, 16-byte aligned base) -> CuTe tensor of the
    type ``fake_tensor`` declares: (?, ..., ?):(?{i64}, ..., 1)."""
    from cutlass.cute.runtime import from_dlpack

    assert t.stride(-1) == 1 and t.data_ptr() % 16 == 0, "last dim contiguous, 16-byte aligned base"
    return from_dlpack(t.detach(), assumed_align=16).mark_layout_dynamic(leading_dim=t.dim() - 1)


def current_stream():
    """The current torch CUDA stream as a CUstream for a compiled call."""
    import torch
    from cuda.bindings import driver as cuda

    return cuda.CUstream(torch.cuda.current_stream().cuda_stream)


def check_launch_shapes(q, k, out, tile: int = 128) -> None:
    """Stages A and B: refuse inputs the kernels do not handle (the compiled function does
    not check): q (m, d), k (n, d), out (m, n), all contiguous CUDA tensors, m and n
    multiples of ``tile``, q and k of one dtype."""
    m, d = q.shape
    n, dk = k.shape
    problems = []
    if dk != d:
        problems.append(f"q has d={d}, k has d={dk}")
    if tuple(out.shape) != (m, n):
        problems.append(f"output shape {tuple(out.shape)} != (m, n) = ({m}, {n})")
    if m % tile or n % tile:
        problems.append(f"m={m} and n={n} must be multiples of {tile}")
    for name, t in (("q", q), ("k", k), ("out", out)):
        if not t.is_contiguous():
            problems.append(f"{name} is not contiguous")
        if t.data_ptr() % 16:
            problems.append(f"{name} is not 16-byte aligned")
    if q.dtype != k.dtype:
        problems.append(f"q is {q.dtype}, k is {k.dtype}")
    if problems:
        raise ValueError("fmha launch: " + "; ".join(problems))


@dataclass
class Compiled:
    """What stages C and D's ``compile`` return: the JIT function plus plain facts
    (picklable, so wb's disk cache can keep it)."""

    fn: Any
    d: int
    heads: int = 1
    kv_heads: int = 1
    causal: bool = False
    p_check: str = ""  # the trace-time proof of the P hand-over (softmax.check_p_operand_mapping)
    compile_s: float = 0.0


@functools.lru_cache(maxsize=1)
def _kernel_spec():
    from workbench.kernels.registry import load_kernel

    return load_kernel(Path(__file__).with_name("kernel.yaml"))


def variants_of(letter: str, given: Mapping[str, str] | None) -> dict[str, str]:
    """Stage ``letter``'s variants as kernel.yaml declares them (the one list of choices):
    ``given`` over the defaults, checked by the registry's rule. wb passes them resolved
    already; a direct caller (a test, a benchmark) may pass a few or none."""
    return _kernel_spec().stage(letter).resolve_variants({k: str(v) for k, v in dict(given or {}).items()})


def truthy(x) -> bool:
    """A parameter spelled as bool or as text (true/false, on/off, 1/0, yes/no)."""
    if isinstance(x, str):
        return x.strip().lower() in ("1", "true", "yes", "on")
    return bool(x)
