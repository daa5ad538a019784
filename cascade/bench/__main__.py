"""`python -m cascade.bench ...` is `cascade bench ...`."""

import sys

from .cli import main

sys.exit(main())
