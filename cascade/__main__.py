"""`python -m cascade ...` is the `cascade` command."""

import sys

from .cli import main

if __name__ == "__main__":  # not in the processes multiprocessing spawns (they import this module)
    sys.exit(main())
