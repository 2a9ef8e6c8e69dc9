"""``python -m birefnet_core.bulk``: see birefnet_core/bulk/command.py."""
import sys

from .command import main

sys.exit(main())
