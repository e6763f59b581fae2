"""Stable command: ``python -m fastcvrl.prepare``. The code lives in ``fastcvrl.datasets.prepare``."""

import sys

from fastcvrl.datasets.prepare import main

if __name__ == "__main__":
    sys.exit(main())
