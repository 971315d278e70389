"""Where a record says it came from: the git state, and what a shipped tree's sender says."""

import subprocess

from workbench.records.provenance import git_state


def _repo(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("one\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"], check=True)
    return subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_git_state_reads_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("WB_GIT_COMMIT", raising=False)
    head = _repo(tmp_path)
    assert git_state(tmp_path) == {"commit": head, "dirty": False, "diff_hash": None}
    (tmp_path / "a.txt").write_text("two\n")
    state = git_state(tmp_path)
    assert state["commit"] == head and state["dirty"] is True and state["diff_hash"]


def test_the_senders_commit_wins_over_a_stale_git_dir(tmp_path, monkeypatch):
    """A tree shipped to a GPU box can sit on an older .git: WB_GIT_* says what was sent."""
    _repo(tmp_path)
    (tmp_path / "a.txt").write_text("newer files than the .git knows\n")
    monkeypatch.setenv("WB_GIT_COMMIT", "feedc0de" * 5)
    monkeypatch.setenv("WB_GIT_DIRTY", "0")
    monkeypatch.delenv("WB_GIT_DIFF_HASH", raising=False)
    assert git_state(tmp_path) == {"commit": "feedc0de" * 5, "dirty": False, "diff_hash": None}


def test_no_git_and_no_sender_word_is_unknown(tmp_path, monkeypatch):
    for name in ("WB_GIT_COMMIT", "WB_GIT_DIRTY", "WB_GIT_DIFF_HASH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state(tmp_path) == {"commit": None, "dirty": None, "diff_hash": None}


def test_a_record_names_its_card_among_several():
    """Which card, not only which model: the worker reads the UUID from torch's device
    properties (whatever CUDA_VISIBLE_DEVICES renumbered), the record keeps it beside
    CUDA_VISIBLE_DEVICES, and the label wb prints carries both; a CPU run stays "cpu"."""
    from types import SimpleNamespace

    from workbench.records.provenance import card_label
    from workbench.run.worker import gpu_uuid
    from workbench.schemas.run_record import Provenance

    assert gpu_uuid(SimpleNamespace(uuid="8f3c1a2b-0000-1111-2222-333344445555")) == "GPU-8f3c1a2b-0000-1111-2222-333344445555"
    assert gpu_uuid(SimpleNamespace(uuid="GPU-8f3c1a2b-0000")) == "GPU-8f3c1a2b-0000"
    assert gpu_uuid(SimpleNamespace()) is None
    prov = {"gpu": "NVIDIA H200", "gpu_uuid": "GPU-8f3c1a2b-0000-1111", "cuda_visible_devices": "1"}
    Provenance.model_validate(prov)
    assert card_label(prov) == "NVIDIA H200 GPU-8f3c1a2b (CUDA_VISIBLE_DEVICES=1)"
    assert card_label({"gpu": "NVIDIA H200"}) == "NVIDIA H200"
    assert card_label({"gpu": None, "cuda_visible_devices": "0"}) == "cpu"
    assert card_label({"gpu": "NVIDIA H200", "gpu_uuid": "GPU-b", "cuda_visible_devices": "2"}) != card_label(
        {"gpu": "NVIDIA H200", "gpu_uuid": "GPU-c", "cuda_visible_devices": "3"}
    )
