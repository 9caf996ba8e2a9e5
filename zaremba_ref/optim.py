"""Training arithmetic: the global gradient norm, clipping, the SGD step, the lr schedule.

Paper, section 4.1: plain SGD; the gradients are clipped so that their norm,
taken over all parameters together, is at most ``max_norm``::

    s = min(1, max_norm / ||g||)            ||g|| = sqrt(sum_p sum(g_p^2))
    p <- p - lr * s * g_p                   for every parameter p

Loss scaling: ``loss_and_grads`` gives gradients of the mean NLL per token. The
paper's objective is the sum over the T steps of the window of the batch-mean NLL,
T times larger, so its gradient is ``loss_scale * g`` with loss_scale = T. The
factor enters the norm and the update as one scalar, never a pass over the arrays.
"""

from __future__ import annotations

import math
from typing import Any

from .backend import CPU, Backend


def global_norm(grads: dict[str, Any], names: list[str], backend: Backend = CPU) -> float:
    """||g|| = sqrt(sum over ``names`` of sum(g^2)), one norm over all parameters."""
    xp = backend.xp
    squares = sum(xp.vdot(grads[k].ravel(), grads[k].ravel()) for k in names)  # on the device
    return math.sqrt(float(squares))                                            # one sync


def clip_factor(norm: float, max_norm: float) -> float:
    """s = min(1, max_norm / norm): the factor that brings the norm down to max_norm."""
    return 1.0 if norm <= max_norm else max_norm / norm


def sgd_step(params: dict[str, Any], grads: dict[str, Any], lr: float, max_norm: float,
             loss_scale: float = 1.0, backend: Backend = CPU,
             rows: dict[str, Any] | None = None) -> float:
    """Clip the global norm of ``loss_scale * grads`` to ``max_norm``, then
    p <- p - lr * s * loss_scale * g for every parameter. Returns the norm before
    clipping (of the scaled gradient, the one the paper clips).

    ``rows``: {name: row ids} for gradients that are zero outside those rows (the
    embedding's, outside the words of the window): the update touches only them. The
    result is the same to the bit (a zero row leaves its parameters as they are) for a
    fraction of the memory traffic (V = 10,000 rows, a window has at most B*T words).
    """
    names = list(params)
    norm = loss_scale * global_norm(grads, names, backend)
    s = clip_factor(norm, max_norm)
    rows = rows or {}
    for k in names:
        if k in rows:
            p, r = params[k], rows[k]
            p_r = p[r]                                   # the used rows, a copy
            backend.sgd_update(p_r, grads[k][r], lr * s * loss_scale)
            p[r] = p_r
        else:
            backend.sgd_update(params[k], grads[k], lr * s * loss_scale)
    return norm


def learning_rate(epoch: int, lr: float, decay_start: int, decay: float) -> float:
    """lr for 1-based ``epoch``: ``lr`` for the first ``decay_start`` epochs, then
    divided by ``decay`` at each epoch after (paper: small 4 then /2, medium 6 then
    /1.2, large 14 then /1.15)."""
    return lr / decay ** max(0, epoch - decay_start)
