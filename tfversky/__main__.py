"""``python -m tfversky``: see ``tfversky.cli``."""

import sys

from tfversky.cli import main

if __name__ == "__main__":
    sys.exit(main())
