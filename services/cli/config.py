"""Where the CLI finds its API and its token.

The token is, first found: ``ZOE_TOKEN``; the file ``ZOE_TOKEN_FILE`` names (such as
``var/secrets/admin.token`` that ``make up`` writes); the ``token`` that ``zoe login``
stored in ``$XDG_CONFIG_HOME/zoe/config`` (``~/.config/zoe/config``, mode 0600, JSON).
The API is ``ZOE_URL``, else the config's ``url``, else http://127.0.0.1:8080.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "zoe" / "config"


def stored() -> dict[str, Any]:
    """What ``zoe login`` stored ({} when nothing, or a file that is not a JSON object)."""
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def url() -> str:
    return os.environ.get("ZOE_URL") or str(stored().get("url") or DEFAULT_URL)


def token() -> str | None:
    if os.environ.get("ZOE_TOKEN"):
        return os.environ["ZOE_TOKEN"].strip()
    if os.environ.get("ZOE_TOKEN_FILE"):
        path = Path(os.environ["ZOE_TOKEN_FILE"])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SystemExit(f"zoe: cannot read ZOE_TOKEN_FILE {path}: {exc.strerror}") from None
    found = stored().get("token")
    return found if isinstance(found, str) else None


def store(api_url: str, secret: str | None) -> Path:
    """Write the config (mode 0600, the folder 0700); ``secret`` None forgets the token."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"url": api_url} | ({"token": secret} if secret is not None else {})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.chmod(path, 0o600)  # an older file may have had another mode
    return path
