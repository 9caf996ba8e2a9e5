"""How far back the training signal reaches: the gradient of the window's last loss
with respect to every hidden and cell state before it, by the model's own backward.

For a window of T steps, l_T is the batch-mean NLL of the last target only::

    l_T = (1/B) sum_b NLL(softmax(y_T[b]), w_{T+1}[b])        y_T = W_s h^L_T + b_s

(no dropout: the model as evaluated). :func:`gradient_path` returns, for l = 1..L and
t = 1..T, the Frobenius norm over (B, H) of the total derivatives

    d l_T / d h^l_t      h^l_t feeds layer l+1 at t (or the softmax, l = L) and step t+1
    d l_T / d c^l_t      c^l_t feeds h^l_t = o_t * tanh(c^l_t) and c^l_{t+1}

by every path. Read against the distance k = T - t, they show how fast the signal
fades along the recurrence, and how much longer it lives in the cell (the "constant
error carousel": dc_{t-1} = dc_t * f_t, no squashing on the way).

How (the model's own BPTT, not a second one): ``model._forward`` runs the window and
keeps each layer's cache; the output layer and the loss run on the B rows of step T
only (``model._logits``, ``loss.softmax_nll_and_grad``), so dl_T/dy is zero at every
other step. Then, layer by layer from the top, step by step from T down to 1,
``lstm.lstm_backward`` runs on a one-step slice of the layer's cache, with the
gradient arriving from above at step t and the (dh, dc) carried back from step t+1.
It returns what step t carries back to t-1 and the gradient into the layer below at
step t, which is what the walk needs; in between we read off the totals at t::

    dl_T/dh^l_t = dh_out_t + dh_carried          (from above at t, and from step t+1)
    dl_T/dc^l_t = dc_carried + dl_T/dh^l_t * o_t * (1 - tanh(c^l_t)^2)

the second being the first line of the cell's backward (``kernels.lstm_cell_backward``),
which computes it inside and does not hand it out. The weight gradients that each
one-step call also computes are dropped: that is the price of reusing it unchanged
(the cost is that of one backward pass through the window).

``zaremba_ref.gradient_path`` is the function; import this module's other names with
``from zaremba_ref.gradient_path import path_gradients, path_norms`` (the full
arrays, the initial state's gradient and the final state, for a caller that carries
the state from window to window, as ``examples/gradient_path.py`` does).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .backend import CPU, Backend
from .checks import check_call
from .kernels import dtanh
from .loss import softmax_nll_and_grad
from .lstm import LayerCache, lstm_backward
from .model import _forward, _logits, num_layers_of, softmax_key

Array = Any


class PathGradients(NamedTuple):
    """The total derivatives of l_T along the window (arrays of the backend)."""

    loss: float     # l_T, the batch-mean NLL of the last target
    dh: Array       # (L, T, B, H)  dh[l-1, t-1] = d l_T / d h^l_t
    dc: Array       # (L, T, B, H)  dc[l-1, t-1] = d l_T / d c^l_t
    dstate: list    # [(d l_T/d h^l_0, d l_T/d c^l_0)] * L: the initial state (partial:
                    # h_0 is given, not o * tanh(c_0), so dc_0 has no h-path term)
    final_state: list  # [(h^l_T, c^l_T)] * L, to carry into the next window


def _step(cache: LayerCache, t: int) -> LayerCache:
    """Step t (1..T) of a layer's cache as a window of one step (views, no copies)."""
    return LayerCache(x=cache.x[t - 1:t], gates=cache.gates[t - 1:t],
                      h=cache.h[t - 1:t + 1], c=cache.c[t - 1:t + 1],
                      h_rec=cache.h_rec[t - 1:t], h_mask=None)


