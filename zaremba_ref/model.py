"""The language model of the paper, section 3: embedding -> D -> L LSTM layers -> D ->
linear -> softmax, with its gradient by hand.

Notation (paper): h^0_t = embedding of word t; for l = 1..L::

    h^l_t, c^l_t = LSTM_l( D(h^{l-1}_t), h^l_{t-1}, c^l_{t-1} )      (lstm.py)
    y_t = W_s D(h^L_t) + b_s                                          (V,)
    loss = mean_t,b NLL(softmax(y_t), w_{t+1})                        (loss.py)

Parameters (a dict of named arrays, PyTorch's layout, the paper's gate order i, f, o, g)::

    embedding   (V, H)       h^0_t = embedding[w_t]
    l{l}.W_x    (4H, H)      input weights of layer l (from D(h^{l-1}_t))
    l{l}.W_h    (4H, H)      recurrent weights of layer l (from h^l_{t-1})
    l{l}.b_x    (4H,)        input bias     } both kept so weights map one to one
    l{l}.b_h    (4H,)        recurrent bias } onto PyTorch and the paper's Torch code
    softmax.W   (V, H)       absent when the embeddings are tied (below)
    softmax.b   (V,)

Beyond the paper, each a small function here or in ``dropout.py``, the paper's path
untouched when they are off:

* variational dropout (Gal & Ghahramani 2016), ``mode="variational"``: one mask per
  connection for the whole window, the recurrent h^l_{t-1} included
  (``_time_major_masks`` repeats it over the steps; the math is naive mode's);
* tied embeddings (Press & Wolf 2017; Inan et al. 2017), ``init_params(...,
  tie_weights=True)``: no ``softmax.W``; y_t = E D(h^L_t) + b_s (``softmax_key``);
* weight drop (Merity et al. 2017), ``weight_masks``: layer l runs with W_h^l * M_l
  (``drop_weights``).

Inside, arrays are time-major (T, B, ...) so that each step is a contiguous block;
the API takes and returns batch-major (B, T) like the data.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .backend import CPU, Backend
from .checks import check_call, check_weight_masks
from .dropout import draw_masks, draw_weight_masks
from .loss import log_softmax_nll, softmax_nll_and_grad
from .lstm import lstm_backward, lstm_forward

Array = Any
State = list  # [(h, c)] * L, each (B, H)


def param_names(num_layers: int, tie_weights: bool = False) -> list[str]:
    """The keys of a parameter dict with ``num_layers`` layers, in a fixed order
    (without ``softmax.W`` when the embeddings are tied)."""
    names = ["embedding"]
    for l in range(1, num_layers + 1):
        names += [f"l{l}.W_x", f"l{l}.W_h", f"l{l}.b_x", f"l{l}.b_h"]
    return names + (["softmax.b"] if tie_weights else ["softmax.W", "softmax.b"])


def init_params(vocab_size: int, hidden_size: int, num_layers: int, init_scale: float = 0.1,
                seed: int | None = 0, dtype: Any = np.float32,
                backend: Backend = CPU, tie_weights: bool = False) -> dict[str, Array]:
    """Parameters drawn uniform(-init_scale, init_scale), all of them, biases and
    embedding included, as the paper's code does. Drawn on the host with NumPy
    (so a seed gives the same model on every backend), then moved to ``backend``.
    ``tie_weights``: no ``softmax.W``, the embedding serves as W_s (see softmax_key)."""
    if min(vocab_size, hidden_size, num_layers) < 1 or init_scale < 0:
        raise ValueError("vocab_size, hidden_size, num_layers must be >= 1 and "
                         f"init_scale >= 0, got {vocab_size}, {hidden_size}, {num_layers}, "
                         f"{init_scale}")
    V, H = vocab_size, hidden_size
    shapes = {"embedding": (V, H)}                   # drawn in param_names' order
    for l in range(1, num_layers + 1):
        shapes.update({f"l{l}.W_x": (4 * H, H), f"l{l}.W_h": (4 * H, H),
                       f"l{l}.b_x": (4 * H,), f"l{l}.b_h": (4 * H,)})
    if not tie_weights:
        shapes["softmax.W"] = (V, H)
    shapes["softmax.b"] = (V,)
    rng = np.random.default_rng(seed)
    return {k: backend.asarray(rng.uniform(-init_scale, init_scale, shape), dtype=dtype)
            for k, shape in shapes.items()}


def num_layers_of(params: dict[str, Array]) -> int:
    """L, counted from the keys of ``params``."""
    return sum(1 for k in params if k.endswith(".W_h"))


def zero_state(params: dict[str, Array], batch_size: int, backend: Backend = CPU) -> State:
    """The all-zero state [(h_0, c_0)] * L, each (B, H), that starts every pass."""
    H = params["embedding"].shape[1]
    z = lambda: backend.xp.zeros((batch_size, H), dtype=params["embedding"].dtype)  # noqa: E731
    return [(z(), z()) for _ in range(num_layers_of(params))]


def _forward(params, inputs, state, masks, backend):
    """Embedding, D, the L layers, D. Returns the per-layer caches and D(h^L) (T*B, H)."""
    L = num_layers_of(params)
    vertical = masks[:L + 1] if masks else None         # D on h^0 .. h^L   (T, B, H) each
    recurrent = masks[L + 1:] if masks else []           # naive mode only
    x = params["embedding"][inputs.T]                    # h^0_t            (T, B, H)
    caches = []
    for l in range(1, L + 1):
        if vertical:
            x = backend.dropout(x, vertical[l - 1], out=backend.empty(x.shape, x.dtype))  # D(h^{l-1})
        h0, c0 = state[l - 1]
        cache = lstm_forward(params[f"l{l}.W_x"], params[f"l{l}.W_h"], params[f"l{l}.b_x"],
                             params[f"l{l}.b_h"], x, h0, c0, backend,
                             h_mask=recurrent[l - 1] if recurrent else None)
        caches.append(cache)
        x = cache.h[1:]                                  # h^l_1 .. h^l_T   (T, B, H)
    if vertical:
        x = backend.dropout(x, vertical[-1], out=backend.empty(x.shape, x.dtype))  # D(h^L)
    T, B, H = x.shape
    return caches, x.reshape(T * B, H)


def softmax_key(params: dict[str, Array]) -> str:
    """The key of W_s in y = W_s D(h^L) + b_s: ``softmax.W``, or ``embedding`` when the
    input and output embeddings are tied (Press & Wolf 2017; Inan et al. 2017)::

        y_t = E D(h^L_t) + b_s          dL/dE = sum of its two uses (rows, and W_s)
    """
    return "softmax.W" if "softmax.W" in params else "embedding"


def _logits(params, hD, backend):
    """The output layer, y = W_s D(h^L) + b_s, for D(h^L) (T*B, H): logits (T*B, V)."""
    W_s = params[softmax_key(params)]
    y = backend.xp.matmul(hD, W_s.T, out=backend.empty((len(hD), len(W_s)), hD.dtype))  # (T*B, V)
    y += params["softmax.b"]
    return y


def _time_major_masks(masks, mode, p, rng, params, inputs, backend):
    """The caller's masks, or masks drawn from ``rng``, as (T, B, H) views. A
    variational mask (B, H) becomes one view repeated over the T steps (stride 0):
    the same mask at every step, through naive mode's code."""
    B, T = inputs.shape
    if masks is None:
        E = params["embedding"]
        masks = draw_masks(rng, p, mode, num_layers_of(params), B, T, E.shape[1], E.dtype)
    if mode == "variational":
        return [backend.xp.broadcast_to(m, (T, B, m.shape[1])) for m in masks]
    return [m.transpose(1, 0, 2) for m in masks]


