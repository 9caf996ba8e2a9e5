"""Command line: ``python -m zaremba_ref COMMAND ...``, COMMAND one of train, evaluate,
sample, trace, compare, check-impl, plot, ensemble (train), sweep.

Every expected failure (missing data, a bad checksum, a corrupt or mismatched
checkpoint, a bad argument, no GPU, an unreadable trace) ends in one line on stderr
and exit code 2 (1 for a training run that diverged, and for ``compare`` when the
traces differ), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

from .backend import BackendUnavailable, get_backend
from .checkpoint import CheckpointError, load_checkpoint
from .config import FIELD_RULES, PRESETS, Config, add_config_options
from .data import DataError, load_ptb
from .rules import SEED, TEXT, ArgumentParser, add_option, count, one_of, print_error, real
from .testing import LAYOUTS, MODES, TOLERANCE, cli_check_impl

EXIT_SIGNAL = {2: 130, 15: 143}   # SIGINT, SIGTERM -> the shell's usual exit codes


def _add_data_args(p: argparse.ArgumentParser) -> None:
    add_option(p, "--data-dir", TEXT, metavar="DIR",
               help="directory with ptb.{train,valid,test}.txt (default: "
                    "$ZAREMBA_REF_DATA, else ~/.cache/zaremba_ref/ptb, downloaded "
                    "and checked by SHA-256 if missing)")
    p.add_argument("--no-verify-data", action="store_true",
                   help="skip the SHA-256 check of --data-dir (to train on another corpus "
                        "in PTB's format)")
    add_option(p, "--device", DEVICE, default="cpu",
               help="cpu: NumPy; gpu: CuPy with fused kernels (default: cpu)")


DEVICE = one_of("cpu", "gpu")


def build_parser() -> argparse.ArgumentParser:
    """The command line. Every option that takes a value is declared with its rule
    (``add_option``; Config's fields take theirs from ``config.FIELD_RULES``), so argparse
    checks its type and range and ``--help`` shows them."""
    parser = ArgumentParser(
        prog="python -m zaremba_ref",
        description="Zaremba, Sutskever & Vinyals (2014): LSTM language models on Penn "
                    "Treebank with dropout on the non-recurrent connections only.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (the paper's presets by default)",
                       description="Train on PTB. Each epoch: train, then validation "
                                   "perplexity; at the end, test perplexity. Checkpoints go "
                                   "to RUN_DIR/checkpoint.npz, metrics to RUN_DIR/metrics.jsonl.")
    add_option(t, "--config", one_of(*sorted(PRESETS)), default="small",
               help="the paper's section 4.1 preset to start from (default: small)")
    _add_data_args(t)
    add_option(t, "--dtype", one_of("float32", "float64"), default="float32",
               help="float32 to train (default), float64 as an oracle")
    add_option(t, "--seed", SEED, default=0,
               help="seeds the initial weights and the dropout masks (default: 0)")
    add_option(t, "--out", TEXT, metavar="RUN_DIR",
               help="run directory for checkpoints and metrics (default: runs/CONFIG); "
                    "refused if it is a file, cannot be written, or holds another run")
    add_option(t, "--max-steps", count(1), metavar="N",
               help="stop after N training steps in all (smoke runs, benchmarks); a "
                    "checkpoint and metrics are still written")
    t.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoint.npz, bit-identical on CPU to an "
                        "uninterrupted run")
    add_option(t, "--save-every", count(0), default=1000, metavar="N",
               help="also checkpoint every N steps (0: only at epoch ends and on "
                    "SIGINT/SIGTERM; default: 1000)")
    g = t.add_argument_group("overrides of the preset (the paper's values by default)")
    add_config_options(g)

    e = sub.add_parser("evaluate", help="perplexity of saved models on valid/test",
                       description="Evaluate saved models the paper's way (one pass, state "
                                   "carried, no dropout).")
    add_option(e, "runs", TEXT, nargs="+", metavar="RUN_DIR_OR_CHECKPOINT")
    add_option(e, "--split", one_of("valid", "test", "both"), default="both")
    e.add_argument("--ensemble", action="store_true",
                   help="also evaluate the average of the models' predicted probabilities "
                        "(Table 1's model averaging), with the first model's batch size "
                        "and window for every member; one JSON line per member, then one "
                        "for the ensemble")
    _add_data_args(e)

    s = sub.add_parser("sample", help="generate text from a saved model")
    add_option(s, "run", TEXT, metavar="RUN_DIR_OR_CHECKPOINT")
    add_option(s, "--words", count(1, 1_000_000), default=50,
               help="how many words (default: 50)")
    add_option(s, "--temperature", real(0, lo_open=True), default=1.0,
               help="softmax temperature: < 1 safer, > 1 wilder (default: 1)")
    add_option(s, "--seed", SEED, default=0)
    add_option(s, "--prime", TEXT, default="",
               help='words to start from, e.g. "the company"')
    add_option(s, "--device", DEVICE, default="cpu")

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
    add_option(src, "--checkpoint", TEXT, metavar="RUN_DIR_OR_CHECKPOINT")
    add_option(src, "--random", TEXT, metavar="V,H,L",
               help="a random model of vocabulary V, H units, L layers (integers >= 1)")
    add_option(tr, "--batch", count(1), metavar="B",
               help="rows (default: 2 random, the run's batch size from a checkpoint)")
    add_option(tr, "--steps", count(1), metavar="T",
               help="steps (default: 5 random, the run's window from a checkpoint)")
    add_option(tr, "--seed", SEED, default=0, help="(default: 0)")
    add_option(tr, "--mode", FIELD_RULES["mode"],
               help="dropout placement (default: zaremba, or the run's)")
    add_option(tr, "--dropout", FIELD_RULES["dropout"], default=0.0,
               help="probability p of the masks (default: 0, no masks)")
    add_option(tr, "--out", TEXT, default="trace.npz", help="(default: trace.npz)")
    add_option(tr, "--data-dir", TEXT, metavar="DIR", help="PTB directory (with --checkpoint)")
    tr.add_argument("--no-verify-data", action="store_true")

    c = sub.add_parser(
        "compare", help="compare two traces array by array",
        description="Per-array max abs and rel difference of two traces, and where they "
                    "first part (in trace order: forward, then gradients). Exit code 0 if "
                    "every element agrees (|a - b| <= atol + rtol |b|), 1 if not, 2 if a "
                    "file is unreadable or the arrays or shapes differ.")
    add_option(c, "a", TEXT, metavar="A.npz")
    add_option(c, "b", TEXT, metavar="B.npz")
    add_option(c, "--rtol", real(0), default=1e-7, help="(default: 1e-7)")
    add_option(c, "--atol", real(0), default=1e-9, help="(default: 1e-9)")

    k = sub.add_parser(
        "check-impl", help="check your own LSTM language model against the reference",
        description="Draw cases (Hypothesis) and compare the loss, final state and every "
                    "gradient of FILE.py's FUNCTION(weights, inputs, targets, state, masks) "
                    "-> (loss, grads, final_state) with the reference; on a mismatch, name "
                    "the mistake where it can (see zaremba_ref.testing). Exit code 0 if it "
                    "matches, 1 with the report if not, 2 with one line for a bad FILE or "
                    "FUNCTION or a step that raises or returns the wrong keys or shapes.")
    add_option(k, "target", TEXT, metavar="FILE.py:FUNCTION")
    add_option(k, "--layout", one_of(*LAYOUTS), default="torch",
               help="the weights' keys and gate order (default: torch)")
    add_option(k, "--mode", one_of(*MODES), default="zaremba",
               help="zaremba: the paper's L+1 masks in part of the cases; none: "
                    "masks is always None (default: zaremba)")
    add_option(k, "--dtype", one_of(*TOLERANCE), default="float64",
               help="what the step receives (default: float64)")
    add_option(k, "--examples", count(1, 100_000), default=50, metavar="N",
               help="cases to draw (default: 50)")
    add_option(k, "--seed", SEED, default=0, help="(default: 0)")

    pl = sub.add_parser(
        "plot", help="learning curves of runs (needs matplotlib)",
        description="Train (dashed) and valid (solid) perplexity per epoch, one colour per "
                    "run, log scale; the learning rate in a panel below; the paper's final "
                    "valid (o) and test (x) perplexity where a run follows a preset, and "
                    "the run's own test perplexity (*). Needs matplotlib "
                    "(pip install -e \".[plot]\").")
    add_option(pl, "runs", TEXT, nargs="+", metavar="RUN_DIR_OR_METRICS",
               help="run directories or their metrics.jsonl files")
    add_option(pl, "--out", TEXT, required=True, metavar="FILE.png",
               help="picture to write (format from the suffix: .png, .svg, .pdf)")
    add_option(pl, "--label", TEXT, action="append", metavar="NAME", dest="labels",
               help="a name for each run, in order, once per run (default: the "
                    "directory or file name)")
    add_option(pl, "--title", TEXT, help="a title above the curves")
    from .launch_commands import add_launch_parsers   # ensemble train, sweep
    add_launch_parsers(sub, _add_data_args)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset named by --config with every explicitly given field replaced."""
    changes = {f.name: getattr(args, f.name) for f in fields(Config)
               if getattr(args, f.name) is not None}
    return PRESETS[args.config].replace(**changes).validate()


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import check_before_training, prepare_run_dir, train
    config = config_from_args(args)
    backend = get_backend(args.device)
    run_dir = Path(args.out or f"runs/{args.config}")
    prepare_run_dir(run_dir, args.resume)          # before the data: refuse a bad --out now
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
    check_before_training(config, corpus, args.dtype, backend)   # (train checks it again)
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


def _check_evaluation(run: str, params: dict, config: Config, corpus, splits, backend
                      ) -> None:
    """Before an evaluation pass: the model's vocabulary is the data's, each split holds
    a full window at the run's batch size and window, and the pass fits in memory."""
    from . import resources
    V, H = params["embedding"].shape
    L = sum(k.endswith(".W_h") for k in params)
    if V != corpus.vocab_size:
        raise CheckpointError(f"{run}: the model has a vocabulary of {V} words, the data "
                              f"{corpus.vocab_size}; evaluate on the data it was trained on "
                              "(--data-dir)")
    T, need = config.num_steps, 0
    for split in splits:
        B = config.batch_size if split == "valid" else config.test_batch_size
        resources.check_windows(f"ptb.{split}.txt", len(getattr(corpus, split)), B, T,
                                f"{run} was trained with batch {B} and window {T}; "
                                "evaluate on the data it was trained on")
        need = max(need, resources.eval_elements(V, H, L, B, T))
    resources.require_memory(need * params["embedding"].dtype.itemsize,
                             f"evaluating {run} (batch {config.batch_size}, window {T})",
                             "free memory, or evaluate on a larger machine", backend)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .loss import perplexity
    from .train import evaluation_nll, torch7_perplexity
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
    splits = ("valid", "test") if args.split == "both" else (args.split,)
    if args.ensemble:
        return _evaluate_ensemble(args.runs, corpus, splits, args.device)
    for run in args.runs:              # every checkpoint checked before the first pass
        backend, params, meta, _ = _load_model(run, args.device)
        _check_evaluation(run, params, Config.from_dict(meta["config"]), corpus, splits,
                          backend)
        del params
    for run in args.runs:
        backend, params, meta, _ = _load_model(run, args.device)
        config = Config.from_dict(meta["config"])
        result = {"run": run}
        for split in splits:
            B = config.batch_size if split == "valid" else config.test_batch_size
            full, tail, count = evaluation_nll(params, getattr(corpus, split), B,
                                               config.num_steps, backend,
                                               progress_prefix=f"{split} ", out=sys.stderr)
            result[f"{split}_ppl"] = perplexity((full + tail) / count)
            if split == "valid":     # as the paper's Torch code prints it (README Conventions)
                result["valid_ppl_torch7_formula"] = torch7_perplexity(full, count)
        print(json.dumps(result), flush=True)
    return 0


def _evaluate_ensemble(runs, corpus, splits, device) -> int:
    from .ensemble import evaluate_ensemble
    models = [_load_model(run, device) for run in runs]
    backend = models[0][0]
    config = Config.from_dict(models[0][2]["config"])   # batching of the first member
    for run, (_, params, _, _) in zip(runs, models):
        _check_evaluation(run, params, config, corpus, splits, backend)
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


def _random_model_sizes(text: str) -> tuple[int, int, int]:
    """--random V,H,L -> (V, H, L), each an integer >= 1."""
    try:
        V, H, L = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--random wants V,H,L (three integers), got {text!r}") from None
    for name, v in zip("VHL", (V, H, L)):
        count(1).check(f"--random {name}", v)
    return V, H, L


def _cmd_trace(args: argparse.Namespace) -> int:
    import numpy as np

    from . import resources
    from .checkpoint import atomic_savez
    from .data import batchify
    from .model import init_params
    from .trace import trace
    rng = np.random.default_rng([args.seed, 1])        # data, state, masks (not params)
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    if Path(out).is_dir():
        raise ValueError(f"--out {out} is a directory; name a file, e.g. {out}/trace.npz")
    if args.random is not None:
        V, H, L = _random_model_sizes(args.random)
        B, T = args.batch or 2, args.steps or 5
        mode = args.mode or "zaremba"
        need = (resources.param_elements(V, H, L)
                + resources.trace_elements(V, H, L, B, T, args.dropout, mode)) * 8
        resources.require_memory(need, f"a trace of V={V}, H={H}, L={L}, batch {B}, "
                                 f"{T} steps (float64)",
                                 "lower --random V,H,L, --batch or --steps")
        params = init_params(V, H, L, 0.1, seed=args.seed, dtype=np.float64)
        inputs, targets = (rng.integers(0, V, (B, T)) for _ in range(2))
        state = [tuple(rng.uniform(-0.5, 0.5, (B, H)) for _ in "hc") for _ in range(L)]
    else:
        params, _, meta, _ = load_checkpoint(args.checkpoint)
        config = Config.from_dict(meta["config"])
        B, T = args.batch or config.batch_size, args.steps or config.num_steps
        (V, H), L = params["embedding"].shape, sum(k.endswith(".W_h") for k in params)
        mode = args.mode or config.mode
        resources.require_memory(resources.trace_elements(V, H, L, B, T, args.dropout, mode)
                                 * 8, f"a trace of {args.checkpoint} with batch {B}, {T} "
                                 "steps (float64)", "lower --batch or --steps")
        corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
        if corpus.vocab_size != V:
            raise CheckpointError(f"{args.checkpoint}: the model has a vocabulary of {V} "
                                  f"words, the data {corpus.vocab_size}; pass the --data-dir "
                                  "it was trained on")
        resources.check_windows("ptb.valid.txt", len(corpus.valid), B, T,
                                "lower --batch or --steps")
        data = batchify(corpus.valid, B)                 # the first window of PTB valid
        inputs, targets = data[:, :T].astype(np.int64), data[:, 1:T + 1].astype(np.int64)
        state = None
    arrays = trace(params, inputs, targets, state, mode=mode, dropout=args.dropout, rng=rng)
    atomic_savez(out, {"data.inputs": np.asarray(inputs, dtype=np.int64),
                       "data.targets": np.asarray(targets, dtype=np.int64), **arrays},
                 what="trace")
    print(json.dumps({"out": out, "arrays": len(arrays) + 2, "vocab": int(V), "hidden": int(H),
                      "layers": int(L), "batch": B, "steps": T, "mode": mode,
                      "dropout": args.dropout, "loss": float(arrays["loss"])}))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .trace import CompareError, compare_traces, format_comparison, load_trace
    a, b = load_trace(args.a), load_trace(args.b)
    try:
        rows, first = compare_traces(a, b, args.rtol, args.atol)
    except CompareError as e:                          # name the files
        raise CompareError(f"{args.a} vs {args.b}: {e}") from None
    print(format_comparison(rows, first, args.rtol, args.atol))
    return 0 if first is None else 1


def _cmd_sample(args: argparse.Namespace) -> int:
    from . import resources
    from .sample import sample
    backend, params, _, vocab = _load_model(args.run, args.device)
    if vocab is None:
        raise CheckpointError(f"{args.run}: the checkpoint holds no vocabulary")
    (V, H), L = params["embedding"].shape, sum(k.endswith(".W_h") for k in params)
    n = max(1, len(args.prime.split()))
    resources.require_memory(resources.eval_elements(V, H, L, 1, n) * params["embedding"]
                             .dtype.itemsize, f"sampling after a prime of {n} words",
                             "shorten --prime", backend)
    words = sample(params, vocab, args.words, args.temperature, args.seed, args.prime, backend)
    print(" ".join(words).replace("<eos>", "\n"))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import save_plot
    save_plot(args.runs, args.out, args.labels, args.title)
    print(json.dumps({"out": args.out, "runs": args.runs}))
    return 0


def run_cli(fn: Callable[[], int]) -> int:
    """Run ``fn()`` (a command, or an example's main) and turn every expected failure
    into one line on stderr and its exit code: 2, or 1 for a diverged training run,
    130 for Ctrl-C outside training (which stops at a checkpoint by itself)."""
    from .trace import CompareError
    from .train import TrainingError
    try:
        with warnings.catch_warnings():   # NaN/Inf are caught and told by the trainer itself
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"zaremba_ref\.")
            return fn()
    except (DataError, CheckpointError, BackendUnavailable, CompareError, ValueError) as e:
        print_error(e)
        return 2
    except TrainingError as e:
        print_error(e)
        return 1
    except MemoryError as e:   # the estimate was passed, yet an allocation failed
        print_error(f"out of memory ({' '.join(str(e).split()) or 'MemoryError'}); lower "
                    "--hidden-size, --batch-size or --num-steps, or free memory")
        return 2
    except OSError as e:       # a file the checks above did not foresee: name it and why
        print_error(f"{e.filename or ''}{': ' if e.filename else ''}"
                    f"{e.strerror or ' '.join(str(e).split())}")
        return 2
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (``--help``: 0; a bad argument: 2, after
    one line on stderr naming it)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    from .launch_commands import cmd_ensemble, cmd_sweep
    command = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample,
               "trace": _cmd_trace, "compare": _cmd_compare, "check-impl": cli_check_impl,
               "plot": _cmd_plot, "ensemble": cmd_ensemble, "sweep": cmd_sweep}
    return run_cli(lambda: command[args.command](args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