def path_gradients(params: dict[str, Array], inputs: Array, targets: Array,
                   state: list | None = None, *, backend: Backend = CPU) -> PathGradients:
    """d l_T / d h^l_t and d l_T / d c^l_t for every layer l and step t of the window,
    as full arrays (see the module docstring). Arguments as for
    :func:`zaremba_ref.loss_only`: inputs, targets (B, T) ids; state [(h, c)] * L,
    each (B, H), zeros if None. No dropout."""
    state = check_call(params, inputs, targets, state, None, 0.0, "none", None, None,
                       backend)                          # zeros if state is None
    xp = backend.xp
    L = num_layers_of(params)
    B, T = inputs.shape
    caches, hD = _forward(params, inputs, state, None, backend)  # no masks: no dropout
    H, dtype = hD.shape[1], hD.dtype

    # The loss of step T only: the last B rows of the time-major h^L    (B, H)
    y = _logits(params, hD[(T - 1) * B:], backend)      # y_T                  (B, V)
    w = targets[:, T - 1].copy()                        # the last targets, contiguous (B,)
    loss, dy = softmax_nll_and_grad(y, w, backend)      # (softmax - onehot) / B
    dh_out = xp.zeros((T, B, H), dtype)                 # dl_T/dh^L_t from the softmax: step T only
    dh_out[T - 1] = dy @ params[softmax_key(params)]    # (B, V) @ (V, H)

    dh_all = xp.empty((L, T, B, H), dtype)
    dc_all = xp.empty((L, T, B, H), dtype)
    dstate = [None] * L
    for l in range(L, 0, -1):                           # from the top layer down
        cache = caches[l - 1]
        W_x, W_h = params[f"l{l}.W_x"], params[f"l{l}.W_h"]
        dh_below = xp.zeros((T, B, H), dtype)           # dl_T/dh^{l-1}_t, into the layer below
        dh_next = xp.zeros((B, H), dtype)               # dl_T/dh_t via step t+1: none at T
        dc_next = xp.zeros((B, H), dtype)               # dl_T/dc_t via c_{t+1}: none at T
        for t in range(T, 0, -1):
            dh = dh_out[t - 1] + dh_next                # total dl_T/dh^l_t       (B, H)
            o = cache.gates[t - 1, :, 2 * H:3 * H]      # o_t (gates i, f, o, g)  (B, H)
            # total dl_T/dc^l_t: the cell backward's first line, dc = dc_next + dh * o
            # * (1 - tanh(c_t)^2), computed inside the kernel and not handed out
            dc = dc_next + dh * o * dtanh(xp.tanh(cache.c[t]))
            dh_all[l - 1, t - 1], dc_all[l - 1, t - 1] = dh, dc
            dx, _, _, _, dh_next, dc_next = lstm_backward(   # step t alone -> t-1
                _step(cache, t), W_x, W_h, dh_out[t - 1:t], dh_next, dc_next, backend)
            dh_below[t - 1] = dx[0]                     # dl_T/dx_t = dl_T/dh^{l-1}_t
        dstate[l - 1] = (dh_next, dc_next)              # what step 1 carries back to t = 0
        dh_out = dh_below
    final_state = [(cache.h[-1].copy(), cache.c[-1].copy()) for cache in caches]
    return PathGradients(loss, dh_all, dc_all, dstate, final_state)


def gradient_path(params: dict[str, Array], inputs: Array, targets: Array,
                  state: list | None = None, *, backend: Backend = CPU
                  ) -> dict[str, np.ndarray]:
    """How far back the last word's loss reaches in the window.

    inputs, targets (B, T) ids; state [(h, c)] * L, each (B, H), zeros if None.
    Returns {"h": (L, T), "c": (L, T)}, float64 NumPy arrays with::

        h[l-1, t-1] = || d l_T / d h^l_t ||_F      c[l-1, t-1] = || d l_T / d c^l_t ||_F

    the Frobenius norm over (B, H) of the total derivative (every path) of l_T, the
    batch-mean NLL of the window's last target, without dropout. Column T - 1 - k is
    distance k from the loss. Computed by the model's own backward pass
    (:func:`path_gradients`, the module docstring says how).
    """
    return path_norms(path_gradients(params, inputs, targets, state, backend=backend), backend)


def path_norms(g: PathGradients, backend: Backend = CPU) -> dict[str, np.ndarray]:
    """{"h": (L, T), "c": (L, T)}: the Frobenius norms over (B, H) of ``g.dh`` and
    ``g.dc``, as float64 NumPy arrays (squared in float64: no underflow)."""
    def norm(a):
        a = a.astype(np.float64)                        # (L, T, B, H)
        return np.sqrt(backend.to_numpy((a * a).sum(axis=(2, 3))))    # (L, T)
    return {"h": norm(g.dh), "c": norm(g.dc)}
