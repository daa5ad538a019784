"""`python -m cascade ...` is the `cascade` command."""

import sys

from .cli import main

sys.exit(main())
