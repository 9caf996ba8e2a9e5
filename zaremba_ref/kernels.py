"""The elementwise heart of the model: the LSTM cell, dropout, the softmax
cross-entropy gradient and the SGD update.

Every function here is the NumPy twin of a CUDA kernel of the same name (see
``cuda_kernels.py``): the same equation, the same argument order, the same helper
names (``sigmoid``, ``dsigmoid`` from the output, ``dtanh`` from the output). The
CPU path calls these functions; the GPU path calls the kernels. The matrix
products live outside (in ``lstm.py``, ``model.py``): what is here touches each
element once and never needs a BLAS call.

Gate order is the paper's: the pre-activation ``z`` (B, 4H) holds i, f, o, g in
that order, so one ``sigmoid`` covers the first 3H columns and one ``tanh`` the
last H.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """sigm(x) = 1 / (1 + exp(-x)), written as 0.5 * tanh(0.5 x) + 0.5.

    The tanh form never overflows (exp(-x) does for x < -88 in float32), and the
    CUDA helper of the same name uses the same formula.
    """
    np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def dsigmoid(y: np.ndarray) -> np.ndarray:
    """d sigm(x)/dx written with the output y = sigm(x): y (1 - y)."""
    return y * (1 - y)


def dtanh(y: np.ndarray) -> np.ndarray:
    """d tanh(x)/dx written with the output y = tanh(x): 1 - y^2."""
    return 1 - y * y


def lstm_cell_forward(z: np.ndarray, c_prev: np.ndarray, c: np.ndarray,
                      h: np.ndarray) -> None:
    """One LSTM step, elementwise part (paper, section 3.1)::

        (i, f, o, g) = (sigm, sigm, sigm, tanh)(z)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    z (B, 4H): gate pre-activations, overwritten with the gates i, f, o, g (the
    backward pass reads them back). c_prev (B, H) is read; c, h (B, H) are written.
    """
    H = c.shape[-1]
    sigmoid(z[:, :3 * H], out=z[:, :3 * H])              # i, f, o   (B, 3H)
    np.tanh(z[:, 3 * H:], out=z[:, 3 * H:])               # g         (B, H)
    i, f, o, g = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    np.multiply(f, c_prev, out=c)                        # c = f * c_{t-1}
    c += i * g                                           #   + i * g
    np.tanh(c, out=h)
    h *= o                                               # h = o * tanh(c)


def lstm_cell_backward(gates: np.ndarray, c_prev: np.ndarray, c: np.ndarray,
                       dh: np.ndarray, dc_next: np.ndarray, dz: np.ndarray,
                       dc_prev: np.ndarray) -> None:
    """Backward through one LSTM step, elementwise part.

    With dh = dL/dh_t (from above and from step t+1) and dc_next = dL/dc_t carried
    back from step t+1::

        dc      = dc_next + dh * o * (1 - tanh(c_t)^2)
        do      = dh * tanh(c_t)
        di, df, dg = dc * g, dc * c_{t-1}, dc * i
        dc_prev = dc * f                                     (dL/dc_{t-1})
        dz      = (di * i(1-i), df * f(1-f), do * o(1-o), dg * (1-g^2))

    gates (B, 4H) are the saved i, f, o, g; tanh(c_t) is recomputed rather than
    stored. dz (B, 4H) and dc_prev (B, H) are written.
    """
    H = c.shape[-1]
    i, f, o, g = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    tanh_c = np.tanh(c)
    dc = dh * o
    dc *= dtanh(tanh_c)
    dc += dc_next                                        # dL/dc_t            (B, H)
    np.multiply(dc, g, out=dz[:, :H])                    # di
    np.multiply(dc, c_prev, out=dz[:, H:2 * H])          # df
    np.multiply(dh, tanh_c, out=dz[:, 2 * H:3 * H])      # do
    dz[:, :3 * H] *= dsigmoid(gates[:, :3 * H])          # through sigm: d z_i, d z_f, d z_o
    np.multiply(dc, i, out=dz[:, 3 * H:])                # dg
    dz[:, 3 * H:] *= dtanh(g)                            # through tanh: d z_g
    np.multiply(dc, f, out=dc_prev)                      # through c = f * c_{t-1}


def dropout(x: np.ndarray, mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """D(x) = x * mask, mask already scaled: 0 or 1/(1-p) (inverted dropout).

    The same product is its own backward: dL/dx = dL/dD(x) * mask.
    """
    return np.multiply(x, mask, out=out)


def softmax_cross_entropy_grad(e: np.ndarray, sums: np.ndarray, targets: np.ndarray,
                               scale: float) -> np.ndarray:
    """dL/dy = scale * (softmax(y) - onehot(targets)), in place over ``e``.

    e (N, V) holds exp(y - max y) and sums (N, 1) its row sums, so softmax(y) =
    e / sums; normalising and scaling are one pass. targets (N,) ints.
    """
    np.multiply(e, scale / sums, out=e)
    e[np.arange(e.shape[0]), targets] -= scale
    return e


def sgd_update(p: np.ndarray, g: np.ndarray, lr_scale: float) -> None:
    """p <- p - lr_scale * g, in place (lr_scale = lr * clip factor * loss scale)."""
    p -= lr_scale * g
