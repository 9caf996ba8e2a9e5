"""Where should dropout go? The paper's claim (section 3.2, Figure 3), measured.

Trains the same model on PTB three times, with the same seed, the same initial
weights and the same budget, changing only where dropout sits:

    none     no dropout at all
    naive    dropout on the non-recurrent connections AND on h_{t-1} into W_h
             (a fresh mask every step, as earlier work did)
    zaremba  dropout on the non-recurrent connections only (the paper)

and, beyond the paper (``--modes variational,zaremba+tied``), two more rows:

    variational   the masks of naive, each drawn once per window and used at every
                  step (Gal & Ghahramani 2016)
    zaremba+tied  the paper's placement, with the softmax weights tied to the
                  embedding (Press & Wolf 2017; Inan et al. 2017)

and reports the validation perplexity after every epoch::

    python examples/dropout_placement.py [--data-dir DIR] [--out runs/placement]

Output: a table on stdout, ``OUT/placement.jsonl`` (one JSON line per mode per
epoch), ``OUT/placement.png`` (the three validation curves, if matplotlib is
installed), and each model's last checkpoint in ``OUT/<mode>/`` (for
``python -m zaremba_ref evaluate``).

The defaults are chosen so that the three runs finish in about 35 minutes on a 2-core
CPU and the model without dropout visibly overfits: 2 x 300 units, 20 steps, batch
20, dropout 0.5, lr 1 held constant (a decay would hide the overfitting), and 10
passes over the first quarter of PTB's training set (``--train-fraction 0.25``, the
first quarter of each of the 20 streams, 232k words). Why a quarter: one full epoch
of 929k words takes ~4 min at 2 x 300 on such a CPU (~4,000 words/s), so the budget
holds ~3 full epochs per mode, too few for the no-dropout curve to turn up or for
dropout to pay off; ten passes over a quarter of the data leave room for both. Timing: 2 x
300 costs ~1.6x the small model's time per word (measured: 0.136 vs 0.086 CPU
seconds per 400-word step, one thread), i.e. ~4,000 words/s where the small model
runs ~6,500: ~60 s per pass plus ~6 s of validation, x 10 passes x 3 modes.
``--train-fraction 1 --epochs 13`` is the full-data study (about 2.5 hours).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from zaremba_ref.backend import CPU
from zaremba_ref.checkpoint import save_checkpoint
from zaremba_ref.cli import run_cli
from zaremba_ref.config import Config
from zaremba_ref.data import batchify, load_ptb, num_windows, windows
from zaremba_ref.model import init_params, zero_state
from zaremba_ref.optim import learning_rate
from zaremba_ref.progress import Progress
from zaremba_ref.train import TrainingError, evaluate, train_step

# Each row: its name -> the Config fields it changes (mode, tie_weights).
ROWS = {"none": {"mode": "none"}, "naive": {"mode": "naive"}, "zaremba": {"mode": "zaremba"},
        "variational": {"mode": "variational"},
        "zaremba+tied": {"mode": "zaremba", "tie_weights": True}}
MODES = ("none", "naive", "zaremba")   # the default rows: the paper's question


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="PTB directory (default: $ZAREMBA_REF_DATA, else "
                                       "the download cache)")
    ap.add_argument("--no-verify-data", action="store_true",
                    help="skip the SHA-256 check (another corpus in PTB's format)")
    ap.add_argument("--hidden-size", type=int, default=300)
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--dropout", type=float, default=0.5,
                    help="p for naive and zaremba (none always uses 0)")
    ap.add_argument("--train-fraction", type=float, default=0.25,
                    help="train on the first fraction of each of the batch-size streams "
                         "of PTB train (default: 0.25; 1: all of it)")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None,
                    help="at most N windows per epoch (smoke runs)")
    ap.add_argument("--max-valid-words", type=int, default=None,
                    help="validate on the first N words of PTB valid only (smoke runs)")
    ap.add_argument("--num-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--init-scale", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1.0, help="held constant (default: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"rows, some of {','.join(ROWS)} (default: none,naive,zaremba)")
    ap.add_argument("--out", default="runs/placement")
    return ap.parse_args(argv)


def make_config(row: str, args, vocab_size: int) -> Config:
    """The run of one row: everything shared but the row's fields (and p = 0 for none)."""
    return Config(num_layers=args.num_layers, hidden_size=args.hidden_size,
                  num_steps=args.num_steps, batch_size=args.batch_size,
                  init_scale=args.init_scale, dropout=0.0 if row == "none" else args.dropout,
                  lr=args.lr, decay_start=args.epochs, max_epoch=args.epochs,
                  vocab_size=vocab_size, **ROWS[row]).validate()


