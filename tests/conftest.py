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


# ---------------------------------------------------------------- shared helpers for CLI tests
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_ws(tmp_path, monkeypatch):
    """A fresh copy of the plain-PyTorch test workspace (tests/data/toy_ws), as the cwd."""
    root = tmp_path / "ws"
    shutil.copytree(DATA / "toy_ws", root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("WB_WORKER_IDLE", "20")
    return root


def run_wb(*args, cwd=None, env=None, timeout=180, input=None):
    """Run `python -m workbench ARGS` as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "workbench", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


@pytest.fixture
def wb():
    return run_wb


def copy_repo_workspace(root: Path) -> Path:
    """A throw-away copy of this repository's workspace (stages, fixtures, config), so tests
    that run wb on the real kernels never write runs or caches into the checkout."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "fixtures", "pyproject.toml"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    return root


@pytest.fixture(scope="module")
def fmha_ws(tmp_path_factory):
    return copy_repo_workspace(tmp_path_factory.mktemp("fmha-ws"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one intra-op thread is faster, and much faster on a loaded machine."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
