"""``python -m tucker_attention ...``: see :mod:`tucker_attention.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m tucker_attention"))
