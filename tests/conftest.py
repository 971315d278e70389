import os

import pytest


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_user_state(tmp_path_factory, monkeypatch):
    """Never let a test touch the developer's real caches or workspace settings."""
    home = tmp_path_factory.mktemp("wb-home")
    monkeypatch.setenv("WB_HOME", str(home))
    monkeypatch.delenv("WB_WORKSPACE", raising=False)
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
