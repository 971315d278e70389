"""The card's SM clock while `wb bench` times a kernel, and what held it down.

An H100 or H200 at its power limit lowers its SM clock within milliseconds (the software
power cap), so two kernels timed one after the other can run at different clocks, and a
long launch can time in two modes. `time_cuda` samples NVML from a thread while its repeats
run on the GPU (between the first repeat's start event and the last one's end event) and
records the clock's median, range and the limits NVML reported (``clock`` in each timing).

NVML is read through ctypes from the driver's ``libnvidia-ml.so.1`` (no Python package
needed); where it cannot be loaded, or the device is not found in it, a timing simply has no
``clock``.
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from typing import Any, Callable

SAMPLE_EVERY_S = 0.001
NVML_CLOCK_SM = 1
# nvmlClocksEventReasons bits (nvml.h); idle and the application-clock setting are not limits
LIMITS = {
    0x4: "power cap",
    0x8: "hardware slowdown",
    0x10: "sync boost",
    0x20: "thermal (software)",
    0x40: "thermal (hardware)",
    0x80: "power brake",
    0x100: "display clock",
}


class Nvml:
    """The SM clock (MHz) and the clock-limit bits of one device, through NVML."""

    def __init__(self, lib, handle):
        self._lib, self._handle = lib, handle

    @classmethod
    def for_uuid(cls, uuid: str) -> "Nvml | None":
        """The device whose UUID is ``uuid`` ("GPU-..." or bare), or None where NVML is missing."""
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if lib.nvmlInit_v2() != 0:
                return None
            handle = ctypes.c_void_p()
            name = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
            if lib.nvmlDeviceGetHandleByUUID(name.encode(), ctypes.byref(handle)) != 0:
                return None
        except (OSError, AttributeError):
            return None
        return cls(lib, handle)

    def sm_mhz(self) -> int | None:
        value = ctypes.c_uint()
        return value.value if self._lib.nvmlDeviceGetClockInfo(self._handle, NVML_CLOCK_SM, ctypes.byref(value)) == 0 else None

    def limit_bits(self) -> int:
        value = ctypes.c_ulonglong()
        getter = getattr(self._lib, "nvmlDeviceGetCurrentClocksEventReasons", None) or self._lib.nvmlDeviceGetCurrentClocksThrottleReasons
        return value.value if getter(self._handle, ctypes.byref(value)) == 0 else 0


def for_current_device() -> Nvml | None:
    """NVML for torch's current CUDA device (found by UUID, so CUDA_VISIBLE_DEVICES holds)."""
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    except (AttributeError, RuntimeError):
        return None
    return Nvml.for_uuid(uuid)


def summarize(samples: list[tuple[int, int]]) -> dict[str, Any] | None:
    """(MHz, limit bits) samples -> median / min / max MHz, their count and the limits seen."""
    clocks = [mhz for mhz, _ in samples if mhz]
    if not clocks:
        return None
    bits = 0
    for _, b in samples:
        bits |= b
    return {
        "sm_mhz_median": statistics.median(clocks),
        "sm_mhz_min": min(clocks),
        "sm_mhz_max": max(clocks),
        "samples": len(clocks),
        "limits": [name for bit, name in LIMITS.items() if bits & bit],
    }


class ClockSampler:
    """Samples ``nvml`` every SAMPLE_EVERY_S from a thread while ``begun()`` and not yet
    ``ended()`` (the timed repeats' first start and last end event), until ``stop()``."""

    def __init__(self, nvml: Nvml, begun: Callable[[], bool], ended: Callable[[], bool], setup: Callable[[], None] = lambda: None):
        self._nvml, self._begun, self._ended, self._setup = nvml, begun, ended, setup
        self._samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wb-clock-sampler", daemon=True)

    def start(self) -> "ClockSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._setup()
            while not self._stop.is_set() and not self._ended():
                if self._begun():
                    self._samples.append((self._nvml.sm_mhz() or 0, self._nvml.limit_bits()))
                time.sleep(SAMPLE_EVERY_S)
        except Exception:  # a sampler that fails leaves the timing without a clock, never breaks it
            self._samples.clear()

    def stop(self) -> dict[str, Any] | None:
        self._stop.set()
        self._thread.join(timeout=5)
        return summarize(self._samples)
