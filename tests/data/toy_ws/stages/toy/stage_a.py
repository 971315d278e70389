"""y = 2x in plain PyTorch, with switches that imitate kernel failures."""

import os
import time

from workbench import Stage, TensorSpec


class Double(Stage):
    needs_gpu = False
    is_cute = False
    proves = "Every element of y is twice its x."
    cannot_see = "Anything on a GPU: this is a CPU test kernel."

    def inputs(self, p):
        return {"x": TensorSpec((p.n, 64), p.dtype)}

    def outputs(self, p):
        return {"y": TensorSpec((p.n, 64), p.dtype)}

    def flops(self, p):
        """One multiply per element (wb profile's roofline)."""
        return float(p.n * 64)

    def compile(self, p, variants, arch):
        if variants["bug"] == "compile_error":
            raise ValueError("expects 'coord' and shape of view are weakly congruent")
        return variants["bug"]

    def launch(self, compiled, inputs, outputs):
        bug = compiled
        if bug == "sleep":
            time.sleep(600)
        if bug == "crash":
            os.abort()
        if bug == "cuda_error":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        y = outputs["y"]
        if bug == "zero":
            y.zero_()
            return
        if bug == "partial":
            y[: y.shape[0] // 2].copy_(inputs["x"][: y.shape[0] // 2] * 2)
            return
        y.copy_(inputs["x"] * 2)
        if bug == "nan":
            y[0, 0] = float("nan")

    def reference(self, inputs, p, variants, compute_dtype):
        return {"y": inputs["x"].to(compute_dtype) * 2}

    def trace(self, p, variants, arch, inputs, outputs):
        """A CPU timeline of the doubling (wb run --trace on the CPU): two 'CTAs' take the
        halves of x, each in 64-row tiles, with a load and a compute phase per tile;
        perf_counter_ns is both the clock and the timer (1 ns per tick). The traced doubling
        has no bug; with bug=nan it says the untraced build to compare with is its bug-free
        twin (as fmha stage D's trace, which cannot split, names a split_tail=off twin)."""
        from workbench.run.timeline import Clock, Slice, Timeline

        x, y = inputs["x"], outputs["y"]
        slices, clocks = [], {}
        half = x.shape[0] // 2
        for cta in range(2):
            start = time.perf_counter_ns()
            for j, row in enumerate(range(cta * half, (cta + 1) * half, 64)):
                t0 = time.perf_counter_ns()
                chunk = x[row: row + 64].clone()
                t1 = time.perf_counter_ns()
                y[row: row + 64].copy_(chunk * 2)
                t2 = time.perf_counter_ns()
                slices += [Slice(cta, "WG1", f"tile {j}", t0, t2, kind="tile", tile=j),
                           Slice(cta, "WG1", "load", t0, t1, tile=j), Slice(cta, "WG1", "compute", t1, t2, tile=j)]
            end = time.perf_counter_ns()
            clocks[cta] = Clock(start, start, end, end)
        twin = (lambda i, o: self.launch("none", i, o)) if variants.get("bug") == "nan" else None
        return Timeline(slices, clocks, ["WG1"], f"toy doubling, n={p.n}", untraced=twin)
