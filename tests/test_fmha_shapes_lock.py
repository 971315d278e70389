"""The FMHA stages still build the shapes the team accepted (stages/fmha/shapes.lock.yaml):
a mode count or layout that changes without `wb shapes --accept` fails CI."""

import shutil

from conftest import REPO


def test_fmha_shapes_match_the_accepted_snapshot(tmp_path, wb):
    for name in ("stages", "fixtures", "pyproject.toml"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    proc = wb("shapes", "fmha", "--check", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
