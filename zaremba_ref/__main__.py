"""``python -m zaremba_ref``: see ``zaremba_ref.cli``."""

import sys

from .cli import main

sys.exit(main())
