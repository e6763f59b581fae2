"""Stable command: ``python -m fastcvrl.synthetic``. The code lives in ``fastcvrl.datasets.synthetic``."""

import sys

from fastcvrl.datasets.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
