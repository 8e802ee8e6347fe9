"""`python -m fulmen` is the same as the `fulmen` command."""

import sys

from fulmen.cli import main

if __name__ == "__main__":
    sys.exit(main())
