"""OpenSSH and rsync: the only ways wb talks to a remote host.

Every ssh call is non-interactive (BatchMode: a missing key fails at once instead of asking
for a password) and notices a dead network within about 15 s (ServerAliveInterval=5 ×
ServerAliveCountMax=3). The host's own `ssh_options` come first, so they win: ssh keeps the
first value it sees for each option.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Iterable

from workbench.errors import UserError, path_error
from workbench.files import atomic_write_text
from workbench.remote.hosts import Host
from workbench.workspace import Workspace

DEFAULT_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=15",
    "-o", "ServerAliveInterval=5",
    "-o", "ServerAliveCountMax=3",
    "-o", "LogLevel=ERROR",
)
# Never sent to a host: wb's own state, run records and caches.
EXCLUDED_DIRS = ("runs", ".wb")
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints", ".git"}
FALLBACK_SKIP = EXCLUDED_PARTS | {".venv", "venv", "build", "dist", "node_modules"}

# Exit codes of the remote shell prelude.
EXIT_NO_WORKSPACE = 96
EXIT_SETUP_FAILED = 97


class SshTimeout(Exception):
    pass


def quote(text: str) -> str:
    return shlex.quote(text)


def shell_path(path: str) -> str:
    """A path as one word of shell text that no command reads as an option."""
    return shlex.quote("./" + path if path.startswith("-") else path)


def last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def first_cause(text: str) -> str:
    """The line of rsync's stderr that says what went wrong (not its generic trailer)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("rsync error:", "rsync: connection unexpectedly closed"))]
    return (causes or lines or [""])[0]


def ssh_args(host: Host) -> list[str]:
    """ssh and its options, without the target."""
    args = ["ssh", *host.ssh_options, *DEFAULT_OPTIONS]
    if host.port:
        args += ["-p", str(host.port)]
    if host.identity:
        args += ["-i", host.identity, "-o", "IdentitiesOnly=yes"]
    return args


def ssh_destination(host: Host) -> str:
    """The target as ssh takes it: '[user@]host', an IPv6 address without rsync's brackets."""
    user, at, address = host.ssh.rpartition("@")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    return user + at + address


def ssh_command(host: Host, script: str) -> list[str]:
    """argv that runs the shell text `script` on the host."""
    return [*ssh_args(host), "-T", ssh_destination(host), script]


def prelude(host: Host, env: dict[str, str] | None = None) -> str:
    """Shell text that exports the host's variables (and `env`) and runs its setup line."""
    parts = []
    for key, value in [*host.env, *sorted((env or {}).items())]:
        if not key.isidentifier() or not key.isascii():  # the name is not quoted: it cannot be
            raise UserError(f"host {host.name}: {key!r} is not an environment variable name")
        parts.append(f"export {key}={quote(value)};")
    if host.setup:
        message = quote(f"wb: the setup line of host {host.name} failed: {host.setup}")
        parts.append(f"{{ {host.setup}\n}} || {{ echo {message} >&2; exit {EXIT_SETUP_FAILED}; }};")
    return " ".join(parts) + (" " if parts else "")


def python_cmd(host: Host) -> str:
    """The host's Python command: shell text (it may be `~/venv/bin/python` or `conda run ...`)."""
    return host.python


def wb_script(host: Host, argv: Iterable[str], env: dict[str, str] | None = None, agent: bool = True) -> str:
    """Shell text that runs wb (through the agent) in the remote workspace."""
    module = ["-m", "workbench.remote.agent", "--"] if agent else ["-m", "workbench"]
    path = host.remote_path
    return (
        f"cd {shell_path(path)} 2>/dev/null || {{ echo {quote(f'wb: the remote workspace {path} does not exist on host {host.name} (not synced yet?)')} >&2; exit {EXIT_NO_WORKSPACE}; }}; "
        + prelude(host, env)
        + f"exec {python_cmd(host)} " + " ".join(quote(a) for a in [*module, *argv])
    )


