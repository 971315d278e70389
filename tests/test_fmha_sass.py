"""Every FMHA stage compiles for sm_90a to the fast path: its SASS has tensor-core WGMMA
(HGMMA) and TMA loads (UTMALDG), read by `wb compile` through nvdisasm. A stage that
silently falls back to a slower path fails here, on any machine, no GPU needed."""

import json

import pytest

from workbench.resources import find_nvdisasm

pytestmark = pytest.mark.skipif(find_nvdisasm() is None, reason="nvdisasm not installed (pip install 'cute-wb[sass]')")



@pytest.mark.parametrize("stage", ["a", "b", "c", "d"])
def test_stage_sass_has_wgmma_and_tma(fmha_ws, wb, stage):
    proc = wb("compile", stage, "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = json.loads(proc.stdout)["sass"]["instructions"]
    assert any(name.startswith("HGMMA") for name in found), found
    assert any(name.startswith("UTMALDG") for name in found), found
    assert not any(name.startswith("HMMA") for name in found), found  # no pre-Hopper MMA fallback
