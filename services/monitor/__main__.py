"""``zoe-monitor`` / ``python -m services.monitor``."""

from __future__ import annotations

import sys

from common.lifecycle import run
from common.settings import MonitorSettings
from services.monitor.service import serve


def main() -> None:
    """Start the monitor with settings from ``ZOE_*`` variables."""
    sys.exit(run("monitor", MonitorSettings.from_env(), serve))


if __name__ == "__main__":
    main()
