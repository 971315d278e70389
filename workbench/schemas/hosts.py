"""One entry of wb.yaml `hosts:` / [tool.wb.hosts]: its keys, their aliases and what each accepts.

Host fields end up on command lines that a shell on the host parses (wb's ssh scripts) or that
ssh and rsync read, so each one is drawn from a character set that holds no shell syntax:

    path      letters, digits, single spaces and . _ - / + , @ = : ~ ; no leading '-'; a
              leading '~' only as '~' or '~/' (the remote home: nothing would expand '~bob')
    ssh       [user@]host: user a POSIX user name (letters, digits, . _ -, no leading '-'),
              host a DNS name or ~/.ssh/config alias (labels of letters, digits, _ -, no
              leading '-'), an IPv4 address or [IPv6]
    python    words of the path set (any '~'), one space between words; the first word is
              not an option
    identity  the path set; a leading '~' or '~user' (expanded here)
    env       names like C identifiers; values any one-line text (they are quoted)
    setup     one shell line the user owns (it is meant to be shell): no newline or NUL
    ssh_options  ssh's own syntax (ssh reads them, no shell): no newline or NUL

Each field's description is the expectation a message shows: "key 'port' must be <description>".
"""

from __future__ import annotations

import re
import shlex
from typing import Any, Callable, Optional

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from workbench.schemas import short

ALIASES = {"target": "ssh", "identity_file": "identity", "workspace": "path", "options": "ssh_options"}

MAX_PATH = 1024
MAX_LINE = 4096
MAX_ENV_VALUE = 32 << 10
MAX_OPTIONS = 64

_PATH_CHARS = re.compile(r"[A-Za-z0-9 ._/+,@=:~-]")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_USER = r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}"
_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_TARGET = re.compile(rf"^(?:{_USER}@)?(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\])$")
_OPTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: a CUDA_VISIBLE_DEVICES entry: an index, or a card's UUID as nvidia-smi -L prints it (GPU-..., MIG-...)
_GPU = re.compile(r"^(?:[0-9]{1,4}|(?:GPU|MIG)-[A-Za-z0-9_/:.-]{1,124})$")

def character(c: str) -> str:
    """A character as a message names it."""
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\0": "a NUL byte", " ": "a space"}
    return names.get(c) or (repr(c) if c.isprintable() else f"the character U+{ord(c):04X}")


def _only(value: str, allowed: re.Pattern) -> str:
    bad = next((c for c in value if not allowed.fullmatch(c)), None)
    if bad is not None:
        raise ValueError(f"{character(bad)} is not allowed")
    return value


def _no_line_break(value: str, what: str) -> str:
    bad = next((c for c in value if c in "\n\r\0"), None)
    if bad is not None:
        raise ValueError(f"{what} holds {character(bad)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not text")
    return value.strip()


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def safe_path(value: str, tilde_user: bool = False) -> str:
    """A path of the safe set; '~' only where it means a home folder."""
    if len(value) > MAX_PATH:
        raise ValueError(f"it is {len(value)} characters long, over {MAX_PATH}")
    _only(value, _PATH_CHARS)
    if value.startswith("-"):
        raise ValueError("a leading '-' reads as an option")
    if "  " in value:
        raise ValueError("two spaces in a row")
    home = r"~[A-Za-z0-9._-]*" if tilde_user else r"~"
    if value.startswith("~") and not re.match(rf"{home}(/|$)", value):
        raise ValueError("a leading '~' means the home folder only as '~/'" + (" or '~user/'" if tilde_user else ""))
    return value


