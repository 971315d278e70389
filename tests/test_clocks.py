"""workbench/run/clocks.py: the SM clock sampled while `wb bench` times a kernel. What the
samples say (median, range, the limits NVML reported), that the sampler takes samples only
between the repeats' first start and last end and never breaks a timing, and that a machine
without NVML gives no clock instead of an error. On a GPU: a real timing carries its clock."""

import threading
import time

import pytest

from workbench.run import clocks


def test_samples_summarize_to_median_range_and_the_limits_seen():
    s = clocks.summarize([(1980, 0x1), (1755, 0x4), (1830, 0x4 | 0x20), (0, 0x4)])  # 0: a failed read
    assert s == {"sm_mhz_median": 1830, "sm_mhz_min": 1755, "sm_mhz_max": 1980, "samples": 3,
                 "limits": ["power cap", "thermal (software)"]}  # idle (0x1) is not a limit
    assert clocks.summarize([]) is None and clocks.summarize([(0, 0)]) is None


class FakeNvml:
    def __init__(self, mhz=1755, bits=0x4, fail=False):
        self.mhz, self.bits, self.fail, self.reads = mhz, bits, fail, 0

    def sm_mhz(self):
        self.reads += 1
        if self.fail:
            raise OSError("NVML went away")
        return self.mhz

    def limit_bits(self):
        return self.bits


def test_the_sampler_samples_only_between_the_first_start_and_the_last_end():
    state = {"begun": False, "ended": False}
    nvml = FakeNvml()
    sampler = clocks.ClockSampler(nvml, begun=lambda: state["begun"], ended=lambda: state["ended"]).start()
    time.sleep(0.02)
    assert nvml.reads == 0  # the GPU is still in the queued sleep
    state["begun"] = True
    deadline = time.monotonic() + 5
    while nvml.reads < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert nvml.reads >= 3
    state["ended"] = True
    sampler._thread.join(5)
    assert not sampler._thread.is_alive()  # it stopped on its own at the last end event
    reads = nvml.reads
    summary = sampler.stop()
    assert summary["sm_mhz_median"] == 1755 and summary["samples"] == reads and summary["limits"] == ["power cap"]


def test_a_sampler_that_fails_gives_no_clock_and_stop_returns_at_once():
    sampler = clocks.ClockSampler(FakeNvml(fail=True), begun=lambda: True, ended=lambda: False).start()
    time.sleep(0.01)
    started = time.monotonic()
    assert sampler.stop() is None and time.monotonic() - started < 1
    assert not any(t.name == "wb-clock-sampler" and t.is_alive() for t in threading.enumerate())


def test_no_nvml_library_is_no_clock(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(clocks.ctypes, "CDLL", missing)
    assert clocks.Nvml.for_uuid("GPU-1234") is None


@pytest.mark.gpu
def test_a_timing_on_a_gpu_carries_the_clock_it_ran_at():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from workbench.run.timing import time_cuda

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    timing = time_cuda(lambda: a @ a, reps=20, flush=False, graph="off")
    clock = timing.get("clock")
    assert clock is not None, "NVML gave no clock on a GPU machine"
    assert 300 < clock["sm_mhz_min"] <= clock["sm_mhz_median"] <= clock["sm_mhz_max"] < 3500 and clock["samples"] >= 1
