"""Find the workspace: the folder holding stages/, fixtures/, runs/ and MEMORY.md.

A folder is a workspace when it has a wb.yaml, or a pyproject.toml with a [tool.wb] table.
`--workspace PATH` and the WB_WORKSPACE variable override the search up from the cwd.
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.errors import UserError, path_error


@dataclass
class Workspace:
    root: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def stages_dir(self) -> Path:
        return self.root / "stages"

    @property
    def fixtures_dir(self) -> Path:
        return self.root / "fixtures"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def memory_path(self) -> Path:
        return self.root / "MEMORY.md"

    @property
    def state_dir(self) -> Path:
        """wb's private, git-ignored state: worker sockets, pid files, compile cache."""
        return self.root / ".wb"

    def ensure_state_dir(self, *parts: str) -> Path:
        """The state folder (or a folder inside it), created and writable; else one line
        saying what is in the way."""
        path = self.state_dir.joinpath(*parts)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(_state_dir_problem(self.state_dir, parts, exc)) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{path} is not writable: wb keeps its state there (worker sockets, pid files, locks, compile cache)")
        return path

    def activate(self) -> None:
        """Make `stages.<kernel>.<module>` importable (stage modules import their siblings)."""
        root = str(self.root)
        if root not in sys.path:
            sys.path.insert(0, root)


def _state_dir_problem(state_dir: Path, parts: tuple[str, ...], exc: OSError) -> str:
    for depth in range(len(parts) + 1):
        folder = state_dir.joinpath(*parts[:depth])
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            return f"{folder} is not a folder: wb keeps its state in {state_dir} (worker sockets, pid files, locks, compile cache); move it away"
    return f"cannot create {state_dir.joinpath(*parts)}: {exc.strerror or exc}"


#: wb.yaml and pyproject.toml are a few KiB; a larger one is refused, not read into memory
CONFIG_MAX_BYTES = 4 * 1024 * 1024
#: the settings wb.yaml / [tool.wb] may hold (the kernel registry and remote hosts read them)
CONFIG_KEYS = ("default_kernel", "hosts")


def _known_keys(config: dict[str, Any], where: str) -> dict[str, Any]:
    """``config`` when every key is a setting wb reads; a misspelt one (default-kernel) was
    silently ignored, unlike kernel.yaml's, which are refused with a did-you-mean."""
    import difflib

    for key in config:
        if key not in CONFIG_KEYS:
            close = difflib.get_close_matches(str(key).replace("-", "_"), CONFIG_KEYS, n=1)
            raise UserError(f"{where}: unknown setting {str(key)[:80]!r}" + (f" (did you mean {close[0]}?)" if close else "")
                            + f"; known: {', '.join(CONFIG_KEYS)}")
    return config


def _config_of(folder: Path) -> dict[str, Any] | None:
    """The wb config of `folder`, or None when it is not a workspace."""
    from workbench.schemas import read_text, safe_load_yaml, yaml_problem

    wb_yaml = folder / "wb.yaml"
    if wb_yaml.is_file():
        try:
            data = safe_load_yaml(read_text(wb_yaml, CONFIG_MAX_BYTES), str(wb_yaml)) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{wb_yaml}: {yaml_problem(exc)}") from exc
        if not isinstance(data, dict):
            raise UserError(f"{wb_yaml}: expected a mapping of settings at the top level")
        return _known_keys(data, str(wb_yaml))
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(read_text(pyproject, CONFIG_MAX_BYTES))
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{pyproject}: not valid TOML: {exc}") from exc
        tool = data.get("tool", {})
        tool_wb = tool.get("wb") if isinstance(tool, dict) else None  # `tool = 5`: no [tool.wb] here
        if tool_wb is not None:
            if not isinstance(tool_wb, dict):
                raise UserError(f"{pyproject}: [tool.wb] must be a table")
            return _known_keys(tool_wb, f"{pyproject} [tool.wb]")
    return None


def find_workspace(explicit: str | os.PathLike | None = None, start: Path | None = None) -> Workspace:
    """Locate the workspace: explicit path, then $WB_WORKSPACE, then up from `start`/cwd."""
    chosen = explicit or os.environ.get("WB_WORKSPACE")
    if chosen:
        try:
            root = Path(chosen).expanduser().resolve()
        except RuntimeError as exc:  # ~nosuchuser, a symbolic link loop
            raise UserError(f"workspace {chosen}: {exc}") from None
        try:
            is_dir = root.is_dir()
            exists = is_dir or root.exists()
        except OSError as exc:  # a name too long for the OS, ...
            raise path_error("workspace", root, exc) from None
        if not is_dir:
            raise UserError(f"workspace {root} {'is not a folder' if exists else 'does not exist'}")
        config = _config_of(root)
        if config is None and not (root / "stages").is_dir():
            raise UserError(
                f"{root} is not a wb workspace (no wb.yaml, no [tool.wb] in pyproject.toml, no stages/)"
            )
        return Workspace(root, config or {})
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        config = _config_of(folder)
        if config is not None:
            return Workspace(folder, config)
    raise UserError(
        f"no wb workspace at or above {here}: create a wb.yaml (or [tool.wb] in pyproject.toml), "
        "or pass --workspace PATH"
    )
