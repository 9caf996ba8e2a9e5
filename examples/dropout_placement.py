"""Where should dropout go? The paper's claim (section 3.2, Figure 3), measured.

Trains the same model on PTB three times, with the same seed, the same initial
weights and the same budget, changing only where dropout sits:

    none     no dropout at all
    naive    dropout on the non-recurrent connections AND on h_{t-1} into W_h
             (a fresh mask every step, as earlier work did)
    zaremba  dropout on the non-recurrent connections only (the paper)

and reports the validation perplexity after every epoch::

    python examples/dropout_placement.py [--data-dir DIR] [--out runs/placement]

Output: a table on stdout, ``OUT/placement.jsonl`` (one JSON line per mode per
epoch), ``OUT/placement.png`` (the three validation curves, if matplotlib is
installed), and each model's last checkpoint in ``OUT/<mode>/`` (for
``python -m zaremba_ref evaluate``).

The defaults (2 x 300 units, 20 steps, batch 20, dropout 0.5, lr 1 held constant,
4 epochs) are chosen to fit the three runs in about 40 minutes on a 2-core CPU
(~4,000 words/s at 2 x 300 there: ~4 min per epoch plus validation, x 4 epochs x 3
modes) while the model without dropout already overfits: its training perplexity
falls far below its validation perplexity, which stops improving by epoch 3-4. The
learning rate is not decayed, so that the decay does not hide the overfitting.
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

MODES = ("none", "naive", "zaremba")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="PTB directory (default: $ZAREMBA_REF_DATA, else "
                                       "the download cache)")
    ap.add_argument("--no-verify-data", action="store_true",
                    help="skip the SHA-256 check (another corpus in PTB's format)")
    ap.add_argument("--hidden-size", type=int, default=300)
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.5,
                    help="p for naive and zaremba (none always uses 0)")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None,
                    help="train on only the first N windows of each epoch (smoke runs)")
    ap.add_argument("--num-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--init-scale", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1.0, help="held constant (default: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default=",".join(MODES), help="(default: none,naive,zaremba)")
    ap.add_argument("--out", default="runs/placement")
    return ap.parse_args(argv)


def train_one(mode: str, args, corpus, out: Path, log) -> list[dict]:
    """Train one placement from the shared seed; one record per epoch."""
    config = Config(num_layers=args.num_layers, hidden_size=args.hidden_size,
                    num_steps=args.num_steps, batch_size=args.batch_size,
                    init_scale=args.init_scale, dropout=0.0 if mode == "none" else args.dropout,
                    mode=mode, lr=args.lr, decay_start=args.epochs, max_epoch=args.epochs,
                    vocab_size=corpus.vocab_size).validate()
    params = init_params(config.vocab_size, config.hidden_size, config.num_layers,
                         config.init_scale, seed=args.seed)   # the same weights for every mode
    rng = CPU.rng(args.seed)                                  # the same mask stream
    data = batchify(corpus.train, config.batch_size)
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
        valid_ppl = evaluate(params, corpus.valid, config.batch_size, config.num_steps)
        record = {"mode": mode, "epoch": epoch, "lr": lr, "steps": n,
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
            cells.append(f"{r['valid_ppl']:10.2f} ({r['train_ppl']:8.2f})" if r else " " * 22)
        lines.append(f"{e + 1:<5d}  " + "".join(f"{c:>22s}" for c in cells))
    best = [min(results[m], key=lambda r: r["valid_ppl"]) for m in modes]
    lines.append("best   " + "".join(f"{b['valid_ppl']:10.2f} (ep {b['epoch']:2d})    "
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
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise ValueError(f"--modes takes some of {','.join(MODES)}, got {args.modes!r}")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 1:
        raise ValueError(f"--max-steps-per-epoch must be >= 1, got {args.max_steps_per_epoch}")
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
    out = Path(args.out)
    for mode in modes:
        (out / mode).mkdir(parents=True, exist_ok=True)
    results = {}
    with open(out / "placement.jsonl", "w") as log:
        for mode in modes:
            results[mode] = train_one(mode, args, corpus, out, log)
    print(table(results))
    if plot(results, out / "placement.png"):
        print(f"plot: {out / 'placement.png'}")
    print(f"records: {out / 'placement.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
