"""Messages between supervisor and worker: one JSON object per line over a Unix socket.

supervisor -> worker: {"op": "run" | "ping" | "exit", ...job fields}
worker -> supervisor: {"type": "progress", "phase": ..., ...}
                      {"type": "result", "result": {...}}      (last message of a job)
                      {"type": "user_error", "message": "..."}  (bad job: nothing ran)
                      {"type": "pong", "pid": ..., "code": wb_code_version(), "home": folder_identity(cwd)}
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator


@lru_cache(maxsize=1)
def wb_code_version() -> str:
    """Hash of wb's own source: a warm worker started before wb was edited is not reused."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def folder_identity(path: str | Path) -> str:
    """device:inode of a folder: a workspace deleted and made again at the same path (a fresh
    clone) is another folder, whose warm worker must not be the old one (its cwd, Python and
    modules are gone)."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message, default=str).encode() + b"\n")


def receive(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """Yield messages until the peer closes the connection."""
    buffer = b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
