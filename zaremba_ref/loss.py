"""The softmax output and its loss: mean negative log-likelihood per token.

For N = B*T predictions with logits y_n (V,) and target words w_n::

    loss = (1/N) sum_n [ log sum_v exp(y_{n,v}) - y_{n,w_n} ]     perplexity = exp(loss)
    dloss/dy_n = (softmax(y_n) - onehot(w_n)) / N

The paper's objective for a window is the sum over its T steps of the batch-mean
NLL, i.e. T * loss. The trainer (``optim.sgd_step``) folds that factor T into the
update, so that lr = 1 means what it meant in the paper (see ``optim.py`` and
the README's "Conventions").
"""

from __future__ import annotations

import math
from typing import Any

from .backend import Backend

Array = Any


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL); inf where that exceeds the largest float (a diverging run's loss
    of ~710 and more), instead of an OverflowError."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def target_log_probs(y: Array, w: Array, backend: Backend) -> tuple[Array, Array]:
    """log softmax(y)[n, w_n] (N,) for logits ``y`` (N, V) and targets ``w`` (N,).

    Works in place: on return ``y`` holds exp(y - max y) (unnormalised
    probabilities) and the second value is their row sums (N, 1), so that
    ``y / sums`` is the softmax without another exponential.
    """
    xp = backend.xp
    N = y.shape[0]
    y -= y.max(axis=1, keepdims=True)              # shift for stability    (N, V)
    y_w = y[xp.arange(N), w]                       # shifted target logits  (N,)
    xp.exp(y, out=y)
    # Row sums Z_n e^{-max}, as a matrix-vector product: BLAS sums rows ~5x faster
    # than y.sum(axis=1)
    sums = (y @ xp.ones(y.shape[1], y.dtype))[:, None]                     # (N, 1)
    return y_w.astype(xp.float64) - xp.log(sums[:, 0].astype(xp.float64)), sums


def log_softmax_nll(y: Array, w: Array, backend: Backend) -> tuple[float, Array]:
    """The mean NLL of targets ``w`` under logits ``y``, and the row sums of
    exp(y - max y) left in ``y`` (see :func:`target_log_probs`)."""
    log_p, sums = target_log_probs(y, w, backend)
    return -float(log_p.mean()), sums


def softmax_nll_and_grad(y: Array, w: Array, backend: Backend) -> tuple[float, Array]:
    """Loss and dloss/dy = (softmax(y) - onehot(w)) / N, written over ``y`` (N, V)."""
    loss, sums = log_softmax_nll(y, w, backend)
    return loss, backend.softmax_cross_entropy_grad(y, sums, w, 1.0 / y.shape[0])
