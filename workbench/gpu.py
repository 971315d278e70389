"""Is there a GPU to run on? Answered in microseconds, before any worker starts.

`import torch` alone costs seconds, and a worker costs more: `wb run` on a machine with no
GPU used to take 6 s to say so. Any trace of the NVIDIA driver (`/dev/nvidia*`,
`/proc/driver/nvidia`, `/dev/dxg` under WSL) means a GPU may be there, and the worker asks
CUDA itself; with none, or CUDA_VISIBLE_DEVICES set to nothing, there is none.

Whether a stage needs one is its class attribute `needs_gpu` (default True), read from the
stage module's source without importing it: workbench.kernels.stage_source.needs_gpu.
"""

from __future__ import annotations

import glob
import os


def reachable() -> bool:
    """False when no NVIDIA GPU can possibly be used by this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    # any sign of the driver: device nodes (bare metal, containers), its /proc folder
    # (virtual machines may name the nodes otherwise), WSL's /dev/dxg
    return bool(glob.glob("/dev/nvidia*") or os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/dxg"))
