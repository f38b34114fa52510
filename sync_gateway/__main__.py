"""``python -m sync_gateway`` is the ``sync-gateway`` command (see :mod:`sync_gateway.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
