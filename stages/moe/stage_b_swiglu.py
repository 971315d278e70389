"""Stage B: stage A's GEMM with the activation fused into the epilogue.

out = act(x · w1) for one expert: x (m, h), w1 (h, 2i) with gate/up interleaved per column
(column 2j = gate_j, 2j + 1 = up_j, stages/moe/layout.py).

* swiglu: out (m, i) = silu(gate) · up, computed in fp32 on the accumulator registers,
  one store of i columns in the kernel's dtype (D is never written).
* gptoss: out (m, i) = g · sigmoid(1.702 g) · (u + 1), g = min(gate, 7), u = clamp(up, ±7).
* identity: out (m, 2i) = the raw interleaved accumulator (stage A's D), for isolating
  the GEMM from the activation.

``activation`` is a kernel.yaml *parameter* (not a variant): the output's shape depends on
it and ``Stage.outputs`` sees only the parameters.

Why no data exchange is needed (probe ``tCrAcc`` = ((2, 2, 32), 1, 1) and ``tCcAcc``, and
``gemm.accumulator_pairs`` in tests/test_moe_gemm.py): mode 0.0 of the WGMMA accumulator is
two adjacent columns (8 b + 2 (t % 4), + 1) of one row, i.e. flat registers 2j and 2j + 1 of
every thread hold gate and up of the same output column (n_base + col) / 2.
"""

from __future__ import annotations

from typing import Mapping

from cutlass import Int32

from workbench.kernels.stage import Params, Stage, TensorSpec

from stages.moe import host
from stages.moe.gemm import MoeGemmSm90
from stages.moe.stage_a_gemm import kernel_config


class StageB(Stage):
    """wb stage B: out = activation(x · w1) with the activation in the GEMM's epilogue."""

    proves = (
        "Everything stage A proves, plus: gate and up of one output column are taken from the right "
        "accumulator registers (interleaved W1: columns 2j, 2j + 1), the activation is computed in fp32 "
        "before the one rounding, and output column j of every tile lands at (n_tile · tile_n + col) / 2."
    )
    cannot_see = (
        "Routing, many experts, gathered rows and the down-projection (stages C and D). A gate/up swap is "
        "visible (silu(g)·u != silu(u)·g) but an activation wrong only beyond |x| ~ 7 is seen only when "
        "the GEMM values reach it (random inputs of size h do)."
    )
    compile_params = ("dtype", "activation")  # m, h and i are runtime values

    def inputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"x": TensorSpec((p.m, p.h), p.dtype), "w1": TensorSpec((p.h, 2 * p.i), p.dtype)}

    def outputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"out": TensorSpec((p.m, MoeGemmSm90.out_cols(2 * p.i, p.activation)), p.dtype)}

    def flops(self, p: Params) -> float:
        """2·m·h·2i (the activation's few flops per output are not counted)."""
        return 2.0 * p.m * p.h * 2 * p.i

    def make_kernel(self, p: Params, variants: Mapping[str, str] | None = None) -> MoeGemmSm90:
        return MoeGemmSm90(host.cute_dtype(p.dtype), activation=p.activation, **kernel_config(variants, p.activation))

    def compile(self, p: Params, variants: Mapping[str, str], arch: str):
        dtype = host.cute_dtype(p.dtype)
        self.kernel_obj = self.make_kernel(p, variants)
        x, w, out = (host.fake_tensor(dtype, 2) for _ in range(3))
        return host.compile_for(arch, self.kernel_obj, x, w, out, Int32(132), host.fake_stream())

    def launch(self, compiled, inputs, outputs) -> None:
        x, w1, out = inputs["x"], inputs["w1"], outputs["out"]
        n = w1.shape[1]
        host.check_gemm_operands(x, w1, out, n if out.shape[1] == n else n // 2)
        compiled(host.to_cute(x), host.to_cute(w1), host.to_cute(out), Int32(host.sm_count(x.device)), host.current_stream())

    def reference(self, inputs, p: Params, variants, compute_dtype):
        from stages.moe import reference

        return {"out": reference.up_projection(inputs["x"], inputs["w1"], p.activation, compute_dtype)}
