"""y = x*x in plain PyTorch."""

from workbench import Stage, TensorSpec


class Square(Stage):
    needs_gpu = False
    is_cute = False

    def inputs(self, p):
        return {"x": TensorSpec((p.n, 64), p.dtype)}

    def outputs(self, p):
        return {"y": TensorSpec((p.n, 64), p.dtype)}

    def compile(self, p, variants, arch):
        return None

    def launch(self, compiled, inputs, outputs):
        outputs["y"].copy_(inputs["x"] * inputs["x"])

    def reference(self, inputs, p, variants, compute_dtype):
        x = inputs["x"].to(compute_dtype)
        return {"y": x * x}
