"""A throw-away OpenSSH server on 127.0.0.1 for wb's remote tests.

It uses its own port, host key, user key pair and config in a temporary folder; nothing in
/etc/ssh is read or changed, and it accepts only the generated key, only from 127.0.0.1,
only for the current user. (Run as root, sshd insists on its privilege-separation folder
/run/sshd existing; it is created when missing, as Debian's ssh service would.)

    python tests/remote/sshd.py /tmp/wb-sshd     # start one by hand; prints a hosts: entry
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def sshd_binary() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None)


def missing_tools() -> list[str]:
    """What the remote tests need and this machine lacks."""
    missing = []
    if sshd_binary() is None:
        missing.append("sshd (apt-get install openssh-server)")
    for tool, package in (("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"), ("rsync", "rsync")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    folder: Path
    port: int
    user: str
    identity: Path
    known_hosts: Path
    process: subprocess.Popen

    def host_entry(self, name: str, path: str, python: str | None = None, **extra) -> dict:
        """A wb.yaml `hosts:` entry that reaches this server."""
        entry = {
            "name": name,
            "ssh": f"{self.user}@127.0.0.1",
            "port": self.port,
            "identity": str(self.identity),
            "ssh_options": {"StrictHostKeyChecking": "yes", "UserKnownHostsFile": str(self.known_hosts)},
            "path": path,
            "python": python or sys.executable,
        }
        entry.update(extra)
        return entry

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start(folder: Path, port: int | None = None) -> Sshd:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    port = port or free_port()
    user = _user()
    for name in ("host_key", "user_key"):
        for path in (folder / name, folder / f"{name}.pub"):
            if path.exists():
                path.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"wb-test-{name}", "-f", str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    host_pub = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = folder / "sshd_config"
    config.write_text(
        "\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {folder / 'host_key'}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {user}",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PermitTTY no",
            "LogLevel ERROR",
            "",
        ])
    )
    sshd = sshd_binary()
    if sshd is None:
        raise RuntimeError("sshd is not installed (apt-get install openssh-server)")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = open(folder / "sshd.log", "ab")
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited at start: {(folder / 'sshd.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("sshd did not listen within 20 s")
    server = Sshd(folder, port, user, folder / "user_key", folder / "known_hosts", process)
    # Prove a login works before any test relies on it.
    probe = subprocess.run(
        ["ssh", "-p", str(port), "-i", str(server.identity), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
         f"{user}@127.0.0.1", "echo wb-ssh-ok"],
        capture_output=True, text=True, timeout=30,
    )
    if "wb-ssh-ok" not in probe.stdout:
        server.stop()
        raise RuntimeError(f"cannot log in to the test sshd: {probe.stderr.strip()} {(folder / 'sshd.log').read_text()[-1000:]}")
    return server


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


if __name__ == "__main__":
    import json

    where = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/wb-sshd")
    server = start(where)
    print(json.dumps(server.host_entry("loop", str(where / "remote-ws")), indent=2))
    print(f"sshd pid {server.process.pid} on 127.0.0.1:{server.port}; Ctrl-C stops it", file=sys.stderr)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
