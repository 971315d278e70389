"""The FMHA stages still build the shapes the team accepted (stages/fmha/shapes.lock.yaml):
a mode count or layout that changes without `wb shapes --accept` fails CI."""

import pytest


@pytest.mark.slow  # compiles every FMHA stage's configurations
def test_fmha_shapes_match_the_accepted_snapshot(fmha_ws, wb):
    proc = wb("shapes", "fmha", "--check", cwd=fmha_ws, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
