"""Reproduce the paper's medium regularized model (Table 1: valid 86.2, test 82.7).

    python examples/ptb_medium.py --device gpu [--data-dir DIR] [--out RUN_DIR] [--resume]

The same script as ptb_small.py (read that one for the walk-through), with the
medium preset of the paper's section 4.1. On a CPU it runs, but takes
about 7 hours on a 2-core CPU (1,600 words/s).
"""

import sys

from ptb_small import run

from zaremba_ref.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda: run("medium", sys.argv[1:])))
