"""The stage contract: what a stage module in stages/<kernel>/ provides.

A stage module defines one subclass of `Stage`. The registry loads it from the file named
in kernel.yaml; the runner calls, in order:

    compiled = stage.compile(params, variants, arch)        # no GPU needed
    inputs   = <fixture>(stage.inputs(params), params, seed) # torch tensors, on the device
    outputs  = <poisoned tensors of stage.outputs(params)>
    stage.launch(compiled, inputs, outputs)                  # fills outputs in place
    expected = stage.reference(inputs, params, variants, compute_dtype)

`compute_dtype` is torch.float32 for the true reference, and the kernel's own dtype for
the "PyTorch in low precision" run that calibrates the tolerance (see workbench.compare).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

if TYPE_CHECKING:  # torch is imported only where a run needs it
    import torch

DTYPES = ("bf16", "fp16", "fp32", "fp64", "int32", "int64")


@dataclass(frozen=True)
class TensorSpec:
    """Shape and element type of one input or output tensor."""

    shape: tuple[int, ...]
    dtype: str  # one of DTYPES

    def __post_init__(self):
        # a stage's typo ("float", a shape of floats) is named where the stage makes the spec,
        # not a KeyError in whatever fixture first reads it
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorSpec dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        try:
            shape = tuple(operator.index(size) for size in self.shape)
        except TypeError:
            shape = None
        if shape is None or any(size < 0 for size in shape):
            raise ValueError(f"TensorSpec shape {self.shape!r}: expected a tuple of sizes (whole numbers >= 0)")
        object.__setattr__(self, "shape", shape)

    def torch_dtype(self) -> "torch.dtype":
        return torch_dtype(self.dtype)


def torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "fp32": torch.float32,
        "fp64": torch.float64,
        "int32": torch.int32,
        "int64": torch.int64,
    }[name]


class Params(Mapping[str, Any]):
    """Resolved parameters of one run (n, d, dtype, ...), read as p.n or p["n"]."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return "Params(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def replace(self, **changes: Any) -> "Params":
        return Params({**self._values, **changes})


def param_value(params: Any, name: str, default: Any = None) -> Any:
    """params[name]; ``default`` when params lack it, are None, or hold None there. For code
    that serves several stages (fixtures, mutants, peers), whose parameters differ."""
    try:
        value = params[name]
    except (KeyError, TypeError):
        return default
    return default if value is None else value


@dataclass(frozen=True)
class ExportSpec:
    """How `wb export` packages a stage as a torch op (the stage's optional ``export``).

    namespace -- the op's library namespace and the exported package's import name
                 (``wb_fmha`` gives ``torch.ops.wb_fmha.<OP>`` and ``import wb_fmha``)
    op_module -- a file next to the stage module, copied into the package as ``_op.py``. It
                 imports nothing but torch (the package needs neither wb nor cutlass) and
                 defines:
        OP: str                          the op's name in the namespace
        SCHEMA: str                      its torch schema without the name,
                                         e.g. "(Tensor a, Tensor b) -> Tensor"
        exported_key(params) -> dict     at export: one configuration's compile-time
                                         parameters -> the key a call selects it by (JSON values)
        call_key(*args) -> dict          at a call: the key the arguments ask for
        check(*args, fake) -> list[str]  what is wrong with the arguments, each "what: expected
                                         X, got Y" (fake=True under FakeTensorMode / meta:
                                         no data pointers, any device)
        fake(*args) -> outputs           empty outputs of the right shapes (torch.compile)
        launch(fn, *args) -> outputs     allocate the outputs and call the compiled function
                                         (fn takes torch tensors; the stream is the caller's)
        PIECES: tuple[str, ...]          optional: the stage's compile returns several kernels,
                                         attributes of its result by these names (None: not
                                         built); each gets its own symbol, launch(fn) then gets
                                         {piece: (function, info)}
        piece_info(name, piece, compiled) -> dict  optional with PIECES: JSON facts a piece's
                                         launch needs (tile sizes, the rows from which it
                                         runs...) from the piece or the whole compile result,
                                         kept in the manifest
        stage_call(op, inputs, params) -> dict   optional, for `wb run --exported`: the stage's
                                         fixture inputs (by name) through the op -> the
                                         stage's outputs by name
    """

    namespace: str
    op_module: str


class Stage:
    """Base class of a stage. Subclass it in stages/<kernel>/<module>.py.

    Class attributes a subclass may set:
      needs_gpu   -- False for stages that run on the CPU (plain PyTorch test kernels)
      is_cute     -- True when compile() traces a CuTe DSL kernel (wb shapes, wb compile)
      proves, cannot_see -- one paragraph each, shown in the stage's report
    """

    needs_gpu: ClassVar[bool] = True
    is_cute: ClassVar[bool] = True
    # For the stage report: what a PASS of this stage proves, and which bugs it cannot see.
    proves: ClassVar[str] = ""
    cannot_see: ClassVar[str] = ""
    # Parameters that change the compiled code (the compile cache key); None: all of them.
    # A stage compiled with dynamic extents names the others out, e.g. ("d", "dtype").
    compile_params: ClassVar[tuple[str, ...] | None] = None
    # `wb export`: the torch op this stage becomes (None: the stage cannot be exported).
    export: ClassVar[ExportSpec | None] = None

    # Filled in by the registry from kernel.yaml.
    kernel: str = ""
    letter: str = ""
    name: str = ""

    def inputs(self, p: Params) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def outputs(self, p: Params) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def compile(self, p: Params, variants: Mapping[str, str], arch: str) -> Callable[..., Any]:
        """Trace and compile for `arch` with fake tensors; must work without a GPU."""
        raise NotImplementedError

    def launch(
        self,
        compiled: Any,
        inputs: Mapping[str, "torch.Tensor"],
        outputs: Mapping[str, "torch.Tensor"],
    ) -> None:
        """Run the compiled kernel, writing into `outputs` in place."""
        raise NotImplementedError

    # Optional: floating-point operations of one launch, for `wb bench` (TFLOP/s).
    # def flops(self, p: Params) -> float: ...

    # Optional: a tile timeline of one launch, for `wb run --trace`: build the kernel with clock
    # stamps, launch it once on these inputs and outputs, decode the stamps.
    # def trace(self, p, variants, arch, inputs, outputs) -> workbench.run.timeline.Timeline: ...

    def reference(
        self,
        inputs: Mapping[str, "torch.Tensor"],
        p: Params,
        variants: Mapping[str, str],
        compute_dtype: "torch.dtype",
    ) -> dict[str, "torch.Tensor"]:
        """The expected outputs, computed by PyTorch in `compute_dtype`."""
        raise NotImplementedError


#: what a run calls of every stage (Stage's own versions raise NotImplementedError)
RUN_METHODS = ("inputs", "outputs", "compile", "launch", "reference")
