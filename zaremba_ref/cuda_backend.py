"""The CuPy backend: the same model code on the GPU, with fused elementwise kernels.

Imported only by ``get_backend("gpu")``; ``import zaremba_ref`` never imports cupy.

Each kernel is a :class:`~zaremba_ref.kernels.KernelSpec` in ``kernels.py``, beside
its NumPy twin. Here every spec becomes a ``cupy.ElementwiseKernel`` once, on first
use (CuPy then compiles it once per dtype and caches the binary on disk), behind a
Python function with exactly the twin's call signature, so the model code cannot
tell the two backends apart.
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType
from typing import Any

from . import kernels
from .backend import Backend, BackendUnavailable
from .kernels import KernelSpec

INSTALL = ('pip install -e ".[gpu]" in the zaremba_ref repository (it installs '
           'cupy-cuda12x, for CUDA 12); for CUDA 13: pip install cupy-cuda13x')


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (CuPy's import errors span several)."""
    return " ".join(str(e).split()) or type(e).__name__


@functools.lru_cache(maxsize=None)
def elementwise_kernel(cupy: ModuleType, spec: KernelSpec) -> Any:
    """``spec`` as a ``cupy.ElementwiseKernel``, built once per spec (and module)."""
    return cupy.ElementwiseKernel(*spec, preamble=kernels.CUDA_PREAMBLE)


def make_gpu_backend() -> Backend:
    """Build the GPU backend, or raise BackendUnavailable saying why and what to do."""
    try:
        import cupy
    except ImportError as e:
        if importlib.util.find_spec("cupy") is None:
            raise BackendUnavailable(f"--device gpu needs cupy, which is not installed: "
                                     f"{INSTALL}") from None
        raise BackendUnavailable(f"--device gpu: cupy is installed but does not import "
                                 f"({_one_line(e)}); reinstall it for this machine's CUDA "
                                 f"({INSTALL}), or use --device cpu") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy raises CUDARuntimeError without a driver
        raise BackendUnavailable(f"--device gpu: cupy is installed but CUDA is not usable "
                                 f"({_one_line(e)}); check the NVIDIA driver, or use "
                                 "--device cpu") from None
    if count == 0:
        raise BackendUnavailable("--device gpu: no CUDA device is visible; check "
                                 "CUDA_VISIBLE_DEVICES and the driver, or use --device cpu")

    kernel = functools.partial(elementwise_kernel, cupy)   # kernel(spec), built on first use

    # The NumPy twins' signatures; the argument order of each kernel is CuPy's (inputs,
    # then outputs) and is written beside its spec in kernels.py.
    def lstm_cell_forward(z, c_prev, c, h) -> None:
        kernel(kernels.LSTM_CELL_FORWARD)(c_prev, c.shape[-1], z, c, h)

    def lstm_cell_backward(gates, c_prev, c, dh, dc_next, dz, dc_prev) -> None:
        kernel(kernels.LSTM_CELL_BACKWARD)(gates, c_prev, c, dh, dc_next, c.shape[-1],
                                           dz, dc_prev)

    def dropout(x, mask, out):
        return kernel(kernels.DROPOUT)(x, mask, out)

    def softmax_cross_entropy_grad(e, sums, targets, scale):
        return kernel(kernels.SOFTMAX_CROSS_ENTROPY_GRAD)(sums, targets, scale, e.shape[1], e)

    def sgd_update(p, g, lr_scale) -> None:
        kernel(kernels.SGD_UPDATE)(g, lr_scale, p)

    return Backend(
        name="gpu",
        xp=cupy,
        lstm_cell_forward=lstm_cell_forward,
        lstm_cell_backward=lstm_cell_backward,
        dropout=dropout,
        softmax_cross_entropy_grad=softmax_cross_entropy_grad,
        sgd_update=sgd_update,
        scatter_add=cupy.add.at,   # numpy.add.at's twin (cupyx.scatter_add: deprecated in 14)
    )
