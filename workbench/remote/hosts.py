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

Errors name the file, the entry and the key, and say what was expected. What each key
accepts (no shell syntax: the values reach the host's shell) is declared in
workbench/schemas/hosts.py.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench.schemas import SchemaError, short
from workbench.workspace import Workspace


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
        if path == "~" or path.startswith("~/"):
            return path[1:].lstrip("/") or "."
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
            entries.append((label + (f" ({_shown(entry['name'])})" if isinstance(entry.get("name"), str) else ""), entry, None))
    elif isinstance(raw, dict):
        for name, entry in raw.items():
            label = f"{where_root}.{_shown(str(name))}"
            if not isinstance(name, str):  # YAML reads `null:`, `1:` and `yes:` as no name (a host called "None")
                raise UserError(f"{fname}: {label}: a host's name must be text, got {_kind(name)} (quote it)")
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


def _shown(name: str) -> str:
    """A name as a message shows it: as written when it is short and printable, else quoted."""

    return name if name.isprintable() and len(name) <= 64 else short(name)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the text {short(value)}", bool: f"{value}"}.get(type(value), short(value))


def _parse(fname: str, label: str, entry: dict, keyed_name: str | None) -> Host:
    from pydantic import ValidationError

    from workbench.schemas.hosts import ALIASES, HostEntry  # lazy: pydantic loads when a file is read, not at start-up

    source = f"{fname}: {label}"
    for alias, key in ALIASES.items():
        if alias in entry and key in entry:
            raise SchemaError(source, f"keys '{key}' and '{alias}' are the same key: give one of them")
    if keyed_name is not None:
        if "name" in entry and entry["name"] != keyed_name:
            raise SchemaError(source, f"key 'name' ({short(entry['name'])}) differs from the entry's key {keyed_name!r}")
        entry = {**entry, "name": keyed_name}
    try:
        valid = HostEntry.model_validate(entry)
    except ValidationError as exc:
        raise SchemaError(source, _problem(exc, entry)) from None
    identity = os.path.expanduser(valid.identity) if valid.identity else None
    return Host(
        name=valid.name, ssh=valid.ssh, path=valid.path, python=valid.python, port=valid.port, identity=identity,
        ssh_options=valid.ssh_options, setup=valid.setup, env=valid.env, gpus=valid.gpus, source=source,
    )


def _problem(exc: Any, entry: dict) -> str:
    """The one problem to report: an unknown key first (a typo explains a 'missing' one), then
    the first key in declaration order, with what the key expects and why the value is not it."""
    from workbench.schemas.hosts import ALIASES, HostEntry  # lazy: pydantic loads when a file is read, not at start-up

    errors = exc.errors(include_url=False)
    unknown = [e for e in errors if e["type"] in ("extra_forbidden", "invalid_key")]
    if unknown:
        key = unknown[0]["loc"][0] if unknown[0]["loc"] else unknown[0].get("input")
        keys = list(HostEntry.model_fields)
        close = difflib.get_close_matches(str(key), keys + list(ALIASES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown key {short(key)}{hint}; host keys: {', '.join(keys)}"
    first = errors[0]
    key = str(first["loc"][0])  # as written: an alias when the entry used one
    expected = HostEntry.model_fields[ALIASES.get(key, key)].description
    reason = str(first.get("ctx", {}).get("error", ""))
    return f"key '{key}' must be {expected}, got {_kind(entry.get(key))}" + (f": {reason}" if reason else "")


def local_path(value: str) -> Path:
    return Path(os.path.expanduser(value))
