"""Host entries in wb.yaml / pyproject.toml: parsing, validation messages, ssh command lines,
and what `wb run --host` sends (no network needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import unlistable
from workbench.errors import UserError
from workbench.remote.hosts import Host, load_hosts
from workbench.remote.client import stage_argv
from workbench.remote import transport
from workbench.workspace import Workspace, find_workspace


def ws_with(tmp_path: Path, hosts, file: str = "wb.yaml") -> Workspace:
    if file == "wb.yaml":
        (tmp_path / "wb.yaml").write_text(yaml.safe_dump({"hosts": hosts}))
    else:
        (tmp_path / "pyproject.toml").write_text(hosts)
    return find_workspace(tmp_path)


def test_list_and_mapping_forms(tmp_path):
    ws = ws_with(tmp_path, [{"name": "h200", "ssh": "me@box", "path": "~/work/wb", "port": 2222, "setup": "source ~/v/bin/activate",
                             "ssh_options": {"ProxyJump": "bastion"}, "env": {"A": 1}, "gpus": "0,1"}])
    h = load_hosts(ws)["h200"]
    assert (h.ssh, h.port, h.path, h.remote_path, h.python) == ("me@box", 2222, "~/work/wb", "work/wb", "python3")
    assert h.ssh_options == ("-o", "ProxyJump=bastion") and h.env == (("A", "1"),) and h.gpus == ("0", "1")
    ws = ws_with(tmp_path, {"a": {"ssh": "x@y", "path": "/abs"}, "b": {"target": "z", "workspace": "w", "gpus": "all"}})
    hosts = load_hosts(ws)
    assert list(hosts) == ["a", "b"] and hosts["b"].ssh == "z" and hosts["b"].gpus is None


def test_pyproject_form(tmp_path):
    ws = ws_with(tmp_path, '[tool.wb]\n[tool.wb.hosts.h200]\nssh = "me@box"\npath = "w"\nport = 22\n', file="pyproject.toml")
    assert load_hosts(ws)["h200"].port == 22
    ws = ws_with(tmp_path, '[tool.wb]\n[tool.wb.hosts.h200]\nssh = "me@box"\npath = "w"\nport = "x"\n', file="pyproject.toml")
    with pytest.raises(UserError) as err:
        load_hosts(ws)
    assert str(err.value) == "pyproject.toml: [tool.wb.hosts].h200: key 'port' must be an integer from 1 to 65535, got the text 'x'"


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "a", "path": "w"}, "wb.yaml: hosts[0] (a): key 'ssh' must be an ssh target like user@host (no spaces; options go in ssh_options), got nothing"),
        ({"name": "a", "ssh": "me@box"}, "wb.yaml: hosts[0] (a): key 'path' must be the remote workspace folder"),
        ({"name": "a", "ssh": "me@box", "path": "w", "port": 70000}, "key 'port' must be an integer from 1 to 65535, got 70000"),
        ({"name": "a", "ssh": "me@box", "path": "w", "prot": 22}, "unknown key 'prot' (did you mean port?)"),
        ({"name": "a", "ssh": "me@box -p 22", "path": "w"}, "key 'ssh' must be an ssh target like user@host"),
        ({"name": "a", "ssh": "me@box", "path": "w", "ssh_options": 3}, "key 'ssh_options' must be a mapping of ssh option names"),
        ({"name": "a", "ssh": "me@box", "path": "w", "setup": "a\nb"}, "key 'setup' must be one shell line"),
        ({"name": "a", "ssh": "me@box", "path": "w", "gpus": [True]}, "key 'gpus' must be all, a list of GPU indices"),
        ({"name": "a b", "ssh": "me@box", "path": "w"}, "key 'name' must be a short name"),
        ("me@box", "wb.yaml: hosts[0]: expected a mapping with name, ssh and path, got the text 'me@box'"),
    ],
)
def test_validation_names_file_key_and_expectation(tmp_path, entry, message):
    ws = ws_with(tmp_path, [entry])
    with pytest.raises(UserError) as err:
        load_hosts(ws)
    assert message in str(err.value)


def test_duplicate_and_unknown_host(tmp_path):
    ws = ws_with(tmp_path, [{"name": "a", "ssh": "x", "path": "w"}, {"name": "a", "ssh": "y", "path": "w"}])
    with pytest.raises(UserError, match="declared twice"):
        load_hosts(ws)
    ws = ws_with(tmp_path, [{"name": "h200", "ssh": "x", "path": "w"}])
    from workbench.remote.hosts import get_host

    with pytest.raises(UserError, match=r"no host 'h20' in wb.yaml \(did you mean h200\?\); configured: h200"):
        get_host(ws, "h20")


def test_ssh_command_line_puts_the_hosts_options_first():
    h = Host("h", "me@box", "w", port=2222, identity="/k", ssh_options=("-o", "BatchMode=no"), env=(("X", "a b"),), setup="source v")
    argv = transport.ssh_command(h, "true")
    assert argv[:3] == ["ssh", "-o", "BatchMode=no"]  # ssh keeps the first value: the user's wins
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/k"
    assert argv[-2:] == ["me@box", "true"]
    script = transport.wb_script(h, ["run", "toy/stage-a", "-p", "n=128"], env={"CUDA_VISIBLE_DEVICES": "1"})
    assert script.startswith("cd w 2>/dev/null || {")
    assert "export X='a b'; export CUDA_VISIBLE_DEVICES=1;" in script and "{ source v\n}" in script
    assert script.endswith("exec python3 -m workbench.remote.agent -- run toy/stage-a -p n=128")


def test_stage_argv_reproduces_the_resolved_run(toy_ws):
    from workbench.kernels.registry import load_kernels, resolve_stage

    ws = Workspace(toy_ws, {"default_kernel": "toy"})
    spec = resolve_stage(ws, "a", load_kernels(ws))
    argv = stage_argv(spec, {"n": 256, "dtype": "fp16"}, {"bug": "nan"}, ["toy-ones"], 3, 2, 9.5, "sm_90a")
    assert argv == ["run", "toy/stage-a", "-p", "n=256", "-p", "dtype=fp16", "-V", "bug=nan", "--fixture", "toy-ones",
                    "--seed", "3", "--seeds", "2", "--timeout", "9.5", "--arch", "sm_90a", "--json"]


def test_a_workspace_folder_that_cannot_be_listed_is_one_line_not_left_out(tmp_path, monkeypatch):
    """Outside git, the files to send come from os.walk, which skipped a folder it could not
    list: the remote would have run without (or with stale copies of) its files."""
    root = tmp_path / "w"
    (root / "stages" / "k").mkdir(parents=True)
    (root / "stages" / "k" / "stage_a.py").write_text("x")
    unlistable(monkeypatch, root / "stages" / "k")
    with pytest.raises(UserError, match=r"cannot read .*stages/k: Permission denied; wb would send the workspace without it"):
        transport.workspace_files(root)



def test_an_unlistable_folder_deep_in_the_workspace_is_named_in_one_short_line(tmp_path, monkeypatch):
    """The folder's path is cut at 100 characters, as every path error of wb's is: a deep
    workspace's error stays one terminal line and still names the consequence."""
    deep = tmp_path / "w" / "stages" / ("k" * 60) / ("sub" * 30)
    deep.mkdir(parents=True)
    (deep / "f.py").write_text("x")
    unlistable(monkeypatch, deep)
    with pytest.raises(UserError) as err:
        transport.workspace_files(tmp_path / "w")
    message = str(err.value)
    assert f"({len(str(deep))} characters): Permission denied; wb would send the workspace without it" in message
    assert len(message) < 100 + 120

