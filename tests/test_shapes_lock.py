"""Every kernel's stages still build the shapes the team accepted (stages/<kernel>/shapes.lock.yaml):
a mode count or layout that changes without `wb shapes --accept` fails CI. A kernel without a
lock yet is listed too, and fails until `wb shapes KERNEL --accept` writes one."""

from pathlib import Path

import pytest

KERNELS = sorted(p.parent.name for p in (Path(__file__).resolve().parents[1] / "stages").glob("*/kernel.yaml"))


@pytest.mark.slow  # compiles every stage's configurations
@pytest.mark.parametrize("kernel", KERNELS)
def test_shapes_match_the_accepted_snapshot(fmha_ws, wb, kernel):
    assert (fmha_ws / "stages" / kernel / "shapes.lock.yaml").is_file(), f"stages/{kernel} has no shapes.lock.yaml: run `wb shapes {kernel} --accept`"
    proc = wb("shapes", kernel, "--check", cwd=fmha_ws, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
