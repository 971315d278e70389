"""Host glue of the FMHA stages: compile, fake tensors, launch tensors, the stream, the
variants a stage is given. Plain Python that runs outside any trace; every stage imports
it (``common`` holds what the kernels trace: layouts, atoms, device helpers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from stages.fmha.geometry import LongKernel, serving

from workbench.kernels.cute_host import compile_for, current_stream, fake_stream, fake_tensor, to_cute  # noqa: F401


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
    varlen: bool = False  # stage D: packed (total, heads, d) tensors with cu_seqlens
    page_size: int = 0  # stage D: paged K/V caches read through a block table (0 = off)
    # stage D: the kernels beside fn for long shapes (geometry.long_kernels), one per LongKernel
    # of ``longs``: the first whose LongKernel serves a shape is launched for it
    fns_long: tuple = ()
    longs: tuple[LongKernel, ...] = ()
    tile_m: int = 128  # stage D varlen: Q rows per work tile (the tile table's)
    bottom_right: bool = False  # stage D varlen: the mask's alignment (the tile table's causal work)
    split_tail: bool = False  # stage D: the split-KV tail's workspace follows the tile counters
    split_slot: int = 0  # stage D: fp32 words of one partial's slot (FmhaForward.split_slot_words)
    split_max_waves: int = 0  # stage D split_tail=few: launches of this many waves or more cut nothing
    tile_n: int = 128  # stage D: keys per KV tile of ``fn`` (the split-KV tail's cost model)

    def long_for(self, m: int, n: int) -> LongKernel | None:
        """The long kernel launched for ``m`` query rows and ``n`` keys (None: ``fn``)."""
        return serving(self.longs, m, n)

    def for_shape(self, m: int, n: int):
        """The function to launch for ``m`` query rows and ``n`` keys."""
        return next((fn for long, fn in zip(self.longs, self.fns_long) if long.serves(m, n)), self.fn)

    # the exported pieces (export_op.PIECES) by name: the long kernels in the order tried
    @property
    def fn_long(self):
        return self.fns_long[0] if self.fns_long else None

    @property
    def fn_long2(self):
        return self.fns_long[1] if len(self.fns_long) > 1 else None


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
