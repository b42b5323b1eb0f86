"""``zoe-executor`` / ``python -m services.executor``: one executor per Docker host."""

from __future__ import annotations

import sys

from common import lifecycle
from common.settings import ExecutorSettings
from services.executor.service import serve


def main() -> None:
    """Run the executor of this node until SIGTERM or SIGINT."""
    sys.exit(lifecycle.run("executor", ExecutorSettings.from_env(), serve))


if __name__ == "__main__":
    main()
