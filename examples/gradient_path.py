"""How far back does the training signal reach? The gradient of a word's loss with
respect to the hidden and cell states k steps before it, measured on PTB.

    python examples/gradient_path.py --data-dir DIR --checkpoint runs/small \\
        --checkpoint runs/medium [--windows N] [--num-steps 200]

For each model (an untrained one, and each --checkpoint: a run directory written by
``python examples/ptb_small.py`` or ``ptb_medium.py``), over N windows of T steps from
PTB's validation set, taken in order with the state carried from window to window as
in evaluation and without dropout, ``zaremba_ref.gradient_path`` gives

    || d l_T / d h^l_t ||_F   and   || d l_T / d c^l_t ||_F        (over the B rows, H units)

for every layer l and step t, where l_T is the batch-mean loss of the window's last
word. This script averages them over the N windows and reads them against the
distance k = T - t: the curves on a log scale, and the first k at which each falls to
1e-2 and to 1e-3 of its k = 0 value ("-" where it stays above within the window).

Output: a table on stdout, ``--out-json`` (``{"models": [{"name", "config", "h", "c",
"falls_to", ...}], "command", ...}``, with ``h[l][k]`` the mean norm for layer l + 1 at
distance k) and ``--out-png`` (each curve divided by its k = 0 value; needs
matplotlib, skipped with a message without it).

The untrained model is ``init_params`` with the sizes and init_scale of ``--untrained``
(the small preset's unless --hidden-size or --num-layers say otherwise). The default
dtype is float64: at initialisation the norms fall geometrically (on a toy corpus, an
untrained small model's by 1e-15 over 100 steps), so that over 200 steps and more
they near the bottom of float32's range (1e-38), where its numbers lose digits.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from zaremba_ref.backend import get_backend
from zaremba_ref.checkpoint import load_checkpoint
from zaremba_ref.cli import run_cli
from zaremba_ref.config import PRESETS
from zaremba_ref.data import batchify, load_ptb, num_windows, windows
from zaremba_ref.gradient_path import path_gradients, path_norms
from zaremba_ref.model import init_params, num_layers_of
from zaremba_ref.progress import Progress
from zaremba_ref.rules import TEXT, ArgumentParser, add_option, count, one_of

RATIOS = (1e-2, 1e-3)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gradient_path.py", description=__doc__,
                       epilog="See docs/studies.md, 'The gradient-path study'.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="PTB directory (default: $ZAREMBA_REF_DATA, else "
                                      "the download cache)")
    p.add_argument("--no-verify-data", action="store_true",
                   help="skip the SHA-256 check (another corpus in PTB's format)")
    add_option(p, "--checkpoint", TEXT, action="append", default=[], metavar="RUN_DIR",
               help="a trained run's directory (or its checkpoint.npz); repeat for more")
    add_option(p, "--untrained", one_of("small", "medium", "large", "none"),
               default="small", help="the preset whose init_scale and sizes the untrained "
                                     "model takes (none: leave it out; default: small)")
    add_option(p, "--hidden-size", count(1), help="the untrained model's H (default: "
                                                  "the --untrained preset's)")
    add_option(p, "--num-layers", count(1), help="the untrained model's L (default: "
                                                 "the --untrained preset's)")
    add_option(p, "--seed", count(0, 2**32 - 1), default=0,
               help="seed of the untrained model's weights (default: 0)")
    add_option(p, "--windows", count(1), help="N: the first N windows of the validation "
                                              "set (default: all full windows)")
    add_option(p, "--num-steps", count(1), default=200, help="T, steps per window (default: 200)")
    add_option(p, "--batch-size", count(1), default=20,
               help="B, the streams the validation set is laid out in, as in "
                    "evaluation (default: 20)")
    add_option(p, "--dtype", one_of("float64", "float32"), default="float64",
               help="floating type of the computation, checkpoints converted to it "
                    "(default: float64)")
    add_option(p, "--device", one_of("cpu", "gpu"), default="cpu",
               help="gpu: CuPy and the CUDA kernels (default: cpu)")
    add_option(p, "--out-json", TEXT, default="runs/gradient_path.json",
               help="where the curves go (default: runs/gradient_path.json)")
    add_option(p, "--out-png", TEXT, default="runs/gradient_path.png",
               help="where the figure goes, if matplotlib is installed (default: "
                    "runs/gradient_path.png)")
    return p


def load_models(args, corpus):
    """(name, config dict, source, params as NumPy) of every model to study."""
    models = []
    if args.untrained != "none":
        cfg = PRESETS[args.untrained].replace(
            vocab_size=corpus.vocab_size,
            **{k: v for k, v in (("hidden_size", args.hidden_size),
                                 ("num_layers", args.num_layers)) if v})
        params = init_params(cfg.vocab_size, cfg.hidden_size, cfg.num_layers,
                             cfg.init_scale, seed=args.seed, dtype=np.float64)
        models.append((f"untrained ({args.untrained} init)", cfg.to_dict(),
                       f"init_params(seed={args.seed})", params))
    for run in args.checkpoint:
        params, _, meta, vocab = load_checkpoint(run)
        V = params["embedding"].shape[0]
        if (vocab is not None and vocab != corpus.vocab) or V != corpus.vocab_size:
            raise ValueError(f"{run}: trained on another vocabulary ({V} words) than the "
                             f"corpus in --data-dir ({corpus.vocab_size} words)")
        cfg = meta["config"]    # the folder's name and the model it holds: two member-0s differ
        name = (f"{Path(run).name if Path(run).is_dir() else Path(run).parent.name} "
                f"({cfg['num_layers']} x {cfg['hidden_size']}, dropout {cfg['dropout']:g})")
        names = [m[0] for m in models]
        if name in names:
            name = f"{name} ({sum(n.startswith(name) for n in names) + 1})"
        models.append((name, meta["config"], str(run), params))
    if not models:
        raise ValueError("nothing to study: --untrained none and no --checkpoint")
    return models


def study(params, data, n, args, backend, prefix):
    """The norms (L, T), averaged over the first n windows of ``data``, the state
    carried from window to window; and the mean l_T."""
    xp = backend.xp
    params = {k: backend.asarray(v, dtype=args.dtype) for k, v in params.items()}
    L, T = num_layers_of(params), args.num_steps
    h, c, loss, state = np.zeros((L, T)), np.zeros((L, T)), 0.0, None
    progress = Progress(n, prefix, sys.stderr)
    for k, (x, y) in enumerate(windows(data, T), start=1):
        g = path_gradients(params, xp.asarray(x), xp.asarray(y), state, backend=backend)
        norms = path_norms(g, backend)
        h, c, loss, state = h + norms["h"], c + norms["c"], loss + g.loss, g.final_state
        progress.update(k)
        if k == n:
            break
    progress.close()
    return h / n, c / n, loss / n


def falls_to(curve: np.ndarray) -> dict[str, int | None]:
    """The first distance k at which ``curve`` (indexed by k) is at most r times its
    k = 0 value, for each r in RATIOS; None if it stays above within the window."""
    out = {}
    for r in RATIOS:
        below = np.flatnonzero(curve <= r * curve[0])
        out[f"{r:g}"] = int(below[0]) if below.size else None
    return out


def record(name, config, source, h, c, loss) -> dict:
    """One model's entry of the JSON: the curves by distance k (k = 0: t = T)."""
    by_k = {"h": h[:, ::-1], "c": c[:, ::-1]}                    # [l][k] = [l][T-1-k]
    return {"name": name, "config": config, "source": source, "mean_last_loss": loss,
            **{w: a.tolist() for w, a in by_k.items()},
            "falls_to": {w: [falls_to(curve) for curve in a] for w, a in by_k.items()},
            "ratio_at_farthest": {w: [float(curve[-1] / curve[0]) for curve in a]
                                  for w, a in by_k.items()}}


