"""``python -m avbalance.data.prepare <dataset> --root RAW --out CACHE``: same as ``avbalance prepare``."""

import sys

from ...prepare_cli import main

if __name__ == "__main__":
    sys.exit(main())
