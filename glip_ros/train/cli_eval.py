"""``python -m glip_ros.train.cli_eval`` = ``glip-eval`` (for machines where the package is not installed)."""

import sys

from .cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
