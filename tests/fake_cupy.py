"""CUDA kernels on the CPU, and a stand-in for the ``cupy`` module built on them.

:class:`CpuElementwiseKernel` takes the same arguments as ``cupy.ElementwiseKernel``
and runs the same C++ body: it wraps the body in a plain loop over ``i``, compiles it
with the host C++ compiler (``__device__`` defined away, ``T`` as float or double,
``-ffp-contract=off``), loads it with ctypes and calls it on NumPy arrays. It follows
CuPy's semantics as the kernels here rely on them (cupy/_core/_kernel.pyx):

* the loop runs over the broadcast shape of the non-raw arrays, inputs and outputs;
  ``i`` is the flat C-order index in that shape;
* a non-raw array parameter is a reference to its element at ``i`` (any strides,
  broadcasting by stride 0; ``const`` for inputs), so aliasing behaves as on the GPU;
* a raw parameter is the whole array indexed by hand (``const`` for inputs); here it
  must be C-contiguous (CuPy would also index a strided one in C order);
* a scalar is cast to its parameter's type; a type placeholder (``T``) takes its dtype
  from the arrays, outputs first, and every array of one placeholder must agree;
* outputs may be omitted (they are allocated), a non-raw output must have the loop's
  shape, an empty loop runs nothing;
* the generated file puts the typedefs, then the preamble, then the kernel, as CuPy.

What this cannot prove: that NVRTC accepts the text, and GPU races (the CPU loop is
sequential). Only a GPU run (``pytest -m gpu``) checks those.

:func:`make_fake_cupy` returns ``cupy`` and ``cupyx`` modules whose arrays are NumPy
arrays and whose ``ElementwiseKernel`` is :class:`CpuElementwiseKernel`: only what
``zaremba_ref`` calls, so that a new call fails here loudly until it is added (after
checking that CuPy has it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CXXFLAGS = ["-O2", "-shared", "-fPIC", "-ffp-contract=off", "-std=c++14", "-Wall", "-Werror"]

# dtype -> (C type, ctypes type), as CuPy names them
C_TYPES = {
    np.dtype(np.float32): ("float", ctypes.c_float),
    np.dtype(np.float64): ("double", ctypes.c_double),
    np.dtype(np.int8): ("signed char", ctypes.c_byte),
    np.dtype(np.int16): ("short", ctypes.c_short),
    np.dtype(np.int32): ("int", ctypes.c_int),
    np.dtype(np.int64): ("long long", ctypes.c_longlong),
    np.dtype(np.uint8): ("unsigned char", ctypes.c_ubyte),
    np.dtype(np.uint32): ("unsigned int", ctypes.c_uint),
    np.dtype(np.uint64): ("unsigned long long", ctypes.c_ulonglong),
    np.dtype(np.bool_): ("bool", ctypes.c_bool),
}

PROLOGUE = """\
#include <cmath>
#include <cstddef>
#define __device__
#define __forceinline__ inline
using std::tanh; using std::exp; using std::log; using std::sqrt; using std::fabs;
"""


def find_compiler() -> str | None:
    """The host C++ compiler ($CXX, g++ or c++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class CompileError(RuntimeError):
    """The host compiler rejected a kernel; the message holds its errors and the source."""


class Builder:
    """Compiles C++ sources into shared libraries under ``directory``, once each
    (keyed by the source's hash, in memory and on disk)."""

    _loaded: dict[str, ctypes.CDLL] = {}

    def __init__(self, directory: str | Path, compiler: str | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compiler = compiler or find_compiler()
        if self.compiler is None:
            raise RuntimeError("no C++ compiler found (set $CXX, or install g++)")

    def load(self, source: str) -> ctypes.CDLL:
        key = hashlib.sha256(" ".join([self.compiler, *CXXFLAGS, source]).encode()).hexdigest()[:24]
        if key in self._loaded:
            return self._loaded[key]
        lib = self.directory / f"k{key}.so"
        if not lib.exists():
            src = self.directory / f"k{key}.cpp"
            src.write_text(source)
            tmp = self.directory / f"k{key}.{os.getpid()}.tmp.so"
            r = subprocess.run([self.compiler, *CXXFLAGS, str(src), "-o", str(tmp)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise CompileError(f"{self.compiler} failed:\n{r.stderr}\n--- source ---\n"
                                   + "\n".join(f"{n:4d} {line}" for n, line in
                                               enumerate(source.splitlines(), 1)))
            os.replace(tmp, lib)
        self._loaded[key] = ctypes.CDLL(str(lib))
        return self._loaded[key]


@dataclass(frozen=True)
class Param:
    """One entry of an ElementwiseKernel parameter list, parsed as CuPy does."""

    name: str
    type: str                 # a one-letter placeholder ("T") or a dtype name ("int32")
    raw: bool
    const: bool               # inputs are const, outputs are not

    @property
    def dtype(self) -> np.dtype | None:
        return None if len(self.type) == 1 else np.dtype(self.type)

    @property
    def ctype(self) -> str:
        return self.type if self.dtype is None else C_TYPES[self.dtype][0]


def parse_params(text: str, const: bool) -> tuple[Param, ...]:
    if not text.strip():
        return ()
    params = []
    for item in text.split(","):
        words = item.split()
        if len(words) < 2:
            raise ValueError(f"syntax error in parameter {item!r}")
        *mods, typ, name = words
        if any(m != "raw" for m in mods):
            raise ValueError(f"unknown keyword in parameter {item!r}")
        if len(typ) != 1 and np.dtype(typ) not in C_TYPES:
            raise ValueError(f"unsupported type in parameter {item!r}")
        params.append(Param(name, typ, "raw" in mods, const))
    return tuple(params)


def _is_array(a: Any) -> bool:
    return isinstance(a, np.ndarray)


def _byte_offsets(a: np.ndarray, shape: tuple) -> np.ndarray:
    """For each flat C-order index of ``shape``, the byte offset of ``a``'s element
    there (``a`` broadcast to ``shape``: a broadcast axis has stride 0)."""
    strides = np.broadcast_to(a, shape).strides
    off = np.zeros(shape, dtype=np.int64)
    for ax, (n, st) in enumerate(zip(shape, strides)):
        off += (np.arange(n, dtype=np.int64) * st).reshape((n,) + (1,) * (len(shape) - ax - 1))
    return np.ascontiguousarray(off.reshape(-1))


class CpuElementwiseKernel:
    """``cupy.ElementwiseKernel`` compiled for and run on the CPU (see the module doc)."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 reduce_dims: bool = True, preamble: str = "", no_return: bool = False,
                 return_tuple: bool = False, *, builder: Builder):
        if not name.isidentifier():
            raise ValueError(f"Invalid kernel name: {name!r}")
        self.in_params = parse_params(in_params, True)
        self.out_params = parse_params(out_params, False)
        self.params = self.in_params + self.out_params
        if "i" in [p.name for p in self.params]:
            raise ValueError("Can not use 'i' as a parameter name")
        self.operation, self.name, self.preamble = operation, name, preamble
        self.no_return, self.return_tuple = no_return, return_tuple
        self.builder = builder
        self.calls = 0

    # -- CuPy's type rules (_decide_params_type_core) --------------------------------
    def _decide_types(self, in_args, out_args) -> dict[str, np.dtype]:
        types: dict[str, np.dtype] = {}
        pairs = list(zip(self.out_params, out_args)) + list(zip(self.in_params, in_args))
        for p, a in pairs:
            if not _is_array(a):
                if not p.const:
                    raise TypeError("Output arguments must be cupy.ndarray")
                continue
            want = p.dtype if p.dtype is not None else types.setdefault(p.type, a.dtype)
            if a.dtype != want:
                raise TypeError(f"Type is mismatched. {p.name} {a.dtype} {want} {p.type}")
        for p in self.params:
            if p.dtype is None and p.type not in types:
                raise TypeError(f"{self.name}: the type {p.type} of {p.name} is undecided "
                                "(no array argument has it)")
        return types

    def _source(self, kinds: tuple, types: dict[str, np.dtype]) -> str:
        """The C++ file for one call signature: typedefs, preamble, then the loop."""
        args, refs = ["ptrdiff_t _size"], []
        for p, kind in zip(self.params, kinds):
            const = "const " if p.const else ""
            if kind == "scalar":
                args.append(f"{const}{p.ctype} {p.name}")
            elif p.raw:
                args.append(f"{const}{p.ctype}* {p.name}")
            else:
                args += [f"{const}char* _raw_{p.name}", f"const long long* _off_{p.name}"]
                ptr = f"_raw_{p.name} + _off_{p.name}[i]"        # its element at i
                refs.append(f"{const}{p.ctype} &{p.name} = "
                            f"*reinterpret_cast<{const}{p.ctype}*>({ptr});")
        typedefs = "".join(f"typedef {C_TYPES[t][0]} {name};\n"
                           for name, t in sorted(types.items()))
        body = "\n    ".join(refs)
        return (f"{PROLOGUE}{typedefs}{self.preamble}\n"
                f'extern "C" void {self.name}({", ".join(args)}) {{\n'
                f"  for (ptrdiff_t i = 0; i < _size; ++i) {{\n"
                f"    {body}\n"
                f"    {self.operation};\n"
                f"  }}\n}}\n")

    def __call__(self, *args, size: int = -1, **kwargs):
        kwargs.pop("stream", None), kwargs.pop("block_size", None)
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        nin, nargs = len(self.in_params), len(self.params)
        if len(args) not in (nin, nargs):
            raise TypeError(f"Wrong number of arguments for {self.name!r}. It must be either "
                            f"{nin} or {nargs} (with outputs), but given {len(args)}.")
        for a in args:
            if not (_is_array(a) or isinstance(a, (int, float, bool, np.generic))):
                raise TypeError(f"{self.name}: unsupported argument type {type(a).__name__}")
        in_args, out_args = list(args[:nin]), list(args[nin:])

        nonraw = [a.shape for p, a in zip(self.params, args) if not p.raw and _is_array(a)]
        if size != -1:
            if nonraw:
                raise ValueError("Specified 'size' can be used only if all of the ndarray "
                                 "are 'raw'.")
            shape: tuple = (size,)
        elif not nonraw:
            raise ValueError("Loop size is undecided.")
        else:
            shape = np.broadcast_shapes(*nonraw)

        types = self._decide_types(in_args, out_args)
        dtype_of = lambda p: p.dtype if p.dtype is not None else types[p.type]  # noqa: E731
        if not out_args:
            if any(p.raw for p in self.out_params) and size == -1:
                raise ValueError("Output array size is Undecided")
            out_args = [np.empty(shape, dtype_of(p)) for p in self.out_params]
        for p, a in zip(self.out_params, out_args):
            if not p.raw and a.shape != shape:
                raise ValueError("Out shape is mismatched")
            if not a.flags.writeable:
                raise ValueError(f"{self.name}: output {p.name} is read-only")
        ret = None if self.no_return else (
            out_args[0] if len(out_args) == 1 and not self.return_tuple else tuple(out_args))
        if 0 in shape:
            return ret

        kinds, cargs, argtypes, keep = [], [], [ctypes.c_ssize_t], []
        for p, a in zip(self.params, in_args + out_args):
            if not _is_array(a):
                dt = dtype_of(p)
                kinds.append("scalar")
                cargs.append(C_TYPES[dt][1](dt.type(a).item()))
                argtypes.append(C_TYPES[dt][1])
            elif p.raw:
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: raw array {p.name} must be C-contiguous "
                                     "here (CuPy would index it in C order anyway)")
                kinds.append("raw")
                cargs.append(a.ctypes.data)
                argtypes.append(ctypes.c_void_p)
            else:
                off = _byte_offsets(a, shape)
                keep.append(off)
                kinds.append("array")
                cargs += [a.ctypes.data, off.ctypes.data]
                argtypes += [ctypes.c_void_p, ctypes.c_void_p]
        lib = self.builder.load(self._source(tuple(kinds), types))
        fn = getattr(lib, self.name)
        fn.argtypes, fn.restype = argtypes, None
        fn(int(np.prod(shape)), *cargs)
        self.calls += 1
        return ret


class FakeGenerator:
    """What zaremba_ref uses of ``cupy.random.Generator``, drawing NumPy's numbers (so a
    seed gives the masks of the CPU path). As in CuPy, ``bit_generator.state`` is a
    method (it returns the device pointer of cuRAND's state), not NumPy's dict."""

    def __init__(self, seed=None):
        self._numpy = np.random.default_rng(seed)
        self.bit_generator = types.SimpleNamespace(state=lambda: 0)

    def random(self, size=None, dtype=np.float64, out=None):
        return self._numpy.random(size, dtype=dtype, out=out)


def make_fake_cupy(builder: Builder, device_count: int | Exception = 1):
    """``(cupy, cupyx)`` stand-ins: NumPy arrays, CPU-compiled ElementwiseKernels.

    ``device_count``: what ``cupy.cuda.runtime.getDeviceCount()`` returns, or an
    exception it raises (no driver). ``cupy.kernels`` lists every kernel built.
    """
    cupy = types.ModuleType("cupy")
    cupy.__doc__ = "A test double of cupy (tests/fake_cupy.py)."
    # Exactly what zaremba_ref calls on backend.xp; each exists in CuPy with these semantics.
    for name in ("ndarray", "dtype", "float32", "float64", "int32", "int64",
                 "asarray", "array", "empty", "empty_like", "zeros", "zeros_like", "ones",
                 "arange", "exp", "log", "isfinite", "vdot", "broadcast_to"):
        setattr(cupy, name, getattr(np, name))
    cupy.random = types.SimpleNamespace(default_rng=FakeGenerator)

    def get_device_count() -> int:
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=get_device_count))
    cupy.kernels = []

    def elementwise_kernel(*args, **kwargs) -> CpuElementwiseKernel:
        kernel = CpuElementwiseKernel(*args, builder=builder, **kwargs)
        cupy.kernels.append(kernel)
        return kernel

    cupy.ElementwiseKernel = elementwise_kernel

    def missing(name: str):
        raise AttributeError(f"the fake cupy (tests/fake_cupy.py) has no {name!r}: if CuPy "
                             "has it with NumPy's semantics, add it to make_fake_cupy")

    cupy.__getattr__ = missing

    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = np.add.at         # cupyx.scatter_add behaves as numpy.add.at
    cupyx.__getattr__ = missing
    return cupy, cupyx

