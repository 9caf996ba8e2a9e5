"""The CuPy backend: the same model code on the GPU, with fused elementwise kernels.

Imported only by ``get_backend("gpu")``; ``import zaremba_ref`` never imports cupy.
"""

from __future__ import annotations

from .backend import Backend, BackendUnavailable

INSTALL = ('pip install "zaremba_ref[gpu]" (it installs cupy-cuda12x; use cupy-cuda11x '
           'for CUDA 11)')


def make_gpu_backend() -> Backend:
    """Build the GPU backend, or raise BackendUnavailable saying why and what to do."""
    try:
        import cupy
    except ImportError:
        raise BackendUnavailable(f"--device gpu needs cupy, which is not installed: "
                                 f"{INSTALL}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy raises CUDARuntimeError without a driver
        raise BackendUnavailable(f"--device gpu: cupy is installed but CUDA is not usable "
                                 f"({e}); check the NVIDIA driver, or use --device cpu") from None
    if count == 0:
        raise BackendUnavailable("--device gpu: no CUDA device is visible; check "
                                 "CUDA_VISIBLE_DEVICES and the driver, or use --device cpu")
    raise BackendUnavailable("--device gpu: the CuPy backend is not built yet")
