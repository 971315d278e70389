"""Stage D: the full MoE expert FFN forward, y = Σ_k w_tk · W2[e_tk]ᵀ · act(W1[e_tk]ᵀ · x_t).

Host pipeline (stages/moe/pipeline.py): routing (top-k + softmax of the logits on the GPU,
or given top-k), the plan (stages/moe/plan.py: rows sorted by expert, cu_seqlens,
inverse), the up-projection with SwiGLU (stage C's grouped kernel, gather on), the
down-projection (the same kernel, activation none, no gather), and a deterministic combine
(gather + weighted sum over k in a fixed order, fp32, then cast).

Inputs: x (T, H); routing=logits: logits (T, E) fp32; routing=given: topk_ids (T, k) int32
and topk_weights (T, k) fp32; w1 (E, H, 2I) gate/up interleaved; w2 (E, I, H). Output y
(T, H). ``routing`` and ``activation`` are parameters (they change the inputs / the
outputs' values; Stage.inputs sees only parameters).

Compiled once per (h, i, dtype, activation, topk, bug): T (``t``), E and the routing are
runtime values (topk is compiled in only because the launch routes with it).
"""

from __future__ import annotations

from typing import Mapping

from workbench.kernels.stage import ExportSpec, Params, Stage, TensorSpec

from stages.moe import pipeline

#: stage C's bugs of the row tiling: stage D compiles them into both grouped GEMMs
ROW_BUGS = ("expert_offset_off_by_one", "tail_from_next", "tail_unwritten")


def _tile(text: str) -> tuple[int, int]:
    """(tile_m, tile_n) of a tile variant value such as "128x256"."""
    m, n = text.split("x")
    return int(m), int(n)


class StageD(Stage):
    """wb stage D: the MoE FFN (routing, plan, grouped up + SwiGLU, grouped down, combine)."""

    proves = (
        "The whole expert FFN matches an fp32 PyTorch reference for every token: routing (top-k + "
        "softmax, or given), the sorted plan, gathered up-projection with SwiGLU, down-projection, and "
        "the weighted combine with each top-k weight applied once; for any token count (tails of every "
        "expert), empty experts and all tokens on one expert."
    )
    cannot_see = (
        "Speed (wb bench), routers other than top-k + softmax (DeepSeek's sigmoid / group-limited "
        "routing: give its top-k with routing=given), biases, and expert-parallel communication."
    )
    compile_params = ("h", "i", "dtype", "activation", "topk")  # t (tokens) and e are runtime
    # `wb export moe/d`: the op wb_moe::ffn(x, w1, w2, topk_ids, topk_weights, activation) -> y
    # (export_op.py: its checks, fake implementation, plan and three kernels' launches)
    export = ExportSpec(namespace="wb_moe", op_module="export_op.py")

    def inputs(self, p: Params) -> dict[str, TensorSpec]:
        T, E, k = p.t, p.e, p.topk
        specs = {"x": TensorSpec((T, p.h), p.dtype)}
        if p.routing == "given":
            specs["topk_ids"] = TensorSpec((T, k), "int32")
            specs["topk_weights"] = TensorSpec((T, k), "fp32")
        else:
            specs["logits"] = TensorSpec((T, E), "fp32")
        specs["w1"] = TensorSpec((E, p.h, 2 * p.i), p.dtype)
        specs["w2"] = TensorSpec((E, p.i, p.h), p.dtype)
        return specs

    def outputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"y": TensorSpec((p.t, p.h), p.dtype)}

    def flops(self, p: Params) -> float:
        """Both GEMMs over the T·k routed rows: 2·T·k·H·2I + 2·T·k·I·H."""
        rows = p.t * p.topk
        return 2.0 * rows * p.h * 2 * p.i + 2.0 * rows * p.i * p.h

    def compile(self, p: Params, variants: Mapping[str, str], arch: str) -> pipeline.Compiled:
        """Stage C's grouped kernel twice (compile_grouped): the up-projection (K = h, N = 2i,
        gather, the activation) and the down-projection (K = i, N = h, no gather, none), each
        with stage C's default tile (tile_n, stages) and the ``epilogue`` variant (both GEMMs). A kernel bug variant goes into the up
        kernel; into the down kernel only when it is a row-tiling bug (ROW_BUGS): the
        activation bugs live in the SwiGLU epilogue the down-projection does not have (stage
        C's gate_up_swapped would swap its output column pairs), gather_ignored in the gather
        it does not do."""
        from stages.moe.stage_c_grouped import compile_grouped

        bug = str((variants or {}).get("bug", "none"))
        kernel_bug = "none" if bug in pipeline.COMBINE_BUGS else bug
        up_tile = str((variants or {}).get("up_tile", "auto"))
        down_m, down_n = _tile(str((variants or {}).get("down_tile", "128x256")))
        # one epilogue for both GEMMs; stages=None: the auto ring depth for tile and epilogue
        epilogue = str((variants or {}).get("epilogue", "smem"))

        def up_kernel(tile: str):
            tm, tn = _tile(tile)
            return compile_grouped(p.dtype, p.h, 2 * p.i, p.activation, True, kernel_bug, arch,
                                   tile_n=tn, stages=None, tile_m=tm, epilogue=epilogue)[1]

        # auto: both 128- and 64-row tiles; the launch picks by rows per expert (pipeline.run)
        up = up_kernel("128x256" if up_tile == "auto" else up_tile)
        up_few_rows = up_kernel("64x256") if up_tile == "auto" else None
        down_bug = kernel_bug if kernel_bug in ROW_BUGS else "none"
        _, down = compile_grouped(p.dtype, p.i, p.h, "none", False, down_bug, arch,
                                  tile_n=down_n, stages=None, tile_m=down_m, epilogue=epilogue)
        comb = None
        if str((variants or {}).get("combine", "cute")) == "cute":
            from stages.moe.combine import compile_combine

            comb = compile_combine(p.dtype, p.h, p.topk, bug if bug in pipeline.COMBINE_BUGS else "none", arch)
        return pipeline.Compiled(up=up, down=down, h=p.h, i=p.i, topk=p.topk, activation=p.activation, bug=bug,
                                 combine=comb, up_few_rows=up_few_rows)

    def launch(self, compiled: pipeline.Compiled, inputs, outputs) -> None:
        pipeline.run(
            compiled, inputs["x"], inputs["w1"], inputs["w2"], outputs["y"],
            logits=inputs.get("logits"), topk_ids=inputs.get("topk_ids"), topk_weights=inputs.get("topk_weights"),
        )

    def reference(self, inputs, p: Params, variants, compute_dtype):
        from stages.moe import reference

        x, w1, w2 = inputs["x"], inputs["w1"], inputs["w2"]
        if "logits" in inputs:
            y = reference.moe_ffn_routed(x, inputs["logits"], w1, w2, p.topk, compute_dtype, activation=p.activation)
        else:
            y = reference.moe_ffn(x, w1, w2, inputs["topk_ids"], inputs["topk_weights"], compute_dtype,
                                  activation=p.activation)
        return {"y": y}