def ssh_run(host: Host, script: str, timeout: float = 60.0, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ssh_command(host, script), input=input, capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise SshTimeout(str(exc)) from None
    except FileNotFoundError:
        raise UserError("ssh is not installed on this machine (Debian: apt-get install openssh-client)") from None


def ssh_popen(host: Host, script: str) -> subprocess.Popen:
    """Start `script` on the host; stdin stays open (closing it tells the remote agent to stop)."""
    try:
        return subprocess.Popen(
            ssh_command(host, script), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches wb, which then ends ssh deliberately
        )
    except FileNotFoundError:
        raise UserError("ssh is not installed on this machine (Debian: apt-get install openssh-client)") from None


# ----------------------------------------------------------------------------- rsync


def workspace_files(root: Path) -> list[str]:
    """Files to send: `git ls-files -co --exclude-standard` (tracked + untracked-not-ignored),
    or every file outside wb's state and caches when the workspace is not in a git repository.
    runs/, .wb/ and caches are never sent."""
    try:
        done = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, timeout=60
        )
        listed = done.stdout.decode(errors="surrogateescape").split("\0") if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    if listed is None:
        listed = []

        def unlistable(exc: OSError) -> None:  # os.walk would skip the folder: the remote would run without its files
            raise path_error("cannot read", exc.filename, exc, then="wb would send the workspace without it")

        for folder, dirs, files in os.walk(root, onerror=unlistable):
            rel = Path(folder).relative_to(root)
            dirs[:] = [d for d in dirs if d not in FALLBACK_SKIP and not d.endswith(".egg-info")]
            listed += [str(rel / f) if str(rel) != "." else f for f in files]
    out = []
    for name in listed:
        if not name:
            continue
        parts = Path(name).parts
        if parts[0] in EXCLUDED_DIRS or EXCLUDED_PARTS.intersection(parts):
            continue
        if (root / name).is_file() or (root / name).is_symlink():
            out.append(name)
    return sorted(set(out))


def _sent_list(ws: Workspace, host: Host) -> Path:
    return ws.state_dir / "hosts" / f"{host.name}.sent"


def rsync_base(host: Host) -> list[str]:
    # -s (--secluded-args, once --protect-args): file names travel in rsync's protocol, not on
    # the remote command line, where sshd's shell would parse them.
    return ["rsync", "-a", "-s", "--compress", "-e", shlex.join(ssh_args(host))]


def rsync_remote(host: Host, path: str) -> str:
    """rsync's `target:path` argument; the path is a file name only (see rsync_base). A relative
    path gets './' so that it can start neither an option ('-') nor rsync's daemon syntax ('::')."""
    return f"{host.ssh}:{path if path.startswith('/') else './' + path}"


def sync(ws: Workspace, host: Host, timeout: float = 600.0) -> dict:
    """Send the workspace to the host. Files removed here since the last sync are removed there.

    Returns {"files": N, "deleted": M, "seconds": S}. Raises UserError when it fails."""
    start = time.perf_counter()
    files = workspace_files(ws.root)
    sent_path = _sent_list(ws, host)
    try:
        before = set(sent_path.read_text().split("\0")) - {""}
    except OSError:
        before = set()
    gone = sorted(name for name in before - set(files) if not (ws.root / name).exists())
    listing = "\0".join(files + gone).encode(errors="surrogateescape") + b"\0"
    path = host.remote_path
    cmd = [
        *rsync_base(host), "--files-from=-", "--from0", "--delete-missing-args",
        f"--rsync-path=mkdir -p -- {shell_path(path)} && rsync",  # shell text on the host
        "./", rsync_remote(host, f"{path}/"),
    ]
    try:
        done = subprocess.run(cmd, cwd=ws.root, input=listing, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError("rsync is not installed on this machine (Debian: apt-get install rsync)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"host {host.name}: sending the workspace took over {timeout:g} s") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace")
        if "rsync: command not found" in err or "rsync: not found" in err:
            raise UserError(f"host {host.name}: rsync is missing on the host (install it there): {first_cause(err)}")
        if done.returncode == 255 or err.lstrip().startswith("ssh:") or "Permission denied (publickey" in err:
            raise UserError(f"host {host.name} unreachable ({host.describe()}): {first_cause(err) or 'ssh failed'}")
        raise UserError(f"host {host.name}: sending the workspace failed (rsync exit {done.returncode}): {first_cause(err)}")

    atomic_write_text(sent_path, "\0".join(files))
    return {"files": len(files), "deleted": len(gone), "seconds": time.perf_counter() - start}


def fetch_dir(host: Host, remote_dir: str, local_dir: Path, exclude: Iterable[str] = (), timeout: float = 600.0) -> None:
    """Copy the remote folder's contents (relative to the remote workspace) into local_dir."""
    local_dir.mkdir(parents=True, exist_ok=True)
    path = host.remote_path.rstrip("/")
    cmd = [*rsync_base(host), *(f"--exclude={e}" for e in exclude), rsync_remote(host, f"{path}/{remote_dir.strip('/')}/"), f"{local_dir}/"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError("rsync is not installed on this machine (Debian: apt-get install rsync)") from None
    except subprocess.TimeoutExpired:
        raise OSError(f"fetching {remote_dir} took over {timeout:g} s") from None
    if done.returncode != 0:
        raise OSError(f"rsync exit {done.returncode}: {last_line(done.stderr.decode(errors='replace'))}")