def train_one(mode: str, config: Config, args, corpus, out: Path, log) -> list[dict]:
    """Train one row (``mode``, its name) from the shared seed; one record per epoch."""
    params = init_params(config.vocab_size, config.hidden_size, config.num_layers,
                         config.init_scale, seed=args.seed,   # the same weights for every mode
                         tie_weights=config.tie_weights)
    rng = CPU.rng(args.seed)                                  # the same mask stream
    data = batchify(corpus.train, config.batch_size)
    data = data[:, :max(config.num_steps + 1, round(data.shape[1] * args.train_fraction))]
    n = num_windows(data, config.num_steps)
    if args.max_steps_per_epoch:
        n = min(n, args.max_steps_per_epoch)
    records = []
    for epoch in range(1, config.max_epoch + 1):
        lr = learning_rate(epoch, config.lr, config.decay_start, config.lr_decay)
        state = zero_state(params, config.batch_size)
        loss_sum, words, t0 = 0.0, 0, time.perf_counter()
        progress = Progress(n, f"{mode} epoch {epoch}/{config.max_epoch} ", sys.stderr)
        for step, (x, y) in enumerate(windows(data, config.num_steps), start=1):
            loss, norm, state = train_step(params, x, y, state, config, lr, rng)
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise TrainingError(f"{mode}: loss {loss}, gradient norm {norm} at epoch "
                                    f"{epoch}, step {step}; try a lower --lr")
            loss_sum, words = loss_sum + loss * x.size, words + x.size
            progress.update(step, ppl=f"{math.exp(loss_sum / words):.1f}",
                            wps=f"{words / (time.perf_counter() - t0):,.0f}")
            if step == n:
                break
        progress.close()
        train_seconds = time.perf_counter() - t0
        valid_ppl = evaluate(params, corpus.valid[:args.max_valid_words], config.batch_size,
                             config.num_steps)
        record = {"mode": mode, "epoch": epoch, "lr": lr, "steps": n, "train_words": words,
                  "train_ppl": math.exp(loss_sum / words), "valid_ppl": valid_ppl,
                  "words_per_sec": words / train_seconds,
                  "seconds": time.perf_counter() - t0}
        records.append(record)
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(f"{mode:8s} epoch {epoch}: train ppl {record['train_ppl']:8.2f}, valid ppl "
              f"{valid_ppl:8.2f} ({record['seconds']:.0f} s)", flush=True)
        save_checkpoint(out / mode, {k: np.asarray(v) for k, v in params.items()}, state,
                        {"config": config.to_dict(), "dtype": "float32", "seed": args.seed,
                         "epoch": epoch + 1, "step": 0, "global_step": epoch * n,
                         "loss_sum": 0.0, "words": 0, "rng": rng.bit_generator.state,
                         "lr": lr}, corpus.vocab)
    return records


def table(results: dict[str, list[dict]]) -> str:
    """Validation perplexity per epoch (training perplexity in brackets), one column
    per mode, and the best epoch of each."""
    modes = list(results)
    lines = ["validation perplexity per epoch (training perplexity in brackets)",
             "epoch  " + "".join(f"{m:>22s}" for m in modes)]
    for e in range(max(len(r) for r in results.values())):
        cells = []
        for m in modes:
            r = results[m][e] if e < len(results[m]) else None
            cells.append(f"{r['valid_ppl']:.2f} ({r['train_ppl']:.2f})" if r else "")
        lines.append(f"{e + 1:<5d}  " + "".join(f"{c:>22s}" for c in cells))
    best = [min(results[m], key=lambda r: r["valid_ppl"]) for m in modes]
    lines.append("best   " + "".join(f"{b['valid_ppl']:.2f} (epoch {b['epoch']})".rjust(22)
                                     for b in best))
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> bool:
    """The validation curves as a PNG, if matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, records in results.items():
        ax.plot([r["epoch"] for r in records], [r["valid_ppl"] for r in records], "o-",
                label=mode)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Where dropout goes (same model, seed and budget)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(ROWS)
    if unknown or not modes:
        raise ValueError(f"--modes takes some of {','.join(ROWS)}, got {args.modes!r}")
    for name in ("max_steps_per_epoch", "max_valid_words"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                             f"{getattr(args, name)}")
    if not 0 < args.train_fraction <= 1:
        raise ValueError(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
    configs = {mode: make_config(mode, args, corpus.vocab_size) for mode in modes}  # check all
    out = Path(args.out)
    for mode in modes:
        (out / mode).mkdir(parents=True, exist_ok=True)
    results = {}
    with open(out / "placement.jsonl", "w") as log:
        for mode, config in configs.items():
            results[mode] = train_one(mode, config, args, corpus, out, log)
    print(table(results))
    if plot(results, out / "placement.png"):
        print(f"plot: {out / 'placement.png'}")
    print(f"records: {out / 'placement.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
