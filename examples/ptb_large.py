"""Reproduce the paper's large regularized model (Table 1: valid 82.2, test 78.4).

    python examples/ptb_large.py --device gpu [--data-dir DIR] [--out RUN_DIR] [--resume]

The same script as ptb_small.py (read that one for the walk-through), with the
large preset of the paper's section 4.1. On a 2-core CPU with OpenBLAS on the
CPU's own kernel it trains at ~790 words/s: ~20 min an epoch, ~19 h for the 55
epochs, so run it with ``--save-every 200`` and resume it with ``--resume``.
"""

import sys

from ptb_small import run

from zaremba_ref.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(lambda: run("large", sys.argv[1:])))
