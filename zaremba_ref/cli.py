"""Command line: ``python -m zaremba_ref {train,evaluate,sample,trace,compare} ...``.

Every expected failure (missing data, a bad checksum, a corrupt or mismatched
checkpoint, a bad argument, no GPU, an unreadable trace) ends in one line on stderr
and exit code 2 (1 for a training run that diverged, and for ``compare`` when the
traces differ), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

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
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):      # a switch, not a value: --tie-weights / --no-...
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=HELP[f.name])
        else:
            g.add_argument(flag, type=type(f.default), default=None,
                           metavar=f.name.upper(), help=HELP[f.name])

    e = sub.add_parser("evaluate", help="perplexity of saved models on valid/test",
                       description="Evaluate saved models the paper's way (one pass, state "
                                   "carried, no dropout).")
    e.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_CHECKPOINT")
    e.add_argument("--split", choices=("valid", "test", "both"), default="both")
    e.add_argument("--ensemble", action="store_true",
                   help="also evaluate the average of the models' predicted probabilities "
                        "(Table 1's model averaging), with the first model's batch size "
                        "and window for every member; one JSON line per member, then one "
                        "for the ensemble")
    _add_data_args(e)

    s = sub.add_parser("sample", help="generate text from a saved model")
    s.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--words", type=int, default=50, help="how many words (default: 50)")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature: < 1 safer, > 1 wilder (default: 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--prime", default="", help='words to start from, e.g. "the company"')
    s.add_argument("--device", choices=("cpu", "gpu"), default="cpu")

    tr = sub.add_parser(
        "trace", help="save every intermediate and gradient of one window (float64)",
        description="Run one window forward and backward in float64 and save every "
                    "intermediate and gradient (see zaremba_ref.trace) to an .npz, with "
                    "the word ids as data.inputs/data.targets. --random V,H,L: a model "
                    "from init_params(V, H, L, 0.1, seed=S), then from "
                    "numpy.random.default_rng([S, 1]), in this order: inputs and targets "
                    "(B, T) uniform over the vocabulary, the initial state of each layer "
                    "(h, then c) uniform(-0.5, 0.5), the dropout masks. --checkpoint: "
                    "its model on the first window of PTB valid, from a zero state, "
                    "masks drawn the same way.")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    src.add_argument("--random", metavar="V,H,L",
                     help="a random model of vocabulary V, H units, L layers")
    tr.add_argument("--batch", type=int, metavar="B",
                    help="rows (default: 2 random, the run's batch size from a checkpoint)")
    tr.add_argument("--steps", type=int, metavar="T",
                    help="steps (default: 5 random, the run's window from a checkpoint)")
    tr.add_argument("--seed", type=int, default=0, help="(default: 0)")
    tr.add_argument("--mode", choices=("zaremba", "naive", "variational", "none"),
                    help="dropout placement (default: zaremba, or the run's)")
    tr.add_argument("--dropout", type=float, default=0.0,
                    help="probability p of the masks (default: 0, no masks)")
    tr.add_argument("--out", default="trace.npz", help="(default: trace.npz)")
    tr.add_argument("--data-dir", metavar="DIR", help="PTB directory (with --checkpoint)")
    tr.add_argument("--no-verify-data", action="store_true")

    c = sub.add_parser(
        "compare", help="compare two traces array by array",
        description="Per-array max abs and rel difference of two traces, and where they "
                    "first part (in trace order: forward, then gradients). Exit code 0 if "
                    "every element agrees (|a - b| <= atol + rtol |b|), 1 if not, 2 if a "
                    "file is unreadable or the arrays or shapes differ.")
    c.add_argument("a", metavar="A.npz")
    c.add_argument("b", metavar="B.npz")
    c.add_argument("--rtol", type=float, default=1e-7, help="(default: 1e-7)")
    c.add_argument("--atol", type=float, default=1e-9, help="(default: 1e-9)")
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
    return exit_code(summary)


def exit_code(summary: dict) -> int:
    """0, or the shell's 130/143 for a run stopped by SIGINT/SIGTERM (checkpoint saved)."""
    return EXIT_SIGNAL.get(summary.get("signal"), 0) if summary["status"] == "interrupted" else 0


