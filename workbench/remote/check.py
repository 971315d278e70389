"""`wb hosts`: reach a host over ssh, import wb and torch with its Python, list its GPUs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench import __version__
from workbench.remote import transport
from workbench.remote.hosts import Host
from workbench.schemas import short
from workbench.text import json_or_none
from workbench.workspace import Workspace


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


# What each field of the probe's answer holds (a cut or garbled answer is a problem, not a crash).
_PROBE_FIELDS = {"cuda": (bool,), "gpus": (list,), "cuda_visible_devices": (str, type(None))}


def _probe_info(text: str) -> dict[str, Any] | None:
    """The probe's JSON line as a dict of the types wb shows, or None when the answer was cut
    off (ssh dropped mid-line) or is not the probe's."""
    info = json_or_none(text)
    if not isinstance(info, dict):
        return None
    for key, value in info.items():
        if not isinstance(value, _PROBE_FIELDS.get(key, (str,))):
            return None
    if not all(isinstance(gpu, str) for gpu in info.get("gpus") or []):
        return None
    return info


def check_host(ws: Workspace, host: Host, timeout: float = 60.0) -> HostCheck:
    """Reach the host, import wb and torch with its Python, list the GPUs torch sees."""
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
    info = _probe_info(probe_line[len("WB-PROBE "):])
    if info is None:
        check.problems.append(f"the probe's answer was cut off or is not wb's: {short(probe_line, 100)}")
        return check
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
