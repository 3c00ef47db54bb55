"""`python -m extender.cli COMMAND ...`: the same as the `vramguard` console script."""

from __future__ import annotations

import sys

from extender.cli import main

if __name__ == "__main__":
    sys.exit(main())
