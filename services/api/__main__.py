"""``zoe-api`` / ``python -m services.api``."""

from __future__ import annotations

import sys

from common.lifecycle import run
from common.settings import ApiSettings
from services.api.service import serve


def main() -> None:
    """Start the api with settings from ``ZOE_*`` variables."""
    sys.exit(run("api", ApiSettings.from_env(), serve))


if __name__ == "__main__":
    main()
