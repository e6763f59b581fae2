"""``python -m fastcvrl.eval``: evaluate a pretrained backbone (see ``fastcvrl.eval.evaluate``)."""
import sys

from fastcvrl.config import ConfigError
from fastcvrl.eval.evaluate import EvalError, main

try:
    main()
except (EvalError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)