def _load_model(path: str, device: str):
    backend = get_backend(device)
    params, _, meta, vocab = load_checkpoint(path)
    return backend, {k: backend.asarray(v) for k, v in params.items()}, meta, vocab


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .train import evaluate
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
    splits = ("valid", "test") if args.split == "both" else (args.split,)
    if args.ensemble:
        return _evaluate_ensemble(args.runs, corpus, splits, args.device)
    for run in args.runs:
        backend, params, meta, _ = _load_model(run, args.device)
        config = Config.from_dict(meta["config"])
        result = {"run": run}
        for split in splits:
            B = config.batch_size if split == "valid" else config.test_batch_size
            result[f"{split}_ppl"] = evaluate(params, getattr(corpus, split), B,
                                              config.num_steps, backend,
                                              progress_prefix=f"{split} ", out=sys.stderr)
        print(json.dumps(result), flush=True)
    return 0


def _evaluate_ensemble(runs, corpus, splits, device) -> int:
    from .ensemble import evaluate_ensemble
    models = [_load_model(run, device) for run in runs]
    backend = models[0][0]
    config = Config.from_dict(models[0][2]["config"])   # batching of the first member
    members = [{"run": run} for run in runs]
    result = {"run": "ensemble", "members": list(runs)}
    for split in splits:
        B = config.batch_size if split == "valid" else config.test_batch_size
        r = evaluate_ensemble([m[1] for m in models], getattr(corpus, split), B,
                              config.num_steps, backend)
        result[f"{split}_ppl"] = r.perplexity
        for member, ppl in zip(members, r.member_perplexities):
            member[f"{split}_ppl"] = ppl
    for line in members + [result]:
        print(json.dumps(line), flush=True)
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    import numpy as np

    from .data import batchify
    from .model import init_params
    from .trace import trace
    for name in ("batch", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    rng = np.random.default_rng([args.seed, 1])        # data, state, masks (not params)
    if args.random:
        try:
            V, H, L = (int(v) for v in args.random.split(","))
        except ValueError:
            raise ValueError(f"--random wants V,H,L (three integers), got {args.random!r}") \
                from None
        B, T = args.batch or 2, args.steps or 5
        params = init_params(V, H, L, 0.1, seed=args.seed, dtype=np.float64)
        inputs, targets = (rng.integers(0, V, (B, T)) for _ in range(2))
        state = [tuple(rng.uniform(-0.5, 0.5, (B, H)) for _ in "hc") for _ in range(L)]
        mode = args.mode or "zaremba"
    else:
        params, _, meta, _ = load_checkpoint(args.checkpoint)
        config = Config.from_dict(meta["config"])
        B, T = args.batch or config.batch_size, args.steps or config.num_steps
        corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
        data = batchify(corpus.valid, B)                 # the first window of PTB valid
        if data.shape[1] < T + 1:
            raise ValueError(f"PTB valid in {B} rows is too short for {T} steps")
        inputs, targets = data[:, :T].astype(np.int64), data[:, 1:T + 1].astype(np.int64)
        state, mode = None, args.mode or config.mode
        (V, H), L = params["embedding"].shape, sum(k.endswith(".W_h") for k in params)
    arrays = trace(params, inputs, targets, state, mode=mode, dropout=args.dropout, rng=rng)
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    try:
        np.savez(out, **{"data.inputs": np.asarray(inputs, dtype=np.int64),
                         "data.targets": np.asarray(targets, dtype=np.int64)}, **arrays)
    except OSError as e:
        raise ValueError(f"cannot write {out}: {' '.join(str(e).split())}") from None
    print(json.dumps({"out": out, "arrays": len(arrays) + 2, "vocab": int(V), "hidden": int(H),
                      "layers": int(L), "batch": B, "steps": T, "mode": mode,
                      "dropout": args.dropout, "loss": float(arrays["loss"])}))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .trace import compare_traces, format_comparison, load_trace
    a, b = load_trace(args.a), load_trace(args.b)
    rows, first = compare_traces(a, b, args.rtol, args.atol)
    print(format_comparison(rows, first, args.rtol, args.atol))
    return 0 if first is None else 1


def _cmd_sample(args: argparse.Namespace) -> int:
    from .sample import sample
    backend, params, _, vocab = _load_model(args.run, args.device)
    if vocab is None:
        raise CheckpointError(f"{args.run}: the checkpoint holds no vocabulary")
    words = sample(params, vocab, args.words, args.temperature, args.seed, args.prime, backend)
    print(" ".join(words).replace("<eos>", "\n"))
    return 0


def run_cli(fn: Callable[[], int]) -> int:
    """Run ``fn()`` (a command, or an example's main) and turn every expected failure
    into one line on stderr and its exit code: 2, or 1 for a diverged training run."""
    from .trace import CompareError
    from .train import TrainingError
    try:
        return fn()
    except (DataError, CheckpointError, BackendUnavailable, CompareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample,
               "trace": _cmd_trace, "compare": _cmd_compare}
    return run_cli(lambda: command[args.command](args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
