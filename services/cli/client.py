"""A small synchronous client of the HTTP API (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ApiError(Exception):
    """The API refused a request, or could not be reached."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(self.describe())

    def describe(self) -> str:
        if isinstance(self.body, dict):
            lines = [str(self.body.get("error", "error"))]
            lines += [
                f"  {e['path']}: {e['message']}" if e.get("path") else f"  {e['message']}"
                for e in self.body.get("errors", [])
            ]
            return "\n".join(lines)
        return str(self.body)


class Client:
    """Calls ``/api/v1`` of the Zoe API at ``base_url``."""

    def __init__(self, base_url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.url = base_url.rstrip("/")
        self.base = self.url + "/api/v1"
        self.timeout = timeout
        self.token = token

    def call(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        """Send a request; returns the decoded JSON (or text when ``raw``)."""
        data = json.dumps(body).encode() if body is not None else None
        req = self.request(path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read().decode()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                raise ApiError(exc.code, json.loads(text)) from None
            except json.JSONDecodeError:
                raise ApiError(exc.code, text) from None
        except urllib.error.URLError as exc:
            raise ApiError(0, f"cannot reach the Zoe API at {self.base}: {exc.reason}") from None
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def request(
        self, path: str, *, data: bytes | None = None, method: str = "GET"
    ) -> urllib.request.Request:
        """A request of ``/api/v1`` + ``path`` with the caller's token."""
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        return req