def table(records, T) -> str:
    f = lambda v: "-" if v is None else str(v)                  # noqa: E731
    lines = [f"distance k = T - t at which the mean norm falls to 1e-2 / 1e-3 of its k = 0 "
             f"value (-: not within T = {T}); ratio at k = {T - 1}",
             f"{'model':32}{'state':>8}{'k @ 1e-2':>10}{'k @ 1e-3':>10}{'ratio':>12}"]
    for r in records:
        for w in ("h", "c"):
            for l, (fall, end) in enumerate(zip(r["falls_to"][w], r["ratio_at_farthest"][w]),
                                            start=1):
                lines.append(f"{r['name'][:31]:32}{f'{w}^{l}':>8}{f(fall['0.01']):>10}"
                             f"{f(fall['0.001']):>10}{end:>12.3g}")
    return "\n".join(lines)


def plot(records, T, path: Path) -> bool:
    """Each curve over its k = 0 value against k, log scale; h left, c right."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for ax, w in zip(axes, ("h", "c")):
        for m, r in enumerate(records):
            for l, curve in enumerate(np.array(r[w]), start=1):
                ax.semilogy(np.arange(len(curve)), curve / curve[0],
                            styles[(l - 1) % len(styles)], color=colors[m % len(colors)],
                            label=f"{r['name']}, layer {l}")
        for ratio in RATIOS:
            ax.axhline(ratio, color="grey", lw=0.6)
        ax.set_xlabel("distance k = T - t (steps back from the last word)")
        ax.set_title(rf"$\|\partial l_T / \partial {w}^l_{{T-k}}\|_F$ / its value at $k = 0$")
    axes[0].set_ylabel(f"mean over the windows (T = {T})")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    backend = get_backend(args.device)
    corpus = load_ptb(args.data_dir, verify=not args.no_verify_data)
    data = batchify(corpus.valid, args.batch_size)
    available = num_windows(data, args.num_steps)
    if available < max(1, args.windows or 0):
        raise ValueError(f"the validation set in {args.batch_size} streams holds "
                         f"{available} full windows of {args.num_steps} steps, fewer than "
                         f"the {args.windows or 1} asked; lower --windows, --num-steps "
                         "or --batch-size")
    n = args.windows or available
    models = load_models(args, corpus)
    records = []
    for name, config, source, params in models:
        h, c, loss = study(params, data, n, args, backend, f"{name}: ")
        records.append(record(name, config, source, h, c, loss))
    out = {"what": "mean over windows of || d l_T / d h^l_(T-k) ||_F and || d l_T / d "
                   "c^l_(T-k) ||_F; h[l][k], c[l][k] for layer l + 1 at distance k",
           "split": "valid", "windows": n, "num_steps": args.num_steps,
           "batch_size": args.batch_size, "dtype": args.dtype, "device": args.device,
           "models": records,
           "command": shlex.join(["python", "examples/gradient_path.py", *argv])}
    print(table(records, args.num_steps))
    path = Path(args.out_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"curves: {path}")
    png = Path(args.out_png)
    png.parent.mkdir(parents=True, exist_ok=True)
    if plot(records, args.num_steps, png):
        print(f"figure: {png}")
    else:
        print("figure: skipped, matplotlib is not installed (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(sys.argv[1:])))
