"""Reproduce the paper's medium regularized model (Table 1: valid 86.2, test 82.7).

    python examples/ptb_medium.py --device gpu [--data-dir DIR] [--out RUN_DIR] [--resume]

The same script as ptb_small.py (read that one for the walk-through), with the
medium preset of the paper's section 4.1. On a CPU it runs, but takes
about 6.5 hours on a 2-core CPU (~1,560 words/s): we measured valid 87.13, test 83.07
there (README, Table 1), carried across interruptions with ``--save-every 200`` and
``--resume``.
"""

import sys

from ptb_small import run

from zaremba_ref.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda: run("medium", sys.argv[1:])))
