"""The elementwise heart of the model: the LSTM cell, dropout, the softmax
cross-entropy gradient and the SGD update.

Every function here is the NumPy twin of a CUDA kernel of the same name, defined
right below it as plain data (a :class:`KernelSpec`, the arguments of
``cupy.ElementwiseKernel``): the same equation, the same order of operations, the
same helper names (``sigmoid``, ``dsigmoid`` from the output, ``dtanh`` from the
output; their CUDA versions are in :data:`CUDA_PREAMBLE`). The CPU path calls these
functions; the GPU path (``cuda_backend.py``) compiles the specs with CuPy. This
module never imports cupy. The matrix products live outside (in ``lstm.py``,
``model.py``): what is here touches each element once and never needs a BLAS call.

Gate order is the paper's: the pre-activation ``z`` (B, 4H) holds i, f, o, g in
that order, so one ``sigmoid`` covers the first 3H columns and one ``tanh`` the
last H.

How to read a kernel body (CuPy's ElementwiseKernel): the body runs once per
element ``i`` of the loop shape, which is the broadcast shape of the non-``raw``
arrays. A non-raw parameter ``x`` names the element of ``x`` at ``i`` (a reference:
writing an output parameter writes the array); a ``raw`` parameter is the whole
array, indexed by hand in C order (``z[k]``); raw inputs are read-only. ``T`` is the
float type of the call (float32 or float64), ``I`` an integer type. The bodies are
tested on the CPU, compiled with the host C++ compiler (``tests/test_kernels.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class KernelSpec(NamedTuple):
    """One CUDA kernel as plain data: ``cupy.ElementwiseKernel(*spec,
    preamble=CUDA_PREAMBLE)`` builds it."""

    in_params: str    # CuPy's parameter lists, e.g. "T c_prev, int32 H"; "raw" = index by hand
    out_params: str
    operation: str    # the C++ body, run once per element i of the loop shape
    name: str         # the kernel's name (profilers show it)


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


# The device helpers of every kernel, the twins of the three functions above (the
# same formulas, in the same order). Templates, so that one text serves float and
# double; CUDA's tanh has a float overload, as <cmath>'s has on the host.
CUDA_PREAMBLE = r"""
template <typename U> __device__ U sigmoid(U x) {   // 0.5 tanh(0.5 x) + 0.5: no overflow
  const U half = 0.5;
  return tanh(x * half) * half + half;
}
template <typename U> __device__ U dsigmoid(U y) { return y * (1 - y); }  // y = sigmoid(x)
template <typename U> __device__ U dtanh(U y) { return 1 - y * y; }       // y = tanh(x)
"""


def lstm_cell_forward(z: np.ndarray, c_prev: np.ndarray, c: np.ndarray,
                      h: np.ndarray) -> None:
    """One LSTM step, elementwise part (paper, section 3.1)::

        (i, f, o, g) = (sigm, sigm, sigm, tanh)(z)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    z (B, 4H): gate pre-activations, overwritten with the gates i, f, o, g (the
    backward pass reads them back). c_prev (B, H) is read; c, h (B, H) are written.
    """
    H = c.shape[1]                                       # c is (B, H)
    # sigm(x) = 0.5 tanh(0.5 x) + 0.5 as in sigmoid(), written out so that one tanh
    # over the whole contiguous z serves all four gates (column blocks are slow views).
    ifo = z[:, :3 * H]                                   # i, f, o pre-activations (B, 3H)
    ifo *= 0.5
    np.tanh(z, out=z)                                    # tanh(x/2) | g = tanh(x) (B, 4H)
    ifo *= 0.5
    ifo += 0.5                                           # i, f, o = sigm(x)      (B, 3H)
    i, f, o, g = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
    np.multiply(f, c_prev, out=c)                        # c = f * c_{t-1}
    np.multiply(i, g, out=h)                             # i * g, with h as scratch
    c += h                                               # c = f * c_{t-1} + i * g
    np.tanh(c, out=h)
    h *= o                                               # h = o * tanh(c)


# One thread per element (b, j) of the (B, H) state. z is raw (the thread reads and
# writes its 4 gates, H apart in row b) and an output (CuPy's raw inputs are
# read-only), so the call is kernel(c_prev, H, z, c, h).
LSTM_CELL_FORWARD = KernelSpec(
    "T c_prev, int32 H",
    "raw T z, T c, T h",
    r"""
    const ptrdiff_t k = (i / H) * 4 * H + i % H;   // z[b, j]: gate i of element (b, j)
    const T i_ = sigmoid(z[k]);                    // i_: i is the thread index
    const T f = sigmoid(z[k + H]);
    const T o = sigmoid(z[k + 2 * H]);
    const T g = tanh(z[k + 3 * H]);
    z[k] = i_; z[k + H] = f; z[k + 2 * H] = o; z[k + 3 * H] = g;  // saved for backward
    c = f * c_prev + i_ * g;
    h = o * tanh(c);
    """,
    "lstm_cell_forward")


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
    H = c.shape[1]                                       # c is (B, H)
    i, f, o, g = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    tanh_c = np.tanh(c)
    dc = dh * o
    dc *= dtanh(tanh_c)
    dc += dc_next                                        # dL/dc_t            (B, H)
    np.multiply(dc, g, out=dz[:, :H])                    # di
    np.multiply(dc, c_prev, out=dz[:, H:2 * H])          # df
    np.multiply(dh, tanh_c, out=dz[:, 2 * H:3 * H])      # do
    np.multiply(dc, i, out=dz[:, 3 * H:])                # dg
    # Through the nonlinearities as one product over the whole contiguous dz (column
    # blocks are slow views): dsigmoid for i, f, o, dtanh for g.
    d = dsigmoid(gates)                                  # i', f', o' | (unused)  (B, 4H)
    d[:, 3 * H:] = dtanh(g)                              # g'                     (B, H)
    dz *= d                                              # d z_i, d z_f, d z_o, d z_g
    np.multiply(dc, f, out=dc_prev)                      # through c = f * c_{t-1}


# One thread per element (b, j); the call is kernel(gates, c_prev, c, dh, dc_next, H,
# dz, dc_prev).
LSTM_CELL_BACKWARD = KernelSpec(
    "raw T gates, T c_prev, T c, T dh, T dc_next, int32 H",
    "raw T dz, T dc_prev",
    r"""
    const ptrdiff_t k = (i / H) * 4 * H + i % H;   // gates[b, j]: gate i of element (b, j)
    const T i_ = gates[k], f = gates[k + H], o = gates[k + 2 * H], g = gates[k + 3 * H];
    const T tanh_c = tanh(c);                      // recomputed, not stored
    const T dc = dh * o * dtanh(tanh_c) + dc_next; // dL/dc_t
    dz[k] = dc * g * dsigmoid(i_);                 // d z_i
    dz[k + H] = dc * c_prev * dsigmoid(f);         // d z_f
    dz[k + 2 * H] = dh * tanh_c * dsigmoid(o);     // d z_o
    dz[k + 3 * H] = dc * i_ * dtanh(g);            // d z_g
    dc_prev = dc * f;                              // dL/dc_{t-1}
    """,
    "lstm_cell_backward")


def dropout(x: np.ndarray, mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """D(x) = x * mask, mask already scaled: 0 or 1/(1-p) (inverted dropout).

    The same product is its own backward: dL/dx = dL/dD(x) * mask.
    """
    return np.multiply(x, mask, out=out)


# x, mask and out may be strided views (the masks are time-major views of
# batch-major arrays): non-raw parameters follow any strides.
DROPOUT = KernelSpec("T x, T mask", "T out", "out = x * mask", "dropout")


def softmax_cross_entropy_grad(e: np.ndarray, sums: np.ndarray, targets: np.ndarray,
                               scale: float) -> np.ndarray:
    """dL/dy = scale * (softmax(y) - onehot(targets)), in place over ``e``.

    e (N, V) holds exp(y - max y) and sums (N, 1) its row sums, so softmax(y) =
    e / sums; normalising and scaling are one pass. targets (N,) ints.
    """
    np.multiply(e, scale / sums, out=e)
    e[np.arange(e.shape[0]), targets] -= scale
    return e


# One thread per element (n, v) of e; sums (N, 1) and targets (N,) are raw, read at
# row n. The call is kernel(sums, targets, scale, V, e).
SOFTMAX_CROSS_ENTROPY_GRAD = KernelSpec(
    "raw T sums, raw I targets, T scale, int32 V",
    "T e",
    r"""
    const ptrdiff_t n = i / V;                     // e[n, v] with v = i % V
    e = e * (scale / sums[n]) - (i % V == targets[n] ? scale : T(0));
    """,
    "softmax_cross_entropy_grad")


SGD_CHUNK = 1 << 16   # elements of lr_scale * g held at a time: 256 KiB in float32


def sgd_update(p: np.ndarray, g: np.ndarray, lr_scale: float) -> None:
    """p <- p - lr_scale * g, in place (lr_scale = lr * clip factor * loss scale).

    Chunk by chunk, so that lr_scale * g goes through a small buffer that stays in
    cache instead of a temporary as large as p (the whole step is ~1.5% faster).
    """
    if not (p.flags.c_contiguous and g.flags.c_contiguous):
        p -= lr_scale * g                                # views: the plain form
        return
    p_flat, g_flat = p.ravel(), g.ravel()                # views of the same memory
    step = np.empty_like(p_flat[:SGD_CHUNK])             # lr_scale * g, one chunk
    for k in range(0, p.size, SGD_CHUNK):
        n = min(SGD_CHUNK, p.size - k)
        np.multiply(g_flat[k:k + n], lr_scale, out=step[:n])
        np.subtract(p_flat[k:k + n], step[:n], out=p_flat[k:k + n])


# The call is kernel(g, lr_scale, p).
SGD_UPDATE = KernelSpec("T g, T lr_scale", "T p", "p -= lr_scale * g", "sgd_update")


# Every CUDA kernel, by the name of its NumPy twin.
CUDA_KERNELS = {spec.name: spec for spec in (
    LSTM_CELL_FORWARD, LSTM_CELL_BACKWARD, DROPOUT, SOFTMAX_CROSS_ENTROPY_GRAD, SGD_UPDATE)}
