"""wb: a workbench for building CuTe DSL GPU kernels as ordered, verified stages."""

__version__ = "0.1.0"

from workbench.kernels.stage import Params, Stage, TensorSpec  # noqa: E402

__all__ = ["Params", "Stage", "TensorSpec", "__version__"]
