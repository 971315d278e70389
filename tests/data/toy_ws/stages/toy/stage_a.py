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
