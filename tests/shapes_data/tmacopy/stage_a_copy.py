"""Stage A of tmacopy: y = x for a batched (m, n, l) tensor, one 64x64 tile per CTA.

The TMA partition of the tiled gmem tensor has 4 modes (atom, m tiles, n tiles, batch);
slicing it with (None, bm, None, bl) keeps 2 (atom, n tiles). The `slice=short` variant
slices with too few coordinates, which the DSL rejects while tracing. No probes unless the
`probes=some` variant asks for two: wb captures the shapes from the traced IR.
"""

import cutlass
import cutlass.cute as cute
from cutlass.cute.nvgpu import cpasync

from workbench.compile.probe import probe
from workbench.kernels.stage import Stage, TensorSpec

TILE = (64, 64)


class TmaCopy:
    def __init__(self, stages: int, short_slice: bool, probes: bool = False):
        self.stages = stages
        self.short_slice = short_slice
        self.probes = probes

    @cute.jit
    def __call__(self, mX: cute.Tensor, mY: cute.Tensor, stream):
        s_layout = cute.make_layout(TILE, stride=(TILE[1], 1))
        atom, tma_x = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileG2SOp(), mX, s_layout, TILE)

        @cute.struct
        class Storage:
            mbar: cute.struct.MemRange[cutlass.Int64, 1]
            sX: cute.struct.Align[cute.struct.MemRange[mX.element_type, cute.cosize(s_layout) * self.stages], 128]

        self.storage = Storage
        grid = cute.ceil_div(mX.shape, (*TILE, 1))
        self.kernel(atom, tma_x, mY, s_layout).launch(
            grid=[cute.size(grid, mode=[0]), cute.size(grid, mode=[1]), cute.size(grid, mode=[2])],
            block=[128, 1, 1],
            stream=stream,
        )

    @cute.kernel
    def kernel(self, atom: cute.CopyAtom, mX: cute.Tensor, mY: cute.Tensor, s_layout: cute.Layout):
        tidx, _, _ = cute.arch.thread_idx()
        bm, bn, bl = cute.arch.block_idx()
        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(self.storage)
        sX = storage.sX.get_tensor(s_layout)
        mbar = storage.mbar.data_ptr()
        gX = cute.local_tile(mX, TILE, (None, None, None))
        tXsX, tXgX = cpasync.tma_partition(
            atom, 0, cute.make_layout(1), cute.group_modes(sX, 0, 2), cute.group_modes(gX, 0, 2)
        )
        if cutlass.const_expr(self.probes):
            probe("sX", sX)
            probe("tXgX", tXgX)
        if cutlass.const_expr(self.short_slice):
            tXgX_row = tXgX[None, bm]
        else:
            tXgX_row = tXgX[None, bm, None, bl]
        if tidx == 0:
            cute.arch.mbarrier_init(mbar, 1)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp == 0:
            with cute.arch.elect_one():
                cute.arch.mbarrier_arrive_and_expect_tx(mbar, cute.size_in_bytes(mY.element_type, s_layout))
            cute.copy(atom, tXgX_row[None, bn], tXsX, tma_bar_ptr=mbar)
        cute.arch.mbarrier_wait(mbar, 0)
        gY = cute.local_tile(mY, TILE, (bm, bn, bl))
        thr = cute.make_layout((8, 16), stride=(16, 1))
        tYsX = cute.local_partition(sX, thr, tidx)
        tYgY = cute.local_partition(gY, thr, tidx)
        cute.autovec_copy(tYsX, tYgY)


def _dtype(name):
    return {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16}[name]


class CopyStage(Stage):
    proves = "TMA loads land in shared memory at the right tile coordinates."
    cannot_see = "Anything about tensor cores."

    def inputs(self, p):
        return {"x": TensorSpec((p.l, p.m, p.n), p.dtype)}

    def outputs(self, p):
        return {"y": TensorSpec((p.l, p.m, p.n), p.dtype)}

    def compile(self, p, variants, arch):
        from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream

        m = cute.sym_int64(divisibility=64)
        shape = (m, p.n, p.l)
        x = make_fake_compact_tensor(_dtype(p.dtype), shape, stride_order=(1, 0, 2), assumed_align=p.align)
        y = make_fake_compact_tensor(_dtype(p.dtype), shape, stride_order=(1, 0, 2), assumed_align=p.align)
        kernel = TmaCopy(p.stages, variants.get("slice") == "short", variants.get("probes") == "some")
        return cute.compile[cute.GPUArch(arch)](kernel, x, y, make_fake_stream())

    @staticmethod
    def to_cute(t):
        from cutlass.cute.runtime import from_dlpack

        return from_dlpack(t.permute(1, 2, 0), assumed_align=16)

    def launch(self, compiled, inputs, outputs):
        import torch
        from cuda.bindings import driver as cuda

        stream = cuda.CUstream(torch.cuda.current_stream().cuda_stream)
        compiled(self.to_cute(inputs["x"]), self.to_cute(outputs["y"]), stream)

    def reference(self, inputs, p, variants, compute_dtype):
        return {"y": inputs["x"].to(compute_dtype)}
