"""``python -m lowcomm``: the ``lowcomm`` command line."""

import sys

from lowcomm.cli import main

if __name__ == "__main__":
    sys.exit(main())
