"""Learning curves: train and valid perplexity per epoch, one colour per run, on a log
scale, with the learning rate in a small panel below and the paper's final valid/test
perplexities as reference marks (``python -m zaremba_ref plot RUN... --out FILE.png``).

Reads the trainer's ``metrics.jsonl`` (a run directory or the file itself). matplotlib
is an optional dependency (``pip install -e ".[plot]"``), imported only here.

Which preset a run follows (for the reference marks): the one its checkpoint's
configuration equals, when a ``checkpoint.npz`` sits beside the metrics; else the one
whose learning-rate schedule the metrics follow epoch by epoch (a metrics file copied
to ``docs/results`` keeps no configuration).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import PAPER_RESULTS, PRESETS, Config
from .optim import learning_rate


class PlotError(ValueError):
    """A path that is not a metrics file, or no matplotlib (the message says which)."""


@dataclass
class Curves:
    """One run's per-epoch curves, read from its metrics."""

    label: str
    epochs: list[int]
    train_ppl: list[float]
    valid_ppl: list[float]
    lr: list[float]
    test_ppl: float | None
    preset: str | None


def _metrics_file(path: Path) -> Path:
    return path / "metrics.jsonl" if path.is_dir() else path


def _config_beside(metrics: Path) -> Config | None:
    """The configuration in the checkpoint next to ``metrics``, if there is one."""
    ckpt = metrics.parent / "checkpoint.npz"
    if not ckpt.exists():
        return None
    try:
        with np.load(ckpt, allow_pickle=False) as z:   # only the small JSON entry is read
            saved = json.loads(str(z["meta"]))["config"]
        return Config.from_dict(dict(Config().to_dict(), **saved))
    except (OSError, ValueError, KeyError):
        return None


def _preset_of(config: Config | None, epochs: list[int], lr: list[float]) -> str | None:
    if config is not None:
        ignore = {"vocab_size": 10000}                 # set from the corpus, not the preset
        return next((name for name, p in PRESETS.items()
                     if p.replace(**ignore) == config.replace(**ignore)), None)
    for name, p in PRESETS.items():
        if epochs and max(epochs) <= p.max_epoch and all(
                math.isclose(r, learning_rate(e, p.lr, p.decay_start, p.lr_decay),
                             rel_tol=1e-9) for e, r in zip(epochs, lr)):
            return name
    return None


def read_curves(path: str | os.PathLike, label: str | None = None) -> Curves:
    """Per-epoch train/valid perplexity and lr of one run (one validation row per epoch;
    a later row for the same epoch, after a resume, replaces an earlier one)."""
    metrics = _metrics_file(Path(path))
    try:
        lines = metrics.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlotError(f"{metrics}: not a metrics file ({' '.join(str(e).split())}); give "
                        "a run directory or the metrics.jsonl the trainer writes") from None
    rows = {r["epoch"]: r for r in records
            if isinstance(r, dict) and "valid_ppl" in r and "epoch" in r}
    if not rows:
        raise PlotError(f"{metrics}: no validation rows (epoch, valid_ppl); give a run "
                        "directory or the metrics.jsonl the trainer writes")
    epochs = sorted(rows)
    test = [r["test_ppl"] for r in records if isinstance(r, dict) and "test_ppl" in r]
    lr = [rows[e]["lr"] for e in epochs]
    return Curves(label or (metrics.parent.name if metrics.name == "metrics.jsonl"
                            else metrics.stem),
                  epochs, [rows[e]["train_ppl"] for e in epochs],
                  [rows[e]["valid_ppl"] for e in epochs], lr,
                  test[-1] if test else None, _preset_of(_config_beside(metrics), epochs, lr))


def plot_curves(runs: list[Curves], title: str | None = None):
    """A matplotlib Figure: perplexity per epoch (train dashed, valid solid, log scale),
    our test (*), the paper's final valid (o) and test (x) once for each preset that a run
    follows (in the colour of the first such run), and the learning rate in a panel
    below."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    except ImportError:
        raise PlotError("plot needs matplotlib: pip install -e \".[plot]\" "
                        "(or pip install matplotlib)") from None
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[4, 1])
    marked: set[str] = set()   # once per preset: a control run's schedule matches it too
    for k, run in enumerate(runs):
        color = f"C{k}"
        ax.plot(run.epochs, run.train_ppl, "--", color=color, label=f"{run.label} train")
        ax.plot(run.epochs, run.valid_ppl, "-", color=color, label=f"{run.label} valid")
        if run.test_ppl is not None:
            ax.plot([run.epochs[-1]], [run.test_ppl], "*", color=color, markersize=10,
                    label=f"{run.label} test {run.test_ppl:.2f}")
        if run.preset is not None and run.preset not in marked:
            marked.add(run.preset)
            valid, test = PAPER_RESULTS[run.preset]
            x = PRESETS[run.preset].max_epoch
            ax.plot([x], [valid], "o", mfc="none", color=color, markersize=9,
                    label=f"paper {run.preset} valid {valid}")
            ax.plot([x], [test], "x", color=color, markersize=9,
                    label=f"paper {run.preset} test {test}")
        ax_lr.step(run.epochs, run.lr, where="mid", color=color)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 1.5, 2, 3, 4, 6, 8)))
    ax.yaxis.set_major_formatter(ScalarFormatter())   # 100, 150, not 10^2
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("perplexity (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2, loc="upper right")
    if title:
        ax.set_title(title)
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("epoch")
    ax_lr.grid(True, which="both", alpha=0.3)
    return fig


def save_plot(paths: list[str], out: str | os.PathLike, labels: list[str] | None = None,
              title: str | None = None):
    """Read each run's metrics, draw them in one figure and write it to ``out`` (the
    format from its suffix, e.g. .png or .svg). Returns the Figure."""
    if labels is not None and len(labels) != len(paths):
        raise PlotError(f"{len(labels)} --label for {len(paths)} runs: give one per run, "
                        "in order, or none")
    runs = [read_curves(p, labels[k] if labels else None) for k, p in enumerate(paths)]
    fig = plot_curves(runs, title)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)                            # never a half-written picture
    except (OSError, ValueError) as e:
        with contextlib.suppress(OSError):      # on a read-only filesystem unlink fails too
            tmp.unlink()
        raise PlotError(f"cannot write {out}: {' '.join(str(e).split())}") from None
    return fig
