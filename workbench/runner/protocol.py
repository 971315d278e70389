"""Messages between supervisor and worker: one JSON object per line over a Unix socket.

supervisor -> worker: {"op": "run" | "ping" | "exit", ...job fields}
worker -> supervisor: {"type": "progress", "phase": ..., ...}
                      {"type": "result", "result": {...}}      (last message of a job)
                      {"type": "user_error", "message": "..."}  (bad job: nothing ran)
                      {"type": "pong", "pid": ...}
"""

from __future__ import annotations

import json
import socket
from typing import Any, Iterator


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
