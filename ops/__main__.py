"""`python -m ops COMMAND ...`: the same as the `vramguard` console script."""

from __future__ import annotations

import sys

from ops import main

if __name__ == "__main__":
    sys.exit(main())
