"""``python -m backend``: the whole service in one command (see :mod:`backend.embedded`)."""

from __future__ import annotations

import logging
import sys

from backend.embedded import run
from backend.settings import Settings, SettingsError


def main() -> int:
    """Read settings, run the stack, return its exit status."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
