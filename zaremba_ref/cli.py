"""Command line: ``python -m zaremba_ref {train,evaluate,sample} ...``.

Every expected failure (missing data, a bad checksum, a corrupt or mismatched
checkpoint, a bad argument, no GPU) ends in one line on stderr and exit code 2
(1 for a training run that diverged), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from .backend import BackendUnavailable, get_backend
from .checkpoint import CheckpointError, load_checkpoint
from .config import HELP, PRESETS, Config
from .data import DataError, load_ptb

EXIT_SIGNAL = {2: 130, 15: 143}   # SIGINT, SIGTERM -> the shell's usual exit codes


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory with ptb.{train,valid,test}.txt (default: "
                        "$ZAREMBA_REF_DATA, else ~/.cache/zaremba_ref/ptb, downloaded "
                        "and checked by SHA-256 if missing)")
    p.add_argument("--no-verify-data", action="store_true",
                   help="skip the SHA-256 check of --data-dir (to train on another corpus "
                        "in PTB's format)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: NumPy; gpu: CuPy with fused kernels (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zaremba_ref",
        description="Zaremba, Sutskever & Vinyals (2014): LSTM language models on Penn "
                    "Treebank with dropout on the non-recurrent connections only.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (the paper's presets by default)",
                       description="Train on PTB. Each epoch: train, then validation "
                                   "perplexity; at the end, test perplexity. Checkpoints go "
                                   "to RUN_DIR/checkpoint.npz, metrics to RUN_DIR/metrics.jsonl.")
    t.add_argument("--config", choices=sorted(PRESETS), default="small",
                   help="the paper's section 4.1 preset to start from (default: small)")
    _add_data_args(t)
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float32 to train (default), float64 as an oracle")
    t.add_argument("--seed", type=int, default=0,
                   help="seeds the initial weights and the dropout masks (default: 0)")
    t.add_argument("--out", metavar="RUN_DIR",
                   help="run directory for checkpoints and metrics (default: runs/CONFIG)")
    t.add_argument("--max-steps", type=int, metavar="N",
                   help="stop after N training steps in all (smoke runs, benchmarks); a "
                        "checkpoint and metrics are still written")
    t.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoint.npz, bit-identical on CPU to an "
                        "uninterrupted run")
    t.add_argument("--save-every", type=int, default=1000, metavar="N",
                   help="also checkpoint every N steps (0: only at epoch ends and on "
                        "SIGINT/SIGTERM; default: 1000)")
    g = t.add_argument_group("overrides of the preset (the paper's values by default)")
    for f in fields(Config):
        g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                       metavar=f.name.upper(), help=HELP[f.name])

    e = sub.add_parser("evaluate", help="perplexity of saved models on valid/test",
                       description="Evaluate saved models the paper's way (one pass, state "
                                   "carried, no dropout).")
    e.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_CHECKPOINT")
    e.add_argument("--split", choices=("valid", "test", "both"), default="both")
    _add_data_args(e)

    s = sub.add_parser("sample", help="generate text from a saved model")
    s.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--words", type=int, default=50, help="how many words (default: 50)")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature: < 1 safer, > 1 wilder (default: 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--prime", default="", help='words to start from, e.g. "the company"')
    s.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset named by --config with every explicitly given field replaced."""
    changes = {f.name: getattr(args, f.name) for f in fields(Config)
               if getattr(args, f.name) is not None}
    return PRESETS[args.config].replace(**changes).validate()


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train
    config = config_from_args(args)
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    backend = get_backend(args.device)
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
    run_dir = Path(args.out or f"runs/{args.config}")
    print(f"training {args.config}: {json.dumps(config.to_dict())} on {args.device} "
          f"({args.dtype}), run dir {run_dir}", flush=True)
    summary = train(config, corpus, run_dir, backend=backend, dtype=args.dtype,
                    seed=args.seed, resume=args.resume, max_steps=args.max_steps,
                    save_every=args.save_every)
    print("summary " + json.dumps(summary), flush=True)
    return EXIT_SIGNAL.get(summary.get("signal"), 0) if summary["status"] == "interrupted" else 0


def _load_model(path: str, device: str):
    backend = get_backend(device)
    params, _, meta, vocab = load_checkpoint(path)
    return backend, {k: backend.asarray(v) for k, v in params.items()}, meta, vocab


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .train import evaluate
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
    splits = ("valid", "test") if args.split == "both" else (args.split,)
    for run in args.runs:
        backend, params, meta, _ = _load_model(run, args.device)
        config = Config.from_dict(meta["config"])
        result = {"run": run}
        for split in splits:
            B = config.batch_size if split == "valid" else config.test_batch_size
            result[f"{split}_ppl"] = evaluate(params, getattr(corpus, split), B,
                                              config.num_steps, backend)
        print(json.dumps(result), flush=True)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .sample import sample
    backend, params, _, vocab = _load_model(args.run, args.device)
    if vocab is None:
        raise CheckpointError(f"{args.run}: the checkpoint holds no vocabulary")
    words = sample(params, vocab, args.words, args.temperature, args.seed, args.prime, backend)
    print(" ".join(words).replace("<eos>", "\n"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample}
    try:
        return command[args.command](args)
    except (DataError, CheckpointError, BackendUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # TrainingError and the like: still one line
        from .train import TrainingError
        if isinstance(e, TrainingError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