def drop_weights(params: dict[str, Array], weight_masks: Sequence[Array],
                 backend: Backend = CPU) -> dict[str, Array]:
    """Weight drop (Merity et al. 2017; DropConnect on the recurrent weights)::

        W~_h^l = W_h^l * M_l        M_l (4H, H), 0 or 1/(1-p), drawn once per window

    Layer l runs with W~_h^l at every step; by the chain rule dL/dW_h^l = dL/dW~_h^l
    * M_l (the same product, as for any dropout). Returns ``params`` with each W_h
    replaced (new arrays; ``params`` itself is untouched), or ``params`` if no masks.
    """
    dropped = {f"l{l}.W_h": backend.dropout(params[f"l{l}.W_h"], M,
                                            out=backend.empty(M.shape, M.dtype))
               for l, M in enumerate(weight_masks, start=1)}
    return dict(params, **dropped) if dropped else params


def loss_and_grads(params: dict[str, Array], inputs: Array, targets: Array,
                   state: State | None = None, masks: Sequence[Array] | None = None, *,
                   dropout: float = 0.0, mode: str = "zaremba", rng: Any = None,
                   dstate: State | None = None, backend: Backend = CPU,
                   weight_masks: Sequence[Array] | None = None, weight_drop: float = 0.0):
    """Forward and backward through one window of T steps.

    inputs, targets (B, T) int: word ids, targets[b, t] the word after inputs[b, t].
    state: [(h_0, c_0)] * L, each (B, H), carried from the previous window (zeros if None).
    masks: the dropout masks (see ``dropout.py``), (B, T, H) each ((B, H) in
      variational mode), already scaled; if None and ``dropout`` > 0 they are drawn
      from ``rng``. ``mode``: zaremba|naive|variational|none.
    dstate: optional [(dL/dh_T, dL/dc_T)] * L from beyond the window (gradient checks).
    weight_masks: weight drop's [M_1 .. M_L], (4H, H) each, already scaled; if None and
      ``weight_drop`` > 0 they are drawn from ``rng`` (after ``masks``). The gradient
      ``grads["l{l}.W_h"]`` is with respect to W_h itself (so it is masked).

    Returns (loss, grads, final_state): loss the mean NLL per token; grads keyed like
    params, plus ``grads["state"]`` = [(dL/dh_0, dL/dc_0)] * L; final_state [(h_T, c_T)] * L.
    """
    state = check_call(params, inputs, targets, state, masks, dropout, mode, rng, dstate,
                       backend)
    check_weight_masks(params, weight_masks, weight_drop, rng)
    xp = backend.xp
    L = num_layers_of(params)
    tm_masks = _time_major_masks(masks, mode, dropout, rng, params, inputs, backend)
    if weight_masks is None:
        E = params["embedding"]
        weight_masks = draw_weight_masks(rng, weight_drop, L, E.shape[1], E.dtype)
    net = drop_weights(params, weight_masks, backend)   # params, or W_h * M_l (weight drop)
    caches, hD = _forward(net, inputs, state, tm_masks, backend)

    # Output layer and loss
    y = _logits(net, hD, backend)                       # (T*B, V)
    W_s = net[softmax_key(net)]
    w = targets.T.ravel()                               # time-major like y       (T*B,)
    loss, dy = softmax_nll_and_grad(y, w, backend)      # dy = (softmax - onehot) / N
    B, T = inputs.shape
    H = hD.shape[1]
    grads = {softmax_key(net): xp.matmul(dy.T, hD, out=backend.empty(W_s.shape, dy.dtype)),  # (V, H)
             "softmax.b": xp.ones(len(dy), dy.dtype) @ dy}  # sum over rows, by BLAS  (V,)
    dx = backend.empty((T, B, H), dy.dtype)             # dL/dD(h^L)              (T, B, H)
    xp.matmul(dy, W_s, out=dx.reshape(T * B, H))

    # Down through the layers, each one backward through time
    grads["state"] = [None] * L
    for l in range(L, 0, -1):
        if tm_masks:
            backend.dropout(dx, tm_masks[l], out=dx)    # through D(h^l): dx * mask
        dh_T, dc_T = dstate[l - 1] if dstate is not None else (xp.zeros((B, H), dx.dtype),) * 2
        dx, dW_x, dW_h, db, dh_0, dc_0 = lstm_backward(
            caches[l - 1], net[f"l{l}.W_x"], net[f"l{l}.W_h"], dx, dh_T, dc_T, backend)
        grads.update({f"l{l}.W_x": dW_x, f"l{l}.W_h": dW_h, f"l{l}.b_x": db, f"l{l}.b_h": db.copy()})
        grads["state"][l - 1] = (dh_0, dc_0)
    if tm_masks:
        backend.dropout(dx, tm_masks[0], out=dx)        # through D(h^0)
    dE = grads.get("embedding")                         # tied: dL/dW_s is already there
    dE = backend.zeros(params["embedding"].shape, dx.dtype) if dE is None else dE
    backend.scatter_add(dE, inputs.T.ravel(), dx.reshape(T * B, H))  # rows of used words
    grads["embedding"] = dE
    for l, M in enumerate(weight_masks, start=1):       # through W_h * M_l: dL/dW_h * M_l
        backend.dropout(grads[f"l{l}.W_h"], M, out=grads[f"l{l}.W_h"])
    final_state = [(cache.h[-1].copy(), cache.c[-1].copy()) for cache in caches]
    return loss, grads, final_state


