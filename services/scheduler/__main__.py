"""``zoe-scheduler`` / ``python -m services.scheduler``."""

from __future__ import annotations

import sys

from common.lifecycle import run
from common.settings import SchedulerSettings
from services.scheduler import collector
from services.scheduler.service import serve


def main() -> None:
    """Start the scheduler with settings from ``ZOE_*`` variables."""
    collector.install()
    sys.exit(run("scheduler", SchedulerSettings.from_env(), serve))


if __name__ == "__main__":
    main()
