"""``python -m birefnet_core``: see :mod:`birefnet_core.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
