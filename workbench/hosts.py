"""Remote GPU hosts, read from the workspace config (wb.yaml `hosts:` or [tool.wb.hosts]).

A host is a machine reached with OpenSSH, holding a copy of the workspace that wb keeps in
sync with rsync. Either form works, in wb.yaml or pyproject.toml:

    hosts:                                    # wb.yaml: a list ...
      - name: h200
        ssh: alice@gpu-box.example.org        # the ssh target: [user@]host
        port: 2222                            # optional
        identity: ~/.ssh/id_ed25519           # optional (ssh -i)
        ssh_options: {ProxyJump: bastion}     # optional: -o KEY=VALUE, or a list of raw ssh args
        path: work/wb-fmha                    # the remote workspace (relative to the remote home)
        python: ~/venvs/wb/bin/python         # default: python3
        setup: module load cuda/12.8          # optional shell line run before wb
        env: {CUTE_DSL_CACHE_DIR: /scratch/x} # optional environment variables
        gpus: all                             # optional: all | [0, 1] | "0,1" (wb sweep's lanes)

    hosts:                                    # ... or a mapping keyed by name
      h200: {ssh: alice@gpu-box, path: work/wb-fmha}

    [tool.wb.hosts.h200]                      # pyproject.toml
    ssh = "alice@gpu-box"
    path = "work/wb-fmha"

Errors name the file, the entry and the key, and say what was expected.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench.workspace import Workspace

KEYS = ("name", "ssh", "port", "identity", "ssh_options", "path", "python", "setup", "env", "gpus")
ALIASES = {"target": "ssh", "identity_file": "identity", "workspace": "path", "options": "ssh_options"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Host:
    name: str
    ssh: str  # [user@]host
    path: str  # remote workspace; relative paths are relative to the remote home
    python: str = "python3"
    port: int | None = None
    identity: str | None = None
    ssh_options: tuple[str, ...] = ()  # raw ssh arguments, e.g. ("-o", "ProxyJump=bastion")
    setup: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    gpus: tuple[str, ...] | None = None  # None: find out on the host ("all")
    source: str = ""  # where it was declared, for messages

    @property
    def remote_path(self) -> str:
        """The workspace path as rsync and `cd` take it: '~/x' becomes 'x' (relative to home)."""
        path = self.path.strip()
        if path in ("~", "~/"):
            return "."
        if path.startswith("~/"):
            return path[2:] or "."
        return path

    def describe(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.ssh}{port}:{self.path}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "ssh": self.ssh, "port": self.port, "identity": self.identity,
            "ssh_options": list(self.ssh_options), "path": self.path, "python": self.python,
            "setup": self.setup, "env": dict(self.env), "gpus": list(self.gpus) if self.gpus is not None else "all",
        }


def config_file(ws: Workspace) -> str:
    """The file the workspace config came from (for messages)."""
    return "wb.yaml" if (ws.root / "wb.yaml").is_file() else "pyproject.toml"


def load_hosts(ws: Workspace) -> dict[str, Host]:
    """Every configured host by name, validated; {} when none are configured."""
    raw = ws.config.get("hosts")
    if raw is None:
        return {}
    fname = config_file(ws)
    where_root = "hosts" if fname == "wb.yaml" else "[tool.wb.hosts]"
    entries: list[tuple[str, dict, str | None]] = []
    if isinstance(raw, list):
        for i, entry in enumerate(raw):
            label = f"{where_root}[{i}]"
            if not isinstance(entry, dict):
                raise UserError(f"{fname}: {label}: expected a mapping with name, ssh and path, got {_kind(entry)}")
            entries.append((label + (f" ({entry['name']})" if isinstance(entry.get("name"), str) else ""), entry, None))
    elif isinstance(raw, dict):
        for name, entry in raw.items():
            label = f"{where_root}.{name}"
            if not isinstance(entry, dict):
                raise UserError(f"{fname}: {label}: expected a mapping with ssh and path, got {_kind(entry)}")
            entries.append((label, entry, str(name)))
    else:
        raise UserError(f"{fname}: {where_root}: expected a list of hosts (or a mapping by name), got {_kind(raw)}")
    hosts: dict[str, Host] = {}
    for label, entry, keyed_name in entries:
        host = _parse(fname, label, entry, keyed_name)
        if host.name in hosts:
            raise UserError(f"{fname}: {label}: host name {host.name!r} is declared twice")
        hosts[host.name] = host
    return hosts


def get_host(ws: Workspace, name: str) -> Host:
    hosts = load_hosts(ws)
    if name in hosts:
        return hosts[name]
    fname = config_file(ws)
    if not hosts:
        raise UserError(f"no hosts configured: add a `hosts:` list to {fname} (see `wb hosts --help`)")
    close = difflib.get_close_matches(name, list(hosts), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"no host {name!r} in {fname}{hint}; configured: {', '.join(hosts)}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the text {value!r}", bool: f"{value}"}.get(type(value), f"{value!r}")


def _parse(fname: str, label: str, entry: dict, keyed_name: str | None) -> Host:
    def bad(key: str, expected: str) -> UserError:
        return UserError(f"{fname}: {label}: key '{key}' must be {expected}, got {_kind(entry.get(key))}")

    data: dict[str, Any] = {}
    for key, value in entry.items():
        canonical = ALIASES.get(str(key), str(key))
        if canonical not in KEYS:
            close = difflib.get_close_matches(str(key), list(KEYS) + list(ALIASES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"{fname}: {label}: unknown key {key!r}{hint}; host keys: {', '.join(KEYS)}")
        data[canonical] = value
        if canonical != key:
            entry = {**entry, canonical: value}

    name = data.get("name", keyed_name)
    if keyed_name is not None and "name" in data and data["name"] != keyed_name:
        raise UserError(f"{fname}: {label}: key 'name' ({data['name']!r}) differs from the entry's key {keyed_name!r}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise bad("name", "a short name of letters, digits, '.', '_' or '-' (how --host refers to it)")

    ssh = data.get("ssh")
    if not isinstance(ssh, str) or not ssh.strip() or any(c.isspace() for c in ssh.strip()) or ssh.strip().startswith("-"):
        raise bad("ssh", "an ssh target like user@host (no spaces; options go in ssh_options)")
    path = data.get("path")
    if not isinstance(path, str) or not path.strip():
        raise bad("path", "the remote workspace folder, e.g. work/wb (relative to the remote home) or /abs/path")

    port = data.get("port")
    if port is not None:
        if isinstance(port, str) and port.strip().isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise bad("port", "an integer from 1 to 65535")

    identity = data.get("identity")
    if identity is not None and (not isinstance(identity, str) or not identity.strip()):
        raise bad("identity", "the path of a private key file")
    if identity is not None:
        identity = os.path.expanduser(identity.strip())

    options: list[str] = []
    raw_opts = data.get("ssh_options")
    if raw_opts is None:
        pass
    elif isinstance(raw_opts, dict):
        for k, v in raw_opts.items():
            if not isinstance(k, str) or isinstance(v, (dict, list)) or v is None:
                raise bad("ssh_options", "a mapping of ssh option names to values (e.g. {ProxyJump: bastion}) or a list of ssh arguments")
            options += ["-o", f"{k}={_scalar(v)}"]
    elif isinstance(raw_opts, list) and all(isinstance(o, str) for o in raw_opts):
        options = list(raw_opts)
    elif isinstance(raw_opts, str):
        import shlex

        options = shlex.split(raw_opts)
    else:
        raise bad("ssh_options", "a mapping of ssh option names to values (e.g. {ProxyJump: bastion}) or a list of ssh arguments")

    python = data.get("python", "python3")
    if not isinstance(python, str) or not python.strip():
        raise bad("python", "the remote Python command, e.g. python3 or ~/venv/bin/python")

    setup = data.get("setup")
    if setup is not None and not isinstance(setup, str):
        raise bad("setup", "one shell line, e.g. 'source ~/venv/bin/activate'")
    if setup is not None and "\n" in setup.strip():
        raise bad("setup", "one shell line (join commands with && or ;)")

    env: list[tuple[str, str]] = []
    raw_env = data.get("env")
    if raw_env is not None:
        if not isinstance(raw_env, dict):
            raise bad("env", "a mapping of environment variable names to values")
        for k, v in raw_env.items():
            if not isinstance(k, str) or not _ENV_RE.match(k) or isinstance(v, (dict, list)) or v is None:
                raise UserError(f"{fname}: {label}: key 'env' must map variable names to values; {k!r}: {v!r} is not one")
            env.append((k, _scalar(v)))

    gpus = parse_gpus(data.get("gpus"), lambda: bad("gpus", "all, a list of GPU indices like [0, 1], or text like \"0,1\""))
    return Host(
        name=name, ssh=ssh.strip(), path=path.strip(), python=python.strip(), port=port, identity=identity,
        ssh_options=tuple(options), setup=(setup.strip() or None) if setup else None, env=tuple(env), gpus=gpus,
        source=f"{fname}: {label}",
    )


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def parse_gpus(value: Any, error) -> tuple[str, ...] | None:
    """'all'/None -> None (all visible); 'none' -> (); '0,1' / [0, 1] -> ('0', '1')."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    if isinstance(value, str) and value.strip().lower() in ("none", "cpu", ""):
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
        if not all(value):
            raise error()
    if not isinstance(value, list) or not value:
        raise error()
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip() or "," in str(v):
            raise error()
        out.append(str(v).strip())
    return tuple(out)