def _eval_logits(params, inputs, state, backend):
    """Logits y (T*B, V) without dropout, and the final state."""
    caches, h = _forward(params, inputs, state, None, backend)   # no masks: no dropout
    return _logits(params, h, backend), [(cache.h[-1].copy(), cache.c[-1].copy())
                                         for cache in caches]


def forward(params: dict[str, Array], inputs: Array, state: State | None = None, *,
            backend: Backend = CPU):
    """Evaluation forward without dropout: the logits y (T*B, V), time-major (row
    t*B + b is batch row b at step t), and the final state [(h_T, c_T)] * L."""
    state = check_call(params, inputs, None, state, None, 0.0, "none", None, None, backend)
    return _eval_logits(params, inputs, state, backend)


def loss_only(params: dict[str, Array], inputs: Array, targets: Array,
              state: State | None = None, *, backend: Backend = CPU):
    """Evaluation: the mean NLL of one window without dropout, and the final state.

    The same forward as :func:`loss_and_grads` with no masks and no backward.
    Returns (loss, final_state).
    """
    state = check_call(params, inputs, targets, state, None, 0.0, "none", None, None, backend)
    y, final_state = _eval_logits(params, inputs, state, backend)
    loss, _ = log_softmax_nll(y, targets.T.ravel(), backend)   # time-major, as y  (T*B,)
    return loss, final_state
