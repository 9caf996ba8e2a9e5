"""The array backend, chosen once and passed down: NumPy on the CPU, CuPy on the GPU.

A :class:`Backend` bundles the array module ``xp`` with the elementwise kernels
(the NumPy functions of ``kernels.py`` on the CPU; on the GPU the CUDA kernels whose
specs sit beside them in ``kernels.py``, built by ``cuda_backend.py``). The
model code only ever calls ``backend.xp.<fn>`` and ``backend.<kernel>``; it never
imports numpy or cupy by itself and never asks which one it has.

``import zaremba_ref`` never imports cupy: :func:`get_backend("gpu")` does, on demand.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Callable

import numpy as np

from . import kernels


class BackendUnavailable(RuntimeError):
    """The requested device cannot be used here (the message says why and the fix)."""


class Arena:
    """Buffers handed out again, in the same order, after each :meth:`reset`.

    A training step asks for the same arrays in the same order every time (z, h, c,
    the logits, the gradients, ...). Fresh arrays of those sizes (up to 60 MB each for
    the large model) come from the kernel as fresh pages, and touching them for the
    first time costs more than the arithmetic on them. An arena keeps each step's
    arrays and gives them back to the next step: the k-th request after a reset gets
    the k-th buffer, if its shape and dtype match (else a new one takes its place).
    Whoever resets promises that nothing handed out before is still in use.
    """

    def __init__(self, xp: ModuleType):
        self.xp, self.buffers, self.k = xp, [], 0

    def empty(self, shape: tuple, dtype: Any) -> Any:
        k, self.k = self.k, self.k + 1
        if k < len(self.buffers):
            a = self.buffers[k]
            if a.shape == tuple(shape) and a.dtype == dtype:
                return a
            self.buffers[k] = a = self.xp.empty(shape, dtype)
            return a
        self.buffers.append(self.xp.empty(shape, dtype))
        return self.buffers[k]

    def reset(self) -> None:
        self.k = 0


@dataclass(frozen=True)
class Backend:
    """An array module and the kernels that run on its arrays."""

    name: str                                  # "cpu" or "gpu"
    xp: ModuleType                             # numpy or cupy
    lstm_cell_forward: Callable[..., None]
    lstm_cell_backward: Callable[..., None]
    dropout: Callable[..., Any]
    softmax_cross_entropy_grad: Callable[..., Any]
    sgd_update: Callable[..., None]
    scatter_add: Callable[..., None]           # a[indices] += values, repeats accumulate
    arena: Arena | None = field(default=None, compare=False)  # see with_arena()
    # by_rows(fn, *arrays): fn over the arrays' rows (first axis), its results joined;
    # for functions whose rows are independent (the CPU runs blocks on all cores)
    by_rows: Callable[..., Any] = field(default=lambda fn, *arrays: fn(*arrays),
                                        compare=False)

    def empty(self, shape: tuple, dtype: Any) -> Any:
        """An uninitialised array: from the arena if this backend has one, else fresh."""
        return self.arena.empty(shape, dtype) if self.arena else self.xp.empty(shape, dtype)

    def zeros(self, shape: tuple, dtype: Any) -> Any:
        """An array of zeros (from the arena if this backend has one)."""
        a = self.empty(shape, dtype)
        a.fill(0)
        return a

    def with_arena(self) -> "Backend":
        """This backend with an :class:`Arena` of its own: every array the model asks
        for is reused after ``self.arena.reset()``. For a loop that owns its steps (the
        trainer); a caller that keeps results across calls wants the plain backend."""
        return replace(self, arena=Arena(self.xp))

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Move a host array (or anything array-like) onto this backend."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a: Any) -> np.ndarray:
        """Bring an array of this backend back to the host as a NumPy array."""
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def rng(self, seed: int | None) -> Any:
        """A seeded random generator for this backend (used for dropout masks)."""
        return self.xp.random.default_rng(seed)


def scatter_add_rows(a: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
    """a[indices] += values, repeated indices accumulating (``numpy.add.at``'s meaning),
    for ``indices`` (N,) into the rows of ``a`` and ``values`` (N, ...).

    ~5x faster than ``numpy.add.at`` for the embedding gradient: sort the indices, sum
    each run of equal ones with ``add.reduceat``, then add once per distinct row. The
    sums are add.at's up to the order of the additions (rounding).
    """
    if len(indices) == 0:
        return
    order = np.argsort(indices, kind="stable")
    w = indices[order]                                          # sorted row ids   (N,)
    first = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])        # start of each run
    a[w[first]] += np.add.reduceat(values[order], first, axis=0)


# Elements below which one core is faster than handing half of a pass to another thread
SPLIT_MIN = 1 << 18


@functools.lru_cache(maxsize=None)
def _pool() -> tuple[int, ThreadPoolExecutor | None]:
    """As many threads as the BLAS uses (its thread count is the user's say on how many
    cores this process may take: OPENBLAS_NUM_THREADS=1 keeps it on one), the calling
    thread included; made once, on first use."""
    from .machine import blas_info
    n = max(1, blas_info()["threads"] or 1)
    return n, ThreadPoolExecutor(n - 1, "zaremba_ref") if n > 1 else None


def on_all_cores(kernel: Callable[..., Any], split: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel`` run on every core the BLAS uses, each thread on one part of its arrays.

    NumPy's ufuncs release the GIL, so the parts run at once; the kernels split here are
    elementwise (or row-wise), so each element is computed exactly as in one call and
    the result is the same to the bit. ``split(n, *args)`` returns the n calls' arguments
    and what the kernel returns, or None for one call (views it cannot cut). Arrays under
    SPLIT_MIN elements stay on the calling thread.
    """
    @functools.wraps(kernel)
    def run(*args, **kwargs):
        args += tuple(kwargs.values())           # dropout(x, mask, out=...): out is last
        n, pool = _pool()
        cut = split(n, *args) if pool and args[0].size >= SPLIT_MIN else None
        if cut is None:
            return kernel(*args)
        parts, result = cut
        futures = [pool.submit(kernel, *part) for part in parts[1:]]
        kernel(*parts[0])
        for f in futures:
            f.result()
        return result
    return run


def _bounds(size: int, n: int) -> list[tuple[int, int]]:
    cut = [size * k // n for k in range(n + 1)]
    return list(zip(cut[:-1], cut[1:]))


def _split_flat(n, p, g, lr_scale):
    """sgd_update(p, g, lr_scale) on n contiguous pieces of the flat p and g."""
    if not (p.flags.c_contiguous and g.flags.c_contiguous):
        return None
    p, g = p.reshape(-1), g.reshape(-1)
    return [(p[a:b], g[a:b], lr_scale) for a, b in _bounds(p.size, n)], None


def _split_rows(n, e, sums, targets, scale):
    """softmax_cross_entropy_grad on n blocks of rows."""
    return [(e[a:b], sums[a:b], targets[a:b], scale) for a, b in _bounds(len(e), n)], e


def _by_rows_on_all_cores(fn: Callable[..., Any], *arrays: Any) -> Any:
    """fn(*arrays) computed as fn over n blocks of rows at once, the results joined."""
    n, pool = _pool()
    if not pool or arrays[0].size < SPLIT_MIN:
        return fn(*arrays)
    blocks = [[a[lo:hi] for a in arrays] for lo, hi in _bounds(len(arrays[0]), n)]
    futures = [pool.submit(fn, *block) for block in blocks[1:]]
    first = fn(*blocks[0])
    return np.concatenate([first] + [f.result() for f in futures])


def _split_first_axis(n, x, mask, out):
    """dropout(x, mask, out) on n blocks of the first axis (any strides)."""
    if len(x) < n or x.shape != mask.shape:       # a broadcast mask: one call
        return None
    return [(x[a:b], mask[a:b], out[a:b]) for a, b in _bounds(len(x), n)], out


CPU = Backend(
    name="cpu",
    xp=np,
    lstm_cell_forward=kernels.lstm_cell_forward,
    lstm_cell_backward=kernels.lstm_cell_backward,
    dropout=on_all_cores(kernels.dropout, _split_first_axis),  # called with out=...
    softmax_cross_entropy_grad=on_all_cores(kernels.softmax_cross_entropy_grad, _split_rows),
    sgd_update=on_all_cores(kernels.sgd_update, _split_flat),
    scatter_add=scatter_add_rows,
    by_rows=_by_rows_on_all_cores,
)


def get_backend(device: str = "cpu") -> Backend:
    """The backend for ``device`` ("cpu" or "gpu").

    Raises :class:`BackendUnavailable` with a one-line reason and fix when the GPU
    cannot be used (cupy missing, or no CUDA device visible).
    """
    if device == "cpu":
        return CPU
    if device == "gpu":
        from .cuda_backend import make_gpu_backend  # imports cupy, only here
        return make_gpu_backend()
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