@dataclass
class HostCheck:
    """What `wb hosts` found on one host."""

    host: Host
    ok: bool = False
    reachable: bool = False
    problems: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host.as_dict(), "ok": self.ok, "reachable": self.reachable, "problems": self.problems, **self.info}


# The probe runs on the remote with the host's Python, from the remote workspace when it
# exists (where a synced wb checkout is importable) and prints one JSON line.
_PROBE = r"""
import json, os, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "cwd": os.getcwd()}
try:
    import workbench
    out["wb"] = workbench.__version__
    out["wb_file"] = os.path.dirname(workbench.__file__)
except Exception as exc:
    out["wb_error"] = f"{type(exc).__name__}: {exc}"
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.cuda.is_available()
    out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if out["cuda"] else []
    out["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
print("WB-PROBE " + json.dumps(out))
"""


def check_host(ws: Workspace, host: Host, timeout: float = 60.0) -> HostCheck:
    """Reach the host, import wb and torch with its Python, list the GPUs torch sees."""
    import json

    from workbench import __version__
    from workbench.remote import transport

    check = HostCheck(host)
    script = f"cd {transport.shell_path(host.remote_path)} 2>/dev/null || true; " + transport.prelude(host) + \
        f"exec {transport.python_cmd(host)} -c {transport.quote(_PROBE)}"
    try:
        done = transport.ssh_run(host, script, timeout=timeout)
    except transport.SshTimeout:
        check.problems.append(f"no answer within {timeout:g} s (ssh {host.describe()})")
        return check
    probe_line = next((line for line in done.stdout.splitlines() if line.startswith("WB-PROBE ")), None)
    if done.returncode == 255 and probe_line is None:
        check.problems.append("unreachable: " + (transport.last_line(done.stderr) or "ssh failed (exit 255)"))
        return check
    check.reachable = True
    if probe_line is None:
        why = transport.last_line(done.stderr) or f"exit {done.returncode}"
        if done.returncode == 127:
            why = f"python command {host.python!r} not found on the host ({why})"
        elif host.setup and done.returncode != 0:
            why = f"the setup line or Python failed: {why}"
        check.problems.append(why)
        return check
    info = json.loads(probe_line[len("WB-PROBE "):])
    check.info = info
    if "wb_error" in info:
        check.problems.append(
            f"wb is not importable by {host.python}: {info['wb_error']} (install it there: pip install cute-wb, "
            "or pip install -e a checkout; a workspace that is the wb repo itself works once synced)"
        )
    elif info.get("wb") != __version__:
        check.info["wb_mismatch"] = f"remote wb {info.get('wb')} differs from local {__version__}"
    if "torch_error" in info:
        check.problems.append(f"torch is not importable: {info['torch_error']}")
    elif not info.get("gpus"):
        check.problems.append(
            "torch sees no GPU (torch.cuda.is_available() is False"
            + (f", CUDA_VISIBLE_DEVICES={info['cuda_visible_devices']!r}" if info.get("cuda_visible_devices") is not None else "")
            + ")"
        )
    check.ok = not check.problems
    return check


def local_path(value: str) -> Path:
    return Path(os.path.expanduser(value))