class HostEntry(BaseModel):
    """One host, as written in the config; workbench.remote.hosts turns it into a Host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="a short name of letters, digits, '.', '_' or '-' (how --host refers to it)")
    ssh: str = Field(
        validation_alias=AliasChoices("ssh", "target"),
        description="an ssh target like user@host (no spaces; options go in ssh_options)",
    )
    path: str = Field(
        validation_alias=AliasChoices("path", "workspace"),
        description="the remote workspace folder, e.g. work/wb (relative to the remote home) or /abs/path",
    )
    port: Optional[int] = Field(None, description="an integer from 1 to 65535")
    identity: Optional[str] = Field(
        None, validation_alias=AliasChoices("identity", "identity_file"), description="the path of a private key file"
    )
    ssh_options: tuple[str, ...] = Field(
        (),
        validation_alias=AliasChoices("ssh_options", "options"),
        description="a mapping of ssh option names to values (e.g. {ProxyJump: bastion}) or a list of ssh arguments",
    )
    python: str = Field("python3", description="the remote Python command, e.g. python3 or ~/venv/bin/python")
    setup: Optional[str] = Field(None, description="one shell line, e.g. 'source ~/venv/bin/activate'")
    env: tuple[tuple[str, str], ...] = Field((), description="a mapping of environment variable names to one-line values")
    gpus: Optional[tuple[str, ...]] = Field(
        None, description="all, a list of GPU indices like [0, 1], or text like \"0,1\""
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            raise ValueError("")
        return value

    @field_validator("ssh", mode="before")
    @classmethod
    def _ssh(cls, value: Any) -> str:
        target = _text(value)
        if not target or any(c.isspace() for c in target):
            raise ValueError("")
        if target.startswith("-"):
            raise ValueError("a leading '-' reads as an option")
        if len(target) > 300 or not _TARGET.match(target):
            raise ValueError("user: letters, digits, '.', '_', '-'; host: a DNS name, an IPv4 address or [IPv6]")
        return target

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any) -> str:
        path = _text(value)
        if not path:
            raise ValueError("")
        return safe_path(path)

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Optional[int]:
        if isinstance(value, str) and value.strip().isdecimal():
            value = int(value)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise ValueError("")
        return value

    @field_validator("identity", mode="before")
    @classmethod
    def _identity(cls, value: Any) -> Optional[str]:
        if value is None:
            return None
        identity = _text(value)
        if not identity:
            raise ValueError("")
        return safe_path(identity, tilde_user=True)

    @field_validator("ssh_options", mode="before")
    @classmethod
    def _ssh_options(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, dict):
            options = []
            for key, item in value.items():
                if not isinstance(key, str) or not _OPTION_NAME.match(key) or isinstance(item, (dict, list)) or item is None:
                    raise ValueError(f"{short(key)}: {short(item)} is not an option name and a value")
                options += ["-o", f"{key}={_scalar(item)}"]
        elif isinstance(value, list) and all(isinstance(o, str) for o in value):
            options = list(value)
        elif isinstance(value, str):
            options = shlex.split(_no_line_break(value, "the text"))
        else:
            raise ValueError("")
        if len(options) > 2 * MAX_OPTIONS:
            raise ValueError(f"over {MAX_OPTIONS} options")
        for option in options:
            _no_line_break(option, repr(option)[:60])
        return tuple(options)

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, value: Any) -> str:
        command = _text(value)
        if not command:
            raise ValueError("")
        if len(command) > MAX_PATH:
            raise ValueError(f"it is {len(command)} characters long, over {MAX_PATH}")
        _only(command, _PATH_CHARS)
        if "  " in command:
            raise ValueError("two spaces in a row")
        if command.startswith("-"):
            raise ValueError("a leading '-' reads as an option")
        return command

    @field_validator("setup", mode="before")
    @classmethod
    def _setup(cls, value: Any) -> Optional[str]:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("")
        line = value.strip()
        if len(line) > MAX_LINE:
            raise ValueError(f"it is {len(line)} characters long, over {MAX_LINE}")
        if "\n" in line or "\r" in line:
            raise ValueError("it holds a line break (join commands with && or ;)")
        _no_line_break(line, "it")
        return line or None

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise ValueError("")
        env = []
        for key, item in value.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key) or isinstance(item, (dict, list)) or item is None:
                raise ValueError(f"{short(key)}: {short(item)} is not a variable name and a value")
            text = _scalar(item)
            if len(text) > MAX_ENV_VALUE:
                raise ValueError(f"the value of {key} is {len(text)} characters long, over {MAX_ENV_VALUE}")
            env.append((key, _no_line_break(text, f"the value of {key}")))
        return tuple(env)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, value: Any) -> Optional[tuple[str, ...]]:
        return parse_gpus(value, ValueError)


def parse_gpus(value: Any, error: Callable[[str], Exception]) -> tuple[str, ...] | None:
    """'all'/None -> None (all visible); 'none' or '' -> (); '0,1' / [0, 1] -> ('0', '1').
    `error(why)` is raised for anything else: an entry that is no GPU index or UUID, or two
    entries that name one card (0 and 00; one UUID and its prefix, in any case), which would
    put two lanes on it."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    if isinstance(value, str) and value.strip().lower() in ("none", "cpu", ""):
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
        if not all(value):
            raise error("an empty entry")
    if not isinstance(value, list) or not value:
        raise error("not a list of GPUs")
    out: list[str] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not _GPU.match(str(v).strip()):
            raise error(f"{short(v)} is not a GPU index or UUID")
        text = str(v).strip()
        text = str(int(text)) if text.isdecimal() else text
        same = next((o for o in out if o.lower().startswith(text.lower()) or text.lower().startswith(o.lower())), None)
        if same is not None and (same == text or not text.isdecimal()):
            raise error(f"{v!r} and {same!r} name one card: two lanes would share it")
        out.append(text)
    return tuple(out)
