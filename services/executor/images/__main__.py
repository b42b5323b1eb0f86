"""``python -m services.executor.images ...``: see services/executor/images/cli.py."""

from __future__ import annotations

import sys

from services.executor.images.cli import main

if __name__ == "__main__":
    sys.exit(main())
