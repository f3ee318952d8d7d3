"""``python -m probing``: the same entry point as the ``probing`` console script."""

import sys

from probing.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
