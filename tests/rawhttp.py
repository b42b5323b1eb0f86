"""HTTP/1.1 over a plain socket, for requests no client library would send: any bytes in
the request line and the headers, bodies in any charset, and responses read only as far
as their head (a stream is left unread)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    """A response: its status, headers (lower-case names) and the body read."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_json(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/json")


def request(
    port: int,
    method: str,
    target: bytes | str,
    body: bytes | None = None,
    headers: dict[str, bytes | str] | None = None,
    *,
    timeout: float = 30.0,
) -> Answer:
    """Send one request (``Connection: close``) and read the answer; a streamed answer
    (no Content-Length) is read only up to its head."""
    target_b = target.encode() if isinstance(target, str) else target
    lines = [method.encode() + b" " + target_b + b" HTTP/1.1", b"Host: 127.0.0.1"]
    all_headers: dict[str, bytes | str] = {"Connection": "close"}
    if body is not None:
        all_headers["Content-Length"] = str(len(body))
        all_headers.setdefault("Content-Type", "application/json")
    all_headers.update(headers or {})
    for name, value in all_headers.items():
        lines.append(name.encode() + b": " + (value.encode() if isinstance(value, str) else value))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        length = answer_headers.get("content-length")
        if length is not None:
            while len(rest) < int(length):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
    return Answer(int(status_line.split(" ")[1]), answer_headers, rest)
