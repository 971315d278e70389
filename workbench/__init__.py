"""wb: a workbench for building CuTe DSL GPU kernels as ordered, verified stages."""

__version__ = "0.1.0"

__all__ = ["Params", "Stage", "TensorSpec", "__version__"]


def __getattr__(name: str):
    # The stage contract loads when a stage asks for it (`from workbench import Stage`), not
    # when `wb` starts: `wb`'s entry point then runs its own code within milliseconds, and a
    # Ctrl-C from then on is wb's one line, not a traceback from an import.
    if name in ("Params", "Stage", "TensorSpec"):
        from workbench.kernels import stage

        return getattr(stage, name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
