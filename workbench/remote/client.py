"""Running wb on a remote GPU host: `wb run STAGE --host NAME` and the helper other commands use.

One remote run:
  1. note the LOCAL git commit, dirty flag, diff hash and stage source hashes (what is sent);
  2. rsync the workspace to the host (`git ls-files -co --exclude-standard`; never runs/,
     .wb/ or caches; files deleted here since the last sync are deleted there);
  3. allocate the local run id (runs/<id>/), then over ssh, in the remote workspace, after the
     host's setup line: `python -m workbench.remote.agent -- run STAGE ... --json`;
     progress arrives as `wb-event` lines on stderr and is shown as it comes;
  4. the remote record (stdout) and the remote run folder's other files (rsync) come back into
     the local runs/<id>/: the LOCAL id, with the remote id, host and path under "remote",
     "host_name" set to the host's name, provenance's git fields replaced by the local ones
     (provenance.host stays the machine that ran it, provenance.remote_git keeps the remote's),
     and remote paths inside the record rewritten to local ones;
  5. report.md, the stage report and MEMORY.md are written locally, as for a local run.

If the session is lost (ssh exits 255, the remote wb dies, or nothing comes back in time),
the local record says LOST, with the remote id when it was announced, the last progress seen
and the tail of the remote output. Nothing else local is touched, and re-running works: the
next run syncs again and, when the host's warm worker is wedged, starts a fresh one there.

Other commands (wb shapes, wb bench, wb ps, wb kill) use `run_wb_json(ws, host, argv)`: sync
(optional), run `wb ARGV --json` there, return the parsed JSON; records they make remotely come
back with `import_remote_run(...)`.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from workbench import __version__, settings, terminal
from workbench.errors import UserError
from workbench.records.provenance import file_hashes, git_state
from workbench.records.publish import commit
from workbench.records.store import ensure_runs_dir, new_record, new_run_dir, utc_now
from workbench.remote import transport
from workbench.remote.hosts import Host, get_host
from workbench.text import json_or_none
from workbench.schemas import check
from workbench.workspace import Workspace

EVENT_PREFIX = "wb-event "
AGENT_PREFIX = "wb-agent "
START_SLACK = 180.0  # seconds beyond the stage timeout before a silent session counts as lost
_relayed: set[tuple[str, str]] = set()
_sessions: set[subprocess.Popen] = set()  # live ssh sessions of this process (for cancel_all)
_sessions_lock = threading.Lock()


def cancel_all() -> None:
    """Ask every live remote session of this process to stop (wb sweep on Ctrl-C): closing
    ssh's stdin makes the remote agent interrupt its wb, which records INTERRUPTED."""
    with _sessions_lock:
        sessions = list(_sessions)
    for proc in sessions:
        try:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
        except OSError:
            pass


@dataclass
class RemoteResult:
    """What came back from one remote wb command."""

    returncode: int | None
    stdout: str = ""
    stderr_lines: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    agent: dict[str, Any] | None = None
    lost: str | None = None  # why the session ended without an answer
    interrupted: bool = False
    seconds: float = 0.0

    def stderr_tail(self, n: int = 30) -> str:
        return "\n".join(self.stderr_lines[-n:])

    def error_line(self) -> str | None:
        """The remote wb's one-line error (`wb: error: ...`), if it printed one."""
        for line in reversed(self.stderr_lines):
            if line.startswith("wb: error: "):
                return line[len("wb: error: "):]
        return None

    def json(self) -> Any:
        text = self.stdout.strip()
        if not text:
            return None
        data = json_or_none(text)
        if data is None:
            start = text.find("{") if "{" in text else text.find("[")
            return json_or_none(text[start:]) if start >= 0 else None
        return data


def _reader(stream, tag: str, out: "queue.Queue") -> None:
    try:
        for raw in iter(stream.readline, b""):
            out.put((tag, raw))
    except (OSError, ValueError):
        pass
    finally:
        out.put((tag, None))


