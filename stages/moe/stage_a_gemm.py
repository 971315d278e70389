"""Stage A: one expert's up-projection GEMM D = X · W1 (TMA + WGMMA, warp-specialized).

Shapes: x (m, h), w1 (h, 2i) row-major in bf16 or fp16 (W1's columns interleave gate and
up, stages/moe/layout.py; for this stage they are just N = 2i columns); d (m, 2i) in the
same dtype, accumulated in fp32. Any m >= 1 (rows past m: zero-filled loads, no stores);
h and i multiples of 8 (16-byte row strides, TMA's rule).

The kernel is ``gemm.MoeGemmSm90`` with the identity epilogue (its module docstring has
the design: 1 producer WG + 2 consumer WGs, a 4-stage TMA ring of 128 x 64 A and 64 x 256
B tiles, wait_group(1) mainloop, registers -> global epilogue, persistent CTAs). One
compile per (dtype, variants) serves every m, h, i. Variants (kernel.yaml):

* ``tile_m`` 128 | 64: two or one consumer WG (64 for small m); ``tile_n`` 256 | 128;
* ``stages``: ring depth, auto = the most that fits (``AUTO_STAGES``);
* ``persistent`` on: one CTA per SM walks the output tiles, so the next tile's loads
  overlap this one's epilogue; off: a CTA per tile;
* ``cluster_m`` 2 (experimental; 1 = off): two CTAs on vertically adjacent tiles each load
  half of the shared W tile and multicast it, halving W's L2 -> SM traffic;
* ``group_m``: the tile order, bands of that many m tiles with m fastest inside a band,
  for L2 reuse of W (1 = row by row).
"""

from __future__ import annotations

from typing import Mapping

from cutlass import Int32

from workbench.kernels.stage import Params, Stage, TensorSpec

from stages.moe import host
from stages.moe.gemm import AUTO_STAGES, MoeGemmSm90, auto_stages  # noqa: F401 (AUTO_STAGES: the direct table)


def kernel_config(variants: Mapping[str, str] | None, activation: str = "identity") -> dict:
    """MoeGemmSm90's tile arguments from the stage variants (tile_m, tile_n, stages,
    persistent, cluster_m, group_m, epilogue); missing ones take kernel.yaml's defaults (128,
    256, auto, on, 1, 8, direct). stages=auto: the most that fits (gemm.auto_stages: with
    epilogue=smem, beside the output tile of ``activation``)."""
    v = dict(variants or {})
    tile_m, tile_n = int(v.get("tile_m", 128)), int(v.get("tile_n", 256))
    stages = v.get("stages", "auto")
    epilogue = v.get("epilogue", "direct")
    auto = auto_stages(tile_m, tile_n, epilogue, identity=activation == "identity")
    return {
        "tile_m": tile_m,
        "tile_n": tile_n,
        "tile_k": 64,
        "epilogue": epilogue,
        "stages": auto if stages == "auto" else int(stages),
        "persistent": v.get("persistent", "on") == "on",
        "cluster_m": int(v.get("cluster_m", 1)),
        "group_m": int(v.get("group_m", 8)),
    }


class StageA(Stage):
    """wb stage A: d = x · w1 (one expert, no activation)."""

    proves = (
        "X and W1 reach shared memory through TMA at the right (m, k) and (k, n) tile coordinates "
        "for every k tile, the producer/consumer ring cycles (phases flip) for any h, W1's N-contiguous "
        "tile is read by WGMMA as an MN-major B operand, and the fp32 accumulator is stored to the right "
        "(row, column) with rows past m left alone, for any m including m < 128 and tails."
    )
    cannot_see = (
        "The activation (stage B), routing, many experts in one launch, gathered rows (stage C) and speed. "
        "Interleaved gate/up columns look like any other columns here."
    )
    compile_params = ("dtype",)  # m, h and i are runtime values (variants are keyed separately)

    def inputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"x": TensorSpec((p.m, p.h), p.dtype), "w1": TensorSpec((p.h, 2 * p.i), p.dtype)}

    def outputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"d": TensorSpec((p.m, 2 * p.i), p.dtype)}

    def flops(self, p: Params) -> float:
        """2·m·h·2i."""
        return 2.0 * p.m * p.h * 2 * p.i

    def make_kernel(self, p: Params, variants: Mapping[str, str] | None = None) -> MoeGemmSm90:
        return MoeGemmSm90(host.cute_dtype(p.dtype), activation="identity", **kernel_config(variants))

    def compile(self, p: Params, variants: Mapping[str, str], arch: str):
        dtype = host.cute_dtype(p.dtype)
        self.kernel_obj = self.make_kernel(p, variants)  # kept for introspection (tests, wb shapes)
        x, w, d = (host.fake_tensor(dtype, 2) for _ in range(3))
        return host.compile_for(arch, self.kernel_obj, x, w, d, Int32(132), host.fake_stream())

    def launch(self, compiled, inputs, outputs) -> None:
        x, w1, d = inputs["x"], inputs["w1"], outputs["d"]
        host.check_gemm_operands(x, w1, d, w1.shape[1])
        compiled(host.to_cute(x), host.to_cute(w1), host.to_cute(d), Int32(host.sm_count(x.device)), host.current_stream())

    def reference(self, inputs, p: Params, variants, compute_dtype):
        from stages.moe import reference

        return {"d": reference.gemm(inputs["x"], inputs["w1"], compute_dtype)}
