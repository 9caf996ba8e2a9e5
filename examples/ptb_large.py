"""Reproduce the paper's large regularized model (Table 1: valid 82.2, test 78.4).

    python examples/ptb_large.py --device gpu [--data-dir DIR] [--out RUN_DIR] [--resume]

The same script as ptb_small.py (read that one for the walk-through), with the
large preset of the paper's section 4.1. On a CPU it runs, but takes
about two days on a 2-core CPU (~280 words/s).
"""

import sys

from ptb_small import run

from zaremba_ref.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda: run("large", sys.argv[1:])))
