"""Host glue every CuTe DSL stage needs, whatever the kernel: compile for an arch without a
GPU, fake tensors of exactly the type a launch passes, torch -> CuTe tensors, the stream.

Plain Python that runs outside any trace; part of the stage-author API (as
workbench.kernels.stage). A stage compiles with ``compile_for(arch, kernel, fake_tensor(...),
..., fake_stream())`` and launches with ``compiled(to_cute(t), ..., current_stream())``.
cutlass and torch are imported by the functions that need them, so importing this module
costs nothing for commands that never compile.
"""

from __future__ import annotations

import contextlib

# Set by ``export_mode()`` (wb export): compile_for builds a TVM-FFI function (it takes torch
# tensors directly, and can be written out as an object file) and fake_stream stands for the
# caller's current stream instead of an argument.
_EXPORT_MODE = False


@contextlib.contextmanager
def export_mode():
    """Within: ``compile_for`` compiles with ``--enable-tvm-ffi`` and ``fake_stream()`` is the
    TVM-FFI environment stream (the launch takes no stream argument; the caller's current torch
    stream is used). A stage compiles for export with its own ``compile`` unchanged."""
    global _EXPORT_MODE
    before, _EXPORT_MODE = _EXPORT_MODE, True
    try:
        yield
    finally:
        _EXPORT_MODE = before


def in_export_mode() -> bool:
    return _EXPORT_MODE


def cute_dtype(name: str):
    """'bf16' | 'fp16' | 'fp32' -> the cutlass numeric type."""
    import cutlass

    return {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16, "fp32": cutlass.Float32}[name]


def compile_for(arch: str, fn, *args, keep_ptx: bool = False):
    """cute.compile for ``arch`` (e.g. 'sm_90a'); needs no GPU. The arch is passed as a
    compile option, so CUTE_DSL_ARCH need not be set (it is read once, at import).
    ``keep_ptx``: keep the PTX and cubin on the result (``.__ptx__``, ``.__cubin__``), for
    tests and tools that read them; the DSL also writes them as files, here into a temporary
    folder (its default is the working directory at import). ``wb compile`` keeps a stage's
    files through its own trace (workbench.compile.trace), with keep_ptx off."""
    import cutlass.cute as cute

    opts = [cute.GPUArch(arch)]
    if _EXPORT_MODE:
        opts.append(cute.EnableTVMFFI())
    if not keep_ptx:
        return cute.compile[tuple(opts)](fn, *args)
    import tempfile

    from cutlass.base_dsl.compiler import DumpDir

    opts += [cute.KeepPTX(), cute.KeepCUBIN()]
    with tempfile.TemporaryDirectory(prefix="wb-ptx-") as folder:
        return cute.compile[tuple(opts + [DumpDir(folder)])](fn, *args)


def fake_tensor(dtype, ndim: int):
    """Fake row-major tensor for compile: every extent (Int32) and stride (Int64) a runtime
    value except the last stride (1), 16-byte aligned base. It is exactly the type
    ``to_cute`` passes at launch, so one compile serves any sequence length / batch (the
    kernels take d and the tile sizes from their own constants).

    (A first version compiled with 64-bit symbolic extents and launched with static
    from_dlpack tensors; on the H200 every launch failed with CUDA_LAUNCH_INVALID_CONFIG.)"""
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    shape = tuple(cute.sym_int32() for _ in range(ndim))
    stride = tuple(cute.sym_int64() for _ in range(ndim - 1)) + (1,)
    return make_fake_tensor(dtype, shape, stride=stride, assumed_align=16)


def fake_stream():
    from cutlass.cute.runtime import make_fake_stream

    return make_fake_stream(use_tvm_ffi_env_stream=_EXPORT_MODE)


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