def invoke(
    host: Host,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    on_event: Callable[[dict], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    on_stdout: Callable[[str], None] | None = None,
    deadline_s: float | None = None,
) -> RemoteResult:
    """Run `wb ARGV` in the host's workspace through the agent, streaming progress.

    Never raises for what happens remotely: a lost session comes back as `lost`."""
    start = time.monotonic()
    proc = transport.ssh_popen(host, transport.wb_script(host, argv, env))
    with _sessions_lock:
        _sessions.add(proc)
    try:
        return _follow(proc, host, on_event, on_line, on_stdout, deadline_s, start)
    except BaseException:  # a callback that raised: the session must not outlive this call
        _end(proc)
        raise
    finally:
        with _sessions_lock:
            _sessions.discard(proc)


def _follow(proc, host, on_event, on_line, on_stdout, deadline_s, start) -> RemoteResult:
    lines: queue.Queue = queue.Queue()
    threads = [
        threading.Thread(target=_reader, args=(proc.stdout, "out", lines), daemon=True),
        threading.Thread(target=_reader, args=(proc.stderr, "err", lines), daemon=True),
    ]
    for t in threads:
        t.start()
    result = RemoteResult(returncode=None)
    stdout: list[bytes] = []
    open_streams = 2
    stop_asked_at = None
    try:
        while open_streams:
            try:
                tag, raw = lines.get(timeout=0.25)
            except queue.Empty:
                if deadline_s is not None and time.monotonic() - start > deadline_s and result.lost is None:
                    result.lost = f"no answer from host {host.name} within {deadline_s:.0f} s"
                    _end(proc)
                if stop_asked_at is not None and time.monotonic() - stop_asked_at > _agent_grace() + 10:
                    _end(proc)
                continue
            if raw is None:
                open_streams -= 1
                continue
            if tag == "out":
                stdout.append(raw)
                if on_stdout:
                    on_stdout(raw.decode(errors="replace"))
                continue
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith(EVENT_PREFIX):
                event = json_or_none(line[len(EVENT_PREFIX):])
                if isinstance(event, dict) and isinstance(event.get("phase"), str):  # what wb's events are; else a line
                    result.events.append(event)
                    if on_event:
                        on_event(event)
                    continue
            if line.startswith(AGENT_PREFIX):
                agent = json_or_none(line[len(AGENT_PREFIX):])
                if isinstance(agent, dict):  # {"pid", "agent", "cwd"}; else a line
                    if not isinstance(agent.get("cwd"), str):
                        agent.pop("cwd", None)  # the remote paths rewritten in its record: text or nothing
                    result.agent = agent
                    continue
            result.stderr_lines.append(line)
            if on_line and line.strip():
                on_line(line)
    except KeyboardInterrupt:
        result.interrupted = True
        # Closing stdin makes the agent SIGINT the remote wb, which records INTERRUPTED and
        # prints its record; a second Ctrl-C ends the session at once.
        try:
            if proc.stdin:
                proc.stdin.close()
            stop_asked_at = time.monotonic()
            while proc.poll() is None and time.monotonic() - stop_asked_at < _agent_grace() + 10:
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        _end(proc)
        for t in threads:
            t.join(timeout=2)
        while not lines.empty():
            tag, raw = lines.get_nowait()
            if tag == "out" and raw:
                stdout.append(raw)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _end(proc)
    try:
        if proc.stdin:
            proc.stdin.close()
    except OSError:
        pass
    result.returncode = proc.returncode
    result.stdout = b"".join(stdout).decode(errors="replace")
    result.seconds = time.monotonic() - start
    if result.lost is None and not result.interrupted and result.returncode == 255:
        result.lost = "ssh connection lost: " + (transport.last_line("\n".join(result.stderr_lines)) or "ssh exited 255")
    return result


def _agent_grace() -> float:
    return settings.agent_grace()


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _raise_if_unusable(host: Host, res: RemoteResult) -> None:
    """Turn failures that happen before the remote wb runs into one-line UserErrors."""
    text = "\n".join(res.stderr_lines)
    if res.returncode == transport.EXIT_NO_WORKSPACE:
        raise UserError(transport.last_line(text) or f"host {host.name}: remote workspace missing")
    if res.returncode == transport.EXIT_SETUP_FAILED:
        raise UserError(f"host {host.name}: {transport.last_line(text)}")
    if res.returncode == 127:
        raise UserError(f"host {host.name}: python command {host.python!r} not found there: {transport.last_line(text)}")
    if "No module named" in text and ("workbench" in text) and res.agent is None:
        raise UserError(
            f"host {host.name}: wb is not importable by {host.python} there ({transport.last_line(text)}); "
            "`wb hosts` checks it"
        )
    if res.returncode == 255 and res.agent is None and not res.events:
        raise UserError(f"host {host.name} unreachable ({host.describe()}): {transport.last_line(text) or 'ssh failed'}")


def run_wb_json(
    ws: Workspace,
    host: str | Host,
    argv: list[str],
    *,
    sync: bool = True,
    show: bool = True,
    env: dict[str, str] | None = None,
    deadline_s: float | None = 3600.0,
) -> Any:
    """The generic remote invocation for wb commands: `wb ARGV --json` on the host; returns
    its parsed JSON. Remote warnings and errors are shown; a remote error becomes a UserError.

    Use it to give a command --host (e.g. in cli/bench.py):
        if host: data = run_wb_json(ws, host, ["bench", stage, *args]); render(data); return
    """

    host = host if isinstance(host, Host) else get_host(ws, host)
    if sync:
        transport.sync(ws, host)
    args = list(argv) + ([] if "--json" in argv else ["--json"])
    res = invoke(
        host, args, env=env, deadline_s=deadline_s,
        on_line=_shower(host) if show else None,
    )
    _raise_if_unusable(host, res)
    if res.lost:
        raise UserError(f"host {host.name}: {res.lost}")
    data = res.json()
    if data is None:
        if res.error_line():
            raise UserError(f"host {host.name}: {res.error_line()}")
        why = transport.last_line(res.stderr_tail()) or f"exit {res.returncode}"
        raise UserError(f"host {host.name}: wb {' '.join(argv[:1])} failed: {why}")
    return data


def _shower(host: Host) -> Callable[[str], None]:
    """Show the remote's stderr lines here, except its final error (raised as ours) and ssh's
    own complaints (`ssh: connect to host … refused`: the unreachable error quotes them)."""
    def show(line: str) -> None:
        if not line.startswith(("wb: error: ", "ssh: ")):
            terminal.err_console.print(f"[dim]{host.name}:[/] {terminal.escape(line)}")

    return show


def forward_argv(argv: list[str]) -> list[str]:
    """This wb command line, as the remote wb should get it: without --host and --workspace."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--host", "--workspace", "-w"):
            skip = True
            continue
        if arg.startswith(("--host=", "--workspace=")):
            continue
        out.append(arg)
    return out


def passthrough(ws: Workspace, host: str | Host, argv: list[str], sync: bool = True) -> int:
    """Run this wb command on the host as it is, its output streamed here; returns its exit code.

    The simplest way to give a command --host: `if host: raise typer.Exit(passthrough(ws, host, state.argv))`.
    Output is rendered there (plain text); records it writes stay on the host."""
    import sys

    host = host if isinstance(host, Host) else get_host(ws, host)
    if sync:
        transport.sync(ws, host)
    res = invoke(
        host, forward_argv(argv),
        on_line=lambda line: print(line, file=sys.stderr, flush=True),
        on_stdout=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
    )
    _raise_if_unusable(host, res)
    if res.lost:
        raise UserError(f"host {host.name}: {res.lost}")
    return res.returncode if res.returncode is not None else 1


def run_and_import(
    ws: Workspace, host: str | Host, argv: list[str], spec=None,
    publish: Callable[[Workspace, dict], None] | None = None, show: bool = True, deadline_s: float | None = 7200.0,
) -> dict[str, Any]:
    """For a command that writes one run record and prints it with --json (e.g. `wb bench`):
    run it on the host and bring the record into the local runs/ like `wb run --host` does
    (new local id, remote id under "remote", local git provenance); then `publish(ws, record)`."""
    host = host if isinstance(host, Host) else get_host(ws, host)
    ensure_runs_dir(ws.runs_dir)  # where the record comes back to: checked before the host works
    local_git = git_state(ws.root)
    sources = file_hashes(spec.source_files(), ws.root) if spec is not None else {}
    sync_info = transport.sync(ws, host)
    args = forward_argv(argv)
    args += [] if "--json" in args else ["--json"]
    wall = time.perf_counter()
    res = invoke(
        host, args, deadline_s=deadline_s,
        on_line=_shower(host) if show else None,
    )
    _raise_if_unusable(host, res)
    data = res.json()
    if not (isinstance(data, dict) and "verdict" in data and data.get("id")):
        if res.lost:
            raise UserError(f"host {host.name}: {res.lost}")
        if res.error_line():
            raise UserError(f"host {host.name}: {res.error_line()}")
        raise UserError(f"host {host.name}: wb {args[0]} failed: {transport.last_line(res.stderr_tail()) or f'exit {res.returncode}'}")
    _check_remote_record(host, data)
    run_dir = new_run_dir(ws.runs_dir)
    remote = {"host": host.name, "target": host.ssh, "port": host.port, "path": host.path, "id": data["id"],
              "cwd": (res.agent or {}).get("cwd"), "sync": sync_info, "wall_s": time.perf_counter() - wall}
    record = import_record(ws, host, data, run_dir, local_git, sources or (data.get("provenance") or {}).get("sources") or {}, remote, res)
    return commit(ws, run_dir, record, publish=publish)


# ----------------------------------------------------------------------------- wb run --host


def stage_argv(spec, params, variants, fixtures, seed, seeds, timeout, arch) -> list[str]:
    """The `wb run` command line that reproduces a resolved run on another machine."""
    argv = ["run", spec.id]
    for key, value in params.items():
        argv += ["-p", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    for key, value in variants.items():
        argv += ["-V", f"{key}={value}"]
    for name in fixtures or []:
        argv += ["--fixture", name]
    argv += ["--seed", str(seed)]
    if seeds is not None:
        argv += ["--seeds", str(seeds)]
    if timeout is not None:
        argv += ["--timeout", f"{timeout:g}"]
    if arch:
        argv += ["--arch", arch]
    return argv + ["--json"]


def run_remote(
    ws: Workspace,
    host: str | Host,
    spec,
    params: dict[str, Any],
    variants: dict[str, str],
    fixtures: list[str] | None = None,
    seed: int = 0,
    seeds: int | None = None,
    timeout: float | None = None,
    arch: str | None = None,
    show: bool = True,
    *,
    env: dict[str, str] | None = None,
    sync: bool = True,
    on_event: Callable[[dict], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`wb run` on a remote host; returns the local record (written, published)."""
    host = host if isinstance(host, Host) else get_host(ws, host)
    fixtures = list(fixtures or [])
    started = utc_now()
    wall = time.perf_counter()
    ensure_runs_dir(ws.runs_dir)  # where the record comes back to: checked before the sync
    local_git = git_state(ws.root)
    sources = file_hashes(spec.source_files(), ws.root)
    sync_info = None
    if sync:
        sync_info = transport.sync(ws, host)
        if show:
            terminal.err_console.print(
                f"[dim]synced {sync_info['files']} files to {terminal.escape(host.describe())} in {sync_info['seconds']:.1f} s[/]"
            )
    run_dir = new_run_dir(ws.runs_dir)
    stage_timeout = timeout or spec.timeout
    argv = stage_argv(spec, params, variants, fixtures, seed, seeds, timeout, arch)

    show_event = on_event or (lambda e: None)

    def line(text: str) -> None:
        if show and not text.startswith("wb: error: "):
            terminal.err_console.print(f"[dim]{host.name}:[/] {terminal.escape(text)}")
        elif text.startswith("wb: warning: ") and (host.name, text) not in _relayed:
            _relayed.add((host.name, text))  # warnings reach stderr even under --json, once
            terminal.warn(f"on host {host.name}: {text[len('wb: warning: '):]}")

    try:
        res = invoke(host, argv, env=env, on_event=show_event, on_line=line, deadline_s=stage_timeout + START_SLACK)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    try:
        _raise_if_unusable(host, res)
    except UserError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    remote_record = res.json()
    if isinstance(remote_record, dict) and "verdict" in remote_record:
        try:
            _check_remote_record(host, remote_record)
        except UserError:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
    else:
        remote_record = None
        if res.returncode == 2 and res.error_line() and not res.lost:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise UserError(f"host {host.name}: {res.error_line()}")
    base = {
        "host": host.name, "target": host.ssh, "port": host.port, "path": host.path,
        "id": (remote_record or {}).get("id") or _announced_id(res),
        "cwd": (res.agent or {}).get("cwd"),
        "env": env or {},
        "sync": sync_info,
        "wall_s": time.perf_counter() - wall,
    }
    if remote_record is not None:
        record = import_record(ws, host, remote_record, run_dir, local_git, sources, base, res)
    else:
        record = lost_record(spec, params, variants, fixtures, seed, host, local_git, sources, base, res, started, stage_timeout)
    record.update(extra or {})
    _write(ws, run_dir, record)
    return record


def _check_remote_record(host: Host, data: dict) -> None:
    """The remote wb's record is an input like any run.json: its id names a remote folder
    that is fetched, its fields reach MEMORY.md."""
    from workbench.schemas.run_record import RunRecord  # lazy: pydantic loads when a file is read, not at start-up

    check(RunRecord, data, f"host {host.name}: the remote run record")


def _announced_id(res: RemoteResult) -> str | None:
    for event in res.events:
        if event.get("phase") == "start" and isinstance(event.get("run_id"), str) and event["run_id"]:
            return event["run_id"]
    return None


def _rewrite_paths(value: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in pairs:
            if old and old in value:
                value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_rewrite_paths(v, pairs) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite_paths(v, pairs) for k, v in value.items()}
    return value


def import_record(
    ws: Workspace, host: Host, remote_record: dict, run_dir: Path, local_git: dict, sources: dict, remote: dict,
    res: RemoteResult | None = None,
) -> dict[str, Any]:
    """Map a remote run record onto the local run folder `run_dir` (see the module doc)."""
    rid = remote_record.get("id")
    record = {k: v for k, v in remote_record.items() if not k.startswith("_") and k not in ("id", "schema")}
    cwd = remote.get("cwd")
    if rid:
        t0 = time.perf_counter()
        try:
            transport.fetch_dir(host, f"runs/{rid}", run_dir, exclude=("run.json", "report.md"))
            remote["files"] = sorted(p.name for p in run_dir.iterdir() if p.name not in ("run.json", "report.md"))
        except OSError as exc:
            remote["files_error"] = f"files of remote run {rid} not fetched: {exc}"
        remote["fetch_s"] = time.perf_counter() - t0
    if cwd:
        pairs = [(f"{cwd.rstrip('/')}/runs/{rid}", str(run_dir)), (cwd.rstrip("/"), str(ws.root))] if rid else [(cwd.rstrip("/"), str(ws.root))]
        record = _rewrite_paths(record, pairs)
    prov = dict(record.get("provenance") or {})
    prov["remote_git"] = {k: prov.get(k) for k in ("commit", "dirty", "diff_hash")}
    prov["remote_sources"] = prov.get("sources")
    prov.update(local_git)
    prov["sources"] = sources
    record["provenance"] = prov
    record["host_name"] = host.name
    record["remote"] = remote
    timing = dict(record.get("timing") or {})
    timing["remote_total_s"] = timing.get("total_s")
    timing["local_wall_s"] = remote.get("wall_s")
    record["timing"] = timing
    return record


def lost_record(spec, params, variants, fixtures, seed, host, local_git, sources, remote, res, started, timeout) -> dict[str, Any]:
    """The record of a remote run whose answer never came back."""
    if res.interrupted:
        why = "interrupted (Ctrl-C or SIGTERM) before the remote run answered"
    elif res.lost:
        why = res.lost
    elif res.returncode is not None and res.returncode != 0:
        why = f"the remote wb exited with code {res.returncode} before reporting"
    else:
        why = "the remote wb gave no record"
    phases = [e for e in res.events if e.get("phase") and e.get("phase") != "start"]
    last = phases[-1] if phases else None
    seen = ""
    if last:
        seen = f"; last progress: {last.get('phase')}" + (f" {last.get('fixture')}" if last.get("fixture") else "")
    rid = remote.get("id")
    where = f"; the remote run id was {rid} (its record, if it finished, is in {host.name}:{host.path}/runs/{rid})" if rid else ""
    return new_record(
        "run", spec, params, variants, "LOST",
        fixtures_requested=fixtures or spec.fixtures,
        seed=seed,
        error={"message": f"lost contact with host {host.name}: {why}{seen}{where}", "log": res.stderr_tail(40)},
        timing={"total_s": remote.get("wall_s"), "timeout_s": timeout, "local_wall_s": remote.get("wall_s")},
        provenance={**local_git, "sources": sources, "wb": __version__, "host": None, "arch": None, "gpu": None},
        host_name=host.name,
        remote={**remote, "events": res.events[-20:], "returncode": res.returncode},
        started=started,
        finished=utc_now(),
    )


def _write(ws: Workspace, run_dir: Path, record: dict[str, Any]) -> None:
    commit(ws, run_dir, record)
