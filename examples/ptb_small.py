"""Reproduce the paper's small, non-regularized model (Table 1: valid 120.7, test 114.5).

    python examples/ptb_small.py --device cpu [--data-dir DIR] [--out RUN_DIR] [--resume]

Every option of ``python -m zaremba_ref train`` works here (``--help`` lists them).
The three steps, each in its own module of the package:

1. data   -- zaremba_ref/data.py:  PTB as word ids, laid out in batch_size streams
2. model  -- zaremba_ref/model.py: embedding -> D -> L LSTM layers -> D -> softmax,
             with its backward pass through time written out (lstm.py, loss.py)
3. loop   -- zaremba_ref/train.py: for each window, loss_and_grads -> clip -> SGD;
             validate after each epoch, test at the end; checkpoints and resume
"""

import sys

from zaremba_ref.backend import get_backend
from zaremba_ref.cli import build_parser, config_from_args, exit_code, run_cli
from zaremba_ref.data import load_ptb
from zaremba_ref.train import train


def run(preset: str, argv: list[str]) -> int:
    """Train ``preset`` (small, medium, large) with the command-line options ``argv``."""
    args = build_parser().parse_args(["train", "--config", preset, *argv])
    config = config_from_args(args)                    # the paper's section 4.1 values
    backend = get_backend(args.device)                 # NumPy, or CuPy with fused kernels
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)      # 1. data
    summary = train(config, corpus, args.out or f"runs/{preset}",         # 2. model, 3. loop
                    backend=backend, dtype=args.dtype, seed=args.seed, resume=args.resume,
                    max_steps=args.max_steps, save_every=args.save_every)
    print(f"{preset}: valid ppl {summary.get('valid_ppl')}, test ppl {summary.get('test_ppl')}")
    return exit_code(summary)                          # 130/143 if stopped by a signal


if __name__ == "__main__":
    sys.exit(run_cli(lambda: run("small", sys.argv[1:])))
