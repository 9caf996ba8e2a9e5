"""What a number was computed on: the CPU, NumPy's SIMD targets and the BLAS kernel.

Two floating-point results of the same code agree bit for bit only where the same
instructions ran in the same order. Between machines that is decided by

* the CPU (``cpu``): its generation picks NumPy's SIMD loops and OpenBLAS's kernel;
* NumPy's version and the SIMD targets it dispatches to here (``numpy_simd``): the
  loops of ``tanh``, ``exp``, ``log`` and the reductions;
* the BLAS library, its version and its kernel (``blas_kernel``, e.g. OpenBLAS's
  ``Haswell`` or ``SkylakeX``), and its thread count (a product split across threads
  sums in another order);
* the C library (``libc``), whose ``tanh`` serves where NumPy has no SIMD loop.

:func:`fingerprint` gathers them (the pins of ``tests/test_pin.py`` record it);
:func:`blas_info` reports the BLAS and :func:`cuda_device` the GPU (the benchmarks record
them); :func:`forced_kernel_note` is the one line ``train`` and ``bench`` print when
OpenBLAS has been forced onto a kernel below the CPU's own. numpy-only: threadpoolctl is used where installed, else
the OpenBLAS library NumPy loaded is asked directly (ctypes). Nothing here sets or
unsets an environment variable.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import subprocess
import sys
from typing import Any

import numpy as np

# OpenBLAS's exported names: plain builds, and the scipy-openblas wheels NumPy ships
# (prefixed, with a 64-bit-integer suffix)
_OPENBLAS_SYMBOLS = (("openblas_get_corename", "openblas_get_num_threads", "openblas_get_config"),
                     ("scipy_openblas_get_corename64_", "scipy_openblas_get_num_threads64_",
                      "scipy_openblas_get_config64_"))

# The vector width each OpenBLAS x86 kernel family uses (bits): a kernel narrower than
# the CPU's own runs its matrix products at up to width/own-width of the speed.
_KERNEL_WIDTH = {"sandybridge": 256, "haswell": 256, "zen": 256, "skylakex": 512,
                 "cooperlake": 512, "sapphirerapids": 512}


def _openblas_path() -> str | None:
    """The OpenBLAS shared library this process has loaded (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps)))
    return paths[0] if paths else None


def _ask_openblas(path: str) -> dict[str, Any] | None:
    """Corename, thread count and version string from the library itself."""
    lib = ctypes.CDLL(path)
    for corename, threads, config in _OPENBLAS_SYMBOLS:
        if hasattr(lib, corename):
            getattr(lib, corename).restype = ctypes.c_char_p
            getattr(lib, config).restype = ctypes.c_char_p
            version = getattr(lib, config)().decode().split()[1]    # "OpenBLAS 0.3.31 ..."
            return {"library": "openblas", "version": version,
                    "kernel": getattr(lib, corename)().decode(),
                    "threads": int(getattr(lib, threads)()), "path": path}
    return None


def blas_info() -> dict[str, Any]:
    """NumPy's BLAS: ``{"library", "version", "kernel", "threads", "path"}``
    (``library`` is "unknown" where neither threadpoolctl nor OpenBLAS can tell)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                return {"library": lib["internal_api"], "version": lib.get("version"),
                        "kernel": lib.get("architecture"), "threads": lib["num_threads"],
                        "path": lib["filepath"]}
    path = _openblas_path()
    info = _ask_openblas(path) if path else None
    return info or {"library": "unknown", "version": None, "kernel": None, "threads": None,
                    "path": None}


def numpy_simd() -> list[str]:
    """The SIMD targets NumPy dispatches its loops to on this CPU (its baseline and the
    dispatchable ones the CPU has), e.g. ``["X86_V2", "X86_V3", "X86_V4", "AVX512_ICL"]``."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:                                    # NumPy 1.x
        from numpy.core import _multiarray_umath as umath  # type: ignore[no-redef]
    features = umath.__cpu_features__
    return list(umath.__cpu_baseline__) + [t for t in umath.__cpu_dispatch__
                                           if features.get(t)]


def cpu() -> str:
    """The CPU's vendor, family, model and stepping (Linux), else the processor string."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                                  # the first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    if "vendor_id" in fields:
        return (f"{fields['vendor_id']} family {fields.get('cpu family')} model "
                f"{fields.get('model')} stepping {fields.get('stepping')}")
    return platform.processor() or platform.machine()


def fingerprint() -> dict[str, Any]:
    """Everything that decides the bits of a float result between machines (module
    docstring), the thread count excluded: callers that pin bits fix it themselves."""
    blas = blas_info()
    return {"machine": platform.machine(), "cpu": cpu(), "libc": " ".join(platform.libc_ver()),
            "numpy": np.__version__, "numpy_simd": numpy_simd(),
            "blas": blas["library"], "blas_version": blas["version"],
            "blas_kernel": blas["kernel"]}


def cuda_device(cupy: Any) -> dict[str, Any]:
    """The GPU a CuPy run computes on (CuPy's current device): its name, compute
    capability and memory, and the CUDA runtime's and CuPy's versions, asked of
    ``cupy.cuda.runtime``; the GPU's counterpart of :func:`blas_info` for the benchmarks."""
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(runtime.getDevice())
    return {"name": props["name"].decode(),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "cuda_runtime": runtime.runtimeGetVersion(), "cupy": cupy.__version__}


@functools.lru_cache(maxsize=None)
def _own_kernel(path: str) -> str | None:
    """The kernel OpenBLAS picks for this CPU by itself: the library loaded by a bare
    Python without OPENBLAS_CORETYPE (~50 ms; this process's environment is untouched)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1])\n"
            f"for name in {[s[0] for s in _OPENBLAS_SYMBOLS]!r}:\n"
            "    if hasattr(lib, name):\n"
            "        f = getattr(lib, name); f.restype = ctypes.c_char_p; print(f().decode())\n"
            "        break\n")
    try:
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                             env=env, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def forced_kernel_note(environ: Any = None) -> str | None:
    """One line when OPENBLAS_CORETYPE (in ``environ``, default this process's) forces
    OpenBLAS onto a narrower kernel than the one it picks for this CPU by itself (what it
    costs, and the fix); else None."""
    forced = (os.environ if environ is None else environ).get("OPENBLAS_CORETYPE")
    if not forced:
        return None
    blas = blas_info()
    if blas["library"] != "openblas" or not blas["path"]:
        return None
    running, own = blas["kernel"] or forced, _own_kernel(blas["path"])
    width, own_width = _KERNEL_WIDTH.get(running.lower()), _KERNEL_WIDTH.get((own or "").lower())
    if not (width and own_width and width < own_width):
        return None
    return (f"note: OPENBLAS_CORETYPE={forced} holds OpenBLAS on its {running} kernel "
            f"({width}-bit vectors) on a CPU whose own is {own} ({own_width}-bit): matrix "
            f"products run at about {width / own_width:.0%} of their speed; prefix the command with "
            f"`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` to use the CPU's own kernel")
