"""One LSTM layer over a window of T steps: forward, and backward through time by hand.

Paper, section 3.1, for layer l and time t (T_{2n,4n} is an affine map)::

    (i, f, o, g) = (sigm, sigm, sigm, tanh) T_{2n,4n}( D(h^{l-1}_t), h^l_{t-1} )
    c^l_t = f * c^l_{t-1} + i * g
    h^l_t = o * tanh(c^l_t)

We write the affine map with PyTorch's weight layout and two biases::

    z_t = W_x x_t + b_x + W_h h_{t-1} + b_h          x_t = D(h^{l-1}_t), z_t (B, 4H)

The input part ``W_x x_t`` does not depend on the recurrence, so it is one matrix
product over all T steps at once; only ``W_h h_{t-1}`` goes step by step. The
weight gradients are likewise one product each over the whole window.

Indexing: ``h`` and ``c`` are (T+1, B, H) with ``h[0] = h_0`` the carried state, so
``h[t]`` is the paper's h_t for t = 1..T. ``x``, ``z`` and ``dh_out`` are (T, ...)
and hold step t at index t - 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backend import Backend

Array = Any  # a NumPy or CuPy array


@dataclass
class LayerCache:
    """What the backward pass needs from the forward pass of one layer."""

    x: Array        # (T, B, H_in)  the layer's input D(h^{l-1}_t)
    gates: Array    # (T, B, 4H)    i, f, o, g at each step
    h: Array        # (T+1, B, H)   h[0] = h_0, h[t] = h_t
    c: Array        # (T+1, B, H)   c[0] = c_0, c[t] = c_t
    h_rec: Array    # (T, B, H)     what W_h multiplied: h_{t-1}, or D(h_{t-1}) (naive, variational)
    h_mask: Array | None  # (T, B, H) the recurrent dropout mask (naive, variational), else None


def lstm_forward(W_x: Array, W_h: Array, b_x: Array, b_h: Array, x: Array,
                 h0: Array, c0: Array, backend: Backend,
                 h_mask: Array | None = None) -> LayerCache:
    """Run one layer over the window.

    W_x (4H, H_in), W_h (4H, H), b_x, b_h (4H,); x (T, B, H_in); h0, c0 (B, H).
    h_mask (T, B, H), only in ``naive`` and ``variational`` mode: the recurrent input
    becomes D(h_{t-1}) = h_{t-1} * h_mask[t-1], a fresh mask each step in naive mode
    (the placement the paper argues against), one mask repeated over the steps in
    variational mode (a stride-0 view; Gal & Ghahramani 2016). The outputs h_1..h_T
    are ``cache.h[1:]``; the final state is ``(cache.h[-1], cache.c[-1])``.
    """
    xp = backend.xp
    T, B, H_in = x.shape
    H = h0.shape[1]
    z = backend.empty((T, B, 4 * H), x.dtype)
    xp.matmul(x.reshape(T * B, H_in), W_x.T, out=z.reshape(T * B, 4 * H))  # W_x x_t, all t  (T, B, 4H)
    z += b_x + b_h
    h = backend.empty((T + 1, B, H), x.dtype)
    c = backend.empty((T + 1, B, H), x.dtype)
    h[0], c[0] = h0, c0
    h_rec = h[:-1] if h_mask is None else backend.empty((T, B, H), x.dtype)
    for t in range(1, T + 1):
        if h_mask is not None:  # naive, variational: dropout on the recurrent connection
            backend.dropout(h[t - 1], h_mask[t - 1], out=h_rec[t - 1])
        # + W_h h_{t-1} on column vectors, as in the paper: (4H, H) @ (H, B), back to
        # (B, 4H). As fast as h_{t-1} @ W_h^T from a contiguous copy of W_h^T, without
        # the copy; through the transposed view, h @ W_h.T, ~1.5x slower at these shapes.
        z[t - 1] += (W_h @ h_rec[t - 1].T).T                   #                  (B, 4H)
        backend.lstm_cell_forward(z[t - 1], c[t - 1], c[t], h[t])  # z -> gates; c_t, h_t
    return LayerCache(x=x, gates=z, h=h, c=c, h_rec=h_rec, h_mask=h_mask)


def lstm_backward(cache: LayerCache, W_x: Array, W_h: Array, dh_out: Array,
                  dh_T: Array, dc_T: Array, backend: Backend):
    """Backpropagation through time for one layer.

    dh_out (T, B, H): dL/dh_t arriving from above (the next layer or the softmax);
    dh_T, dc_T (B, H): dL/dh_T, dL/dc_T arriving through the final state (zero in
    truncated BPTT, non-zero when a later window's loss is included).

    Returns dx (T, B, H_in), dW_x (4H, H_in), dW_h (4H, H), db (4H,) (the same for
    b_x and b_h, since z depends on their sum), dh_0 and dc_0 (B, H).
    """
    xp = backend.xp
    x, gates, h, c = cache.x, cache.gates, cache.h, cache.c
    T, B, H_in = x.shape
    H = h.shape[2]
    dz = backend.empty(gates.shape, gates.dtype)       # dL/dz_t          (T, B, 4H)
    dh_next = dh_T                                     # dL/dh_t via step t+1
    dc_next, dc_prev = dc_T.copy(), xp.empty_like(dc_T)
    for t in range(T, 0, -1):
        dh = dh_out[t - 1] + dh_next                   # h_t feeds the layer above and step t+1
        backend.lstm_cell_backward(gates[t - 1], c[t - 1], c[t], dh, dc_next,
                                   dz[t - 1], dc_prev)
        dc_next, dc_prev = dc_prev, dc_next            # dL/dc_{t-1} becomes the carried dc
        dh_next = dz[t - 1] @ W_h                      # through W_h h_{t-1}   (B, H)
        if cache.h_mask is not None:                   # naive, variational: through D(h_{t-1})
            backend.dropout(dh_next, cache.h_mask[t - 1], out=dh_next)
    dZ, dtype = dz.reshape(T * B, 4 * H), dz.dtype
    dW_x = xp.matmul(dZ.T, x.reshape(T * B, H_in),     # sum_t dz_t x_t^T        (4H, H_in)
                     out=backend.empty((4 * H, H_in), dtype))
    dW_h = xp.matmul(dZ.T, cache.h_rec.reshape(T * B, H),  # sum_t dz_t h_{t-1}^T  (4H, H)
                     out=backend.empty((4 * H, H), dtype))
    db = xp.ones(T * B, dtype) @ dZ                    # sum_t dz_t, by BLAS     (4H,)
    dx = backend.empty((T, B, H_in), dtype)            # dL/dx_t for all t       (T, B, H_in)
    xp.matmul(dZ, W_x, out=dx.reshape(T * B, H_in))
    return dx, dW_x, dW_h, db, dh_next, dc_next
