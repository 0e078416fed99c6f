"""Shared CLI plumbing: user mistakes become one-line errors, not tracebacks."""
from __future__ import annotations

import os
import sys

# tools/ are run as scripts from a checkout; make the package importable without installing
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seg_ssl.config import ConfigError  # noqa: E402
from seg_ssl.data.dataset import DataError  # noqa: E402

USER_ERRORS = (ConfigError, DataError, FileNotFoundError, FloatingPointError)


def run_cli(main) -> None:
    try:
        code = main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
