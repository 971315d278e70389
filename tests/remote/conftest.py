"""Fixtures of the remote tests: a throw-away sshd on 127.0.0.1 and a git workspace that
names it as host `loop`, whose remote workspace is a second folder on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from . import sshd as sshd_mod

REPO = Path(__file__).resolve().parents[2]


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True, env=env).stdout


def make_git_workspace(root: Path, hosts: list[dict] | None = None) -> None:
    config = yaml.safe_load((root / "wb.yaml").read_text()) or {}
    if hosts is not None:
        config["hosts"] = hosts
    (root / "wb.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / ".gitignore").write_text("secret.txt\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy workspace")


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    missing = sshd_mod.missing_tools()
    if missing:
        pytest.skip("remote tests need " + ", ".join(missing))
    server = sshd_mod.start(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def remote_ws(toy_ws, sshd_server, tmp_path):
    """(local workspace, remote workspace folder): toy_ws as a git repo with host `loop`."""
    remote = tmp_path / "remote-ws"
    entry = sshd_server.host_entry(
        "loop", str(remote), python=sys.executable,
        env={"WB_WORKER_IDLE": "30", "WB_HOME": str(tmp_path / "remote-home"), "PYTHONPATH": str(REPO), "WB_AGENT_GRACE": "5"},
    )
    make_git_workspace(toy_ws, [entry])
    yield toy_ws, remote
    cleanup(toy_ws)
    cleanup(remote)


def cleanup(root: Path) -> None:
    """End every wb process the test left behind in this workspace (by pid file)."""
    from workbench.run import procs
    from workbench.workspace import Workspace

    if (root / ".wb").exists():
        procs.kill(Workspace(root), everything=True)
