"""`python -m sparseflow`: see sparseflow/cli.py."""

import sys

from .cli import main

sys.exit(main())
