"""No shell ever parses a host's `path`: the transport passes it through rsync's protocol and
quotes it in every shell line, and the config refuses host fields that hold shell syntax.

The "remote" is this machine: a fake `ssh` on PATH behaves as sshd does (it drops ssh's
options and the target and hands the rest of the command line to `sh -c`), so an rsync whose
arguments a shell would parse runs the command hidden in the path here, where a marker file
shows it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import executable
from workbench.errors import UserError
from workbench.remote.hosts import Host, load_hosts
from workbench.remote import transport
from workbench.workspace import Workspace, find_workspace

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync (apt-get install rsync)")

FAKE_SSH = """#!/bin/sh
# sshd's view of `ssh [options] target command...`: the command words joined by spaces, run by sh -c
while [ $# -gt 0 ]; do
  case "$1" in
    -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
    -*) shift ;;
    *) shift; break ;;
  esac
done
cd "$REMOTE_HOME" || exit 255
exec sh -c "$*"
"""


@pytest.fixture(params=["modern", "old"])
def fake_remote(tmp_path, monkeypatch, request):
    """The remote home folder (reached through the fake ssh) and the marker an injected command
    makes; once with rsync's default arguments and once with those of rsync before 3.2.4."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "ssh", FAKE_SSH)
    home = tmp_path / "remote-home"
    home.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(shutil.which('rsync') or '/').parent}:/usr/bin:/bin")
    monkeypatch.setenv("REMOTE_HOME", str(home))
    if request.param == "old":  # rsync's own switch to the arguments of rsync < 3.2.4 (Ubuntu 20.04, RHEL 8)
        monkeypatch.setenv("RSYNC_OLD_ARGS", "1")
    else:
        monkeypatch.delenv("RSYNC_OLD_ARGS", raising=False)
    return home, tmp_path / "injected"


def hostile_paths(marker: Path) -> list[str]:
    return [
        f"w`touch {marker}`",
        f"w$(touch {marker})",
        f"w\ntouch {marker}",
        f"w;touch {marker}",
    ]


def local_workspace(root: Path) -> Workspace:
    root.mkdir()
    (root / "kernel.py").write_text("x = 1\n")
    return Workspace(root, {})


@needs_rsync
def test_sync_never_lets_a_shell_parse_the_path(fake_remote, tmp_path):
    """transport.sync with a Host built directly (no config validation) whose path holds a
    backtick command, $(...), a newline or ';': no command runs, the files land in a folder of
    that literal name."""
    home, marker = fake_remote
    for i, path in enumerate(hostile_paths(marker)):
        ws = local_workspace(tmp_path / f"ws{i}")
        host = Host(f"h{i}", "me@box", path)
        transport.sync(ws, host)
        assert not marker.exists(), f"a shell ran the command hidden in path {path!r}"
        assert (home / host.remote_path / "kernel.py").read_text() == "x = 1\n"


@needs_rsync
def test_fetch_dir_never_lets_a_shell_parse_the_path(fake_remote, tmp_path):
    """transport.fetch_dir from a remote workspace whose path holds shell syntax copies the
    folder and runs nothing."""
    home, marker = fake_remote
    for i, path in enumerate(hostile_paths(marker)):
        (home / path / "runs" / "r1").mkdir(parents=True)
        (home / path / "runs" / "r1" / "picture.png").write_text("png")
        local = tmp_path / f"got{i}"
        transport.fetch_dir(Host(f"h{i}", "me@box", path), "runs/r1", local)
        assert not marker.exists(), f"a shell ran the command hidden in path {path!r}"
        assert (local / "picture.png").read_text() == "png"


@pytest.mark.parametrize("path", ["w`touch x`", "w$(touch x)", "w\ntouch x", "w;touch x", "w|x", "w&x", "w>x", "'w'",
                                  '"w"', "w\\x", "-w", "w*", "~bob/w", "w\tx", "w\0x"])
def test_config_refuses_a_path_a_shell_would_parse(tmp_path, path):
    """A hosts entry whose path holds shell syntax (or a leading '-', a '~user' nothing would
    expand) is one line naming the file, the entry and the key; nothing is run."""
    (tmp_path / "wb.yaml").write_text(yaml.safe_dump({"hosts": [{"name": "h200", "ssh": "me@box", "path": path}]}))
    with pytest.raises(UserError) as err:
        load_hosts(find_workspace(tmp_path))
    message = str(err.value)
    assert message.startswith("wb.yaml: hosts[0] (h200): key 'path' must be ") and "\n" not in message


@needs_rsync
@pytest.mark.parametrize("path", ["-w", ":w", "--w=1"])
def test_a_path_is_a_folder_name_not_an_option(fake_remote, tmp_path, path):
    """A path that starts like an option ('-w') or rsync's daemon syntax (':w') is still the
    folder the workspace goes to, for sync, for fetch_dir and for wb's ssh scripts."""
    home, _ = fake_remote
    host = Host("h", "me@box", path)
    transport.sync(local_workspace(tmp_path / "ws"), host)
    assert (home / path / "kernel.py").read_text() == "x = 1\n"
    done = transport.ssh_run(host, f"cd {transport.shell_path(host.remote_path)} && cat kernel.py")
    assert (done.returncode, done.stdout) == (0, "x = 1\n"), done.stderr
    transport.fetch_dir(host, ".", tmp_path / "back")
    assert (tmp_path / "back" / "kernel.py").read_text() == "x = 1\n"


def load_one(tmp_path: Path, **fields):
    entry = {"name": "h200", "ssh": "me@box", "path": "w", **fields}
    (tmp_path / "wb.yaml").write_text(yaml.safe_dump({"hosts": [entry]}))
    return load_hosts(find_workspace(tmp_path))["h200"]


