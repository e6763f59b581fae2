"""``python -m fastcvrl.eval``: evaluate a pretrained backbone (see ``fastcvrl.eval.evaluate``).

``cli`` is also the ``fastcvrl-eval`` console script: a known failure is one line on stderr and exit 2."""

import sys

from fastcvrl.config import ConfigError
from fastcvrl.eval.evaluate import EvalError, main


def cli(argv: list[str] | None = None) -> int:
    """``main`` with a bad argument, config or input turned into one line and exit status 2; 0 when done."""
    try:
        main(argv)
    except (EvalError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