def test_workspace_files_sent(tmp_path):
    root = tmp_path / "w"
    (root / "stages").mkdir(parents=True)
    (root / "stages" / "a.py").write_text("x")
    (root / "runs" / "1").mkdir(parents=True)
    (root / "runs" / "1" / "run.json").write_text("{}")
    (root / ".wb").mkdir()
    (root / ".wb" / "x").write_text("")
    (root / "stages" / "__pycache__").mkdir()
    (root / "stages" / "__pycache__" / "a.pyc").write_text("")
    (root / "ignored.bin").write_text("")
    (root / ".gitignore").write_text("ignored.bin\n")
    # Not a git repository: every file outside wb's state and caches.
    assert transport.workspace_files(root) == [".gitignore", "ignored.bin", "stages/a.py"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", ".gitignore"], cwd=root, check=True)
    (root / "runs" / "1" / "run.json").write_text("{}")
    # A git repository: tracked + untracked-not-ignored, minus runs/, .wb/ and caches.
    assert transport.workspace_files(root) == [".gitignore", "stages/a.py"]


def test_run_host_errors_without_network(toy_ws, wb):
    proc = wb("run", "a", "--host", "nowhere")
    assert proc.returncode == 2 and "no hosts configured" in proc.stderr
    config = yaml.safe_load((toy_ws / "wb.yaml").read_text())
    config["hosts"] = [{"name": "h", "ssh": "me@box", "path": "w", "port": "x"}]
    (toy_ws / "wb.yaml").write_text(yaml.safe_dump(config))
    proc = wb("hosts")
    assert proc.returncode == 2 and "wb.yaml: hosts[0] (h): key 'port' must be an integer" in proc.stderr


ANSWERING_SSH = """#!/bin/sh
# a host whose answer is $FAKE_OUT (whatever the command was)
printf '%s\\n' "$FAKE_OUT"
"""


@pytest.mark.parametrize("answer", [
    'WB-PROBE {"python": "3.1',  # ssh dropped mid-line
    "WB-PROBE [1]",
    'WB-PROBE {"python": "3", "wb": 5, "gpus": 5}',
    'WB-PROBE {"python": "3", "wb": "0.1", "torch": "2", "cuda": true, "gpus": [1, {"a": 2}]}',
    "WB-PROBE " + "[" * 5000,  # nested past json's limit: RecursionError
])
def test_hosts_check_of_a_cut_or_garbled_probe_answer_is_one_line(toy_ws, wb, tmp_path, monkeypatch, answer):
    from conftest import executable

    (tmp_path / "bin").mkdir()
    executable(tmp_path / "bin" / "ssh", ANSWERING_SSH)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_OUT", answer)
    (toy_ws / "wb.yaml").write_text((toy_ws / "wb.yaml").read_text() + "hosts:\n  - {name: h, ssh: me@box, path: w}\n")
    proc = wb("hosts")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the probe's answer was cut off or is not wb's" in proc.stdout


SLOW_SSH = """#!/bin/sh
# a remote wb that announces progress, then takes its time
printf '%s\\n' "$FAKE_ERR" >&2
exec sleep 30
"""


def test_a_remote_session_ends_with_the_call_that_gave_up_on_it(tmp_path, monkeypatch):
    """A progress callback that raises (a display error) must not leave ssh running."""
    from conftest import executable
    from workbench.remote import client

    (tmp_path / "bin").mkdir()
    executable(tmp_path / "bin" / "ssh", SLOW_SSH)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_ERR", 'wb-event {"phase": "fixture", "fixture": "f#0"}')
    started = []
    popen = transport.ssh_popen
    monkeypatch.setattr(transport, "ssh_popen", lambda *a: started.append(popen(*a)) or started[-1])

    def boom(event):
        raise RuntimeError("display broke")

    with pytest.raises(RuntimeError):
        client.invoke(Host("h", "me@box", "w"), ["run", "a"], on_event=boom, deadline_s=20)
    assert started and started[0].poll() is not None  # ended, not left sleeping


@pytest.mark.parametrize("line", ['wb-event {"phase": [1]}', 'wb-event {"phase": "start", "run_id": ["../x"]}'])
def test_a_remote_event_not_shaped_like_wbs_is_a_line_not_an_event(tmp_path, monkeypatch, line):
    from conftest import executable
    from workbench.remote import client

    (tmp_path / "bin").mkdir()
    executable(tmp_path / "bin" / "ssh", ANSWERING_SSH.replace("'%s\\n' \"$FAKE_OUT\"", "'%s\\n' \"$FAKE_OUT\" >&2"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_OUT", line)
    seen = []
    res = client.invoke(Host("h", "me@box", "w"), ["run", "a"], on_event=seen.append, deadline_s=20)
    assert client._announced_id(res) is None  # no remote id that is not text
    if '"phase": [1]' in line:  # the sweep display looked a phase up in a dict: TypeError, the case an ERROR
        assert seen == [] and res.stderr_lines == [line]


@pytest.mark.parametrize("line", ["wb-agent [1]", 'wb-agent {"pid": 1, "cwd": 5}'])
def test_a_remote_agent_line_not_shaped_like_wbs_is_no_traceback(toy_ws, tmp_path, monkeypatch, line):
    """The agent's first line names the remote cwd (remote paths in the record are rewritten
    from it): a list there was an AttributeError traceback of wb run --host."""
    from conftest import executable
    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.remote import client

    (tmp_path / "bin").mkdir()
    executable(tmp_path / "bin" / "ssh", ANSWERING_SSH.replace("'%s\\n' \"$FAKE_OUT\"", "'%s\\n' \"$FAKE_OUT\" >&2"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_OUT", line)
    ws = find_workspace(toy_ws)
    spec = resolve_stage(ws, "a", load_kernels(ws))
    record = client.run_remote(ws, Host("h", "me@box", "w"), spec, spec.resolve_params({}), spec.resolve_variants({}), show=False, sync=False)
    assert record["verdict"] == "LOST" and record["remote"]["cwd"] is None


def test_remote_answers_nested_past_jsons_limit_are_no_answer(tmp_path, monkeypatch):
    """'[[[[...' on the remote's stdout, or after wb-event / wb-agent on its stderr, made
    json's decoder raise RecursionError, a traceback of wb run/ps/kill/bench --host."""
    from conftest import executable
    from workbench.remote import client

    (tmp_path / "bin").mkdir()
    executable(tmp_path / "bin" / "ssh", ANSWERING_SSH + "printf 'wb-event %s\\nwb-agent %s\\n' \"$FAKE_OUT\" \"$FAKE_OUT\" >&2\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_OUT", "[" * 5000)
    res = client.invoke(Host("h", "me@box", "w"), ["ps"], deadline_s=20)
    assert res.json() is None and res.events == [] and res.agent is None and len(res.stderr_lines) == 2


@pytest.mark.parametrize("key", ["null", "1", "yes"])
def test_a_host_keyed_by_something_yaml_reads_as_no_name_is_refused(tmp_path, key):
    """`hosts: {null: {...}}` became a host called "None" (and `1:` one called "1", `yes:`
    "True"): YAML reads those keys as null, a number and a boolean."""
    (tmp_path / "wb.yaml").write_text(f"hosts:\n  {key}: {{ssh: x@y, path: w}}\n")
    with pytest.raises(UserError, match="a host's name must be text"):
        load_hosts(find_workspace(tmp_path))