@pytest.mark.parametrize("key, value", [
    ("ssh", "me@box;x"), ("ssh", "me@box`x`"), ("ssh", "me@$(x)"), ("ssh", "-oProxyCommand=x"), ("ssh", "me@-box"),
    ("ssh", "m e@box"), ("ssh", "me@box\nx"), ("ssh", "me@[::1;x]"),
    ("python", "python3; touch x"), ("python", "python3 && x"), ("python", "$(x)"), ("python", "`x`"), ("python", "py|x"),
    ("python", "python3 >x"), ("python", "'python3'"), ("python", "python3\nx"), ("python", "-c x"), ("python", "python3  -u"),
    ("identity", "~/.ssh/id`x`"), ("identity", "k\ney"), ("identity", "-k"),
    ("env", {"A": "x\ny"}), ("env", {"A": "x\0y"}), ("env", {"A;B": "x"}),
    ("ssh_options", {"Proxy Command": "x"}), ("ssh_options", ["-o", "User=x\nProxyCommand=y"]),
    ("setup", "source v\rtouch x"), ("setup", "source v\0"),
    ("gpus", ["0;x"]),
])
def test_config_refuses_shell_syntax_in_host_fields(tmp_path, key, value):
    """ssh targets, Python commands, key paths, environment values, ssh options, the setup line
    and GPU ids that hold shell syntax, a line break or a leading '-' are refused: one line
    naming the file, the entry and the key."""
    with pytest.raises(UserError) as err:
        load_one(tmp_path, **{key: value})
    message = str(err.value)
    assert message.startswith(f"wb.yaml: hosts[0] (h200): key '{key}' must be ") and "\n" not in message


@pytest.mark.parametrize("key, value", [
    ("ssh", "alice@gpu-box.example.org"), ("ssh", "gpu_box"), ("ssh", "root@10.0.0.7"), ("ssh", "me@[::1]"),
    ("ssh", "[fe80::1%eth0]"), ("ssh", "first.last@host."),
    ("path", "~"), ("path", "~/work/wb-fmha"), ("path", "/scratch/me/wb+2,v=1:x@y~"), ("path", "my work/wb"),
    ("python", "conda run -n wb python"), ("python", "~/venvs/wb/bin/python -u"), ("python", "env A=1 python3.12"),
    ("setup", "module load cuda/12.8 && source ~/v/bin/activate"),
    ("env", {"CUTE_DSL_CACHE_DIR": "/scratch/x", "FLAGS": "a b; $c 'd'"}),
    ("ssh_options", {"ProxyCommand": "ssh -W %h:%p bastion"}), ("gpus", ["GPU-5f3c-0", 1]),
])
def test_config_accepts_ordinary_host_fields(tmp_path, key, value):
    """A guard against refusing too much: what real hosts use stays accepted as written
    (IPv4/[IPv6] and ~/.ssh/config aliases, conda commands, '~/', a space in a path, any
    one-line env value since it is quoted, ProxyCommand and the setup line as the user's shell)."""
    host = load_one(tmp_path, **{key: value})
    expected = {"env": tuple(value.items()) if isinstance(value, dict) else None,
                "ssh_options": ("-o", "ProxyCommand=ssh -W %h:%p bastion"), "gpus": ("GPU-5f3c-0", "1")}.get(key, value)
    assert getattr(host, key) == expected


def test_a_bracketed_ipv6_target_reaches_ssh_without_brackets():
    """rsync wants 'me@[::1]:path'; ssh wants 'me@::1' (it would look up a host named '[::1]')."""
    host = Host("h", "me@[::1]", "w")
    assert transport.ssh_command(host, "true")[-2:] == ["me@::1", "true"]
    assert transport.rsync_remote(host, "w/") == "me@[::1]:./w/"


def test_messages_stay_one_line_for_hostile_names_and_keys(tmp_path):
    """A host name or key holding a newline is shown quoted, so the message stays one line."""
    (tmp_path / "wb.yaml").write_text(yaml.safe_dump({"hosts": {"x\ny": {"ssh": "a", "path": "w"}}}))
    with pytest.raises(UserError) as err:
        load_hosts(find_workspace(tmp_path))
    assert "\n" not in str(err.value) and str(err.value).startswith("wb.yaml: hosts.'x\\ny': key 'name' must be")
    (tmp_path / "wb.yaml").write_text(yaml.safe_dump({"hosts": [{"name": "a\nb", "ssh": "a", "path": "w", "p\nx": 1}]}))
    with pytest.raises(UserError) as err:
        load_hosts(find_workspace(tmp_path))
    assert "\n" not in str(err.value)


def test_a_key_and_its_alias_together_are_refused(tmp_path):
    """'ssh' and 'target' (or 'path' and 'workspace') in one entry: which one wins is not
    guessed; the message names both."""
    with pytest.raises(UserError, match=r"^wb.yaml: hosts\[0\] \(h200\): keys 'path' and 'workspace' are the same key"):
        load_one(tmp_path, workspace="other")


def test_environment_names_are_never_shell_text():
    """prelude() quotes values but cannot quote a name: a Host built without the config's
    validation whose env name holds shell syntax is refused instead of pasted into the script."""
    host = Host("h", "me@box", "w", env=(("A;touch x;B", "1"),))
    with pytest.raises(UserError, match="is not an environment variable name"):
        transport.prelude(host)
    with pytest.raises(UserError, match="is not an environment variable name"):
        transport.wb_script(Host("h", "me@box", "w"), ["list"], env={"$(x)": "1"})
    assert transport.prelude(Host("h", "me@box", "w", env=(("CUDA_VISIBLE_DEVICES", "0"),))) == "export CUDA_VISIBLE_DEVICES=0; "
