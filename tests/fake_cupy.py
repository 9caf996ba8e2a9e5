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

What this cannot prove: GPU races (the CPU loop is sequential) and the device's own
arithmetic. That NVRTC accepts the text as CuPy assembles it is tested apart, with CuPy's
own code generator and CUDA's compiler (``tests/test_nvrtc.py``), and that this double
offers only what the real cupy has, as the real cupy has it, in ``tests/test_fake_cupy.py``.

:func:`make_fake_cupy` returns a ``cupy`` module whose arrays are
:class:`ndarray`, a device array of its own type that keeps CuPy's host/device boundary
(each rule below cites where CuPy enforces it, in CuPy 14.2.0's source):

* ``numpy.asarray(device_array)`` raises CuPy's TypeError (``__array__``); ``.get()``
  (and ``float()``, ``int()``, ``bool()`` of one element, which CuPy implements with
  ``get()``) are the only ways back to the host;
* arithmetic and ufuncs that mix a device array with a NumPy array raise TypeError;
  Python and NumPy scalars are fine;
* ``ElementwiseKernel`` refuses NumPy arrays as arguments (TypeError) and wants device
  arrays for its outputs;
* indexing converts host index arrays to the device, as CuPy does; assigning a NumPy
  array through a basic index raises ValueError, through an integer-array index it is
  copied to the device (CuPy's ``_scatter_op``).

Only what ``zaremba_ref`` calls is offered, so that a new call fails here loudly until it
is added (after checking that CuPy has it: ``tests/test_fake_cupy.py`` checks).
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
from typing import Any, Callable, NamedTuple

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
                 return_tuple: bool = False, *, builder: Builder, device: bool = False):
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
        self.device = device      # the fake cupy's kernel: device arrays in and out
        self.calls = 0
        # each call's arguments as CuPy's launcher would classify them, before it folds
        # dimensions: ("array", dtype, ndim, C-contiguous) or ("scalar", Python type)
        self.argument_kinds: set[tuple] = set()

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
        if not self.device:
            return self._run(args, size)
        # CuPy (_kernel.pyx, ElementwiseKernel.__call__ -> _preprocess_args ->
        # _preprocess_arg): an argument that is not a device array becomes a
        # _scalar.CScalar, whose __init__ (_scalar.pyx) raises "Unsupported type" for a
        # NumPy array; an output that is not a device array fails in
        # _get_out_args_with_params ("Output arguments type must be cupy.ndarray").
        for k, a in enumerate(args):
            if isinstance(a, np.ndarray):
                raise TypeError(f"Unsupported type {type(a)} (argument {k} of "
                                f"{self.name!r}: a NumPy array; the double, as CuPy, wants "
                                "device arrays)")
            if k >= nin and not isinstance(a, ndarray):
                raise TypeError("Output arguments type must be cupy.ndarray")
        self.argument_kinds.add(tuple(
            ("array", a.dtype.name, a.ndim, a.flags.c_contiguous) if isinstance(a, ndarray)
            else ("scalar", type(a).__name__) for a in args))
        ret = self._run(tuple(a._a if isinstance(a, ndarray) else a for a in args), size)
        if len(args) == nargs:            # the caller's outputs: give back the same objects
            outs = args[nin:]
            return None if ret is None else (
                outs[0] if len(outs) == 1 and not self.return_tuple else tuple(outs))
        if ret is None:
            return None
        return (tuple(ndarray._wrap(a) for a in ret) if isinstance(ret, tuple)
                else ndarray._wrap(ret))

    def _run(self, args: tuple, size: int):
        nin = len(self.in_params)
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


# -- the device array -------------------------------------------------------------------
#
# CuPy 14.2.0's source, where each rule of the boundary lives (paths in github.com/cupy/cupy
# at tag v14.2.0):
#   cupy/_core/core.pyx        _ndarray_base.__array__ (TypeError "Implicit conversion to a
#                              NumPy array is not allowed"), .get(), __int__/__float__
#                              (get()), __nonzero__ (one element: get()), __add__ & co.
#                              (another cupy array, else NumPy's ufunc, which comes back to
#                              __array_ufunc__), __array_ufunc__ (dispatches to cupy's ufunc
#                              with the NumPy arrays kept: "numpy.ndarray is handled and then
#                              TypeError is raised due to implicit host-to-device
#                              conversion"), __array_function__ (cupy's function of the same
#                              name, or NotImplemented), fill() ("non-scalar numpy.ndarray
#                              cannot be used for fill")
#   cupy/_core/_kernel.pyx     _preprocess_arg: an argument that is not a cupy array becomes
#                              a CScalar; cupy/_core/_scalar.pyx CScalar.__init__ raises
#                              TypeError "Unsupported type <class 'numpy.ndarray'>" (ufuncs
#                              and ElementwiseKernel alike)
#   cupy/_core/_routines_indexing.pyx  _prepare_slice_list: list and NumPy index arrays are
#                              converted to the device ("Convert list/NumPy/CUDA-Array-
#                              Interface arrays to cupy.ndarray"); _scatter_op: through a
#                              basic index a non-cupy value goes to fill() ("Refuse
#                              assignment from CPU arrays, see gh-2079"), through an
#                              integer-array index (_scatter_op_single) it is copied over.

SCALARS = (bool, int, float, complex, np.generic)
NOT_ALLOWED = ("Implicit conversion to a NumPy array is not allowed. "
               "Please use `.get()` to construct a NumPy array explicitly.")


def _device_operand(x: Any, what: str) -> Any:
    """What a CuPy ufunc or kernel accepts: a device array (its memory) or a scalar."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, SCALARS):
        return x
    # CScalar.__init__ (cupy/_core/_scalar.pyx): a NumPy array, a list, anything else
    raise TypeError(f"Unsupported type {type(x)} ({what}: the double, as CuPy, takes device "
                    "arrays and scalars only; move host arrays with cupy.asarray)")


def _wrap_result(r: Any) -> Any:
    if isinstance(r, tuple):
        return tuple(_wrap_result(x) for x in r)
    return ndarray._wrap(np.asarray(r))


def _apply(fn: Callable, name: str, inputs: tuple, out: Any = None, **kwargs) -> Any:
    """fn (a NumPy ufunc) on device operands; the result on the device."""
    args = [_device_operand(x, f"input of {name}") for x in inputs]
    if out is not None:
        if not isinstance(out, ndarray):
            raise TypeError(f"Unsupported type {type(out)} (out of {name}: the double, as "
                            "CuPy, writes only into device arrays)")
        fn(*args, out=out._a, **kwargs)
        return out
    return _wrap_result(fn(*args, **kwargs))


# Host arrays that CuPy accepts and copies to the device on the way (index arrays, values
# assigned through them): legal, but each is a synchronous copy, so the tests count them.
HOST_TO_DEVICE: list[str] = []


def _device_index(index: Any) -> Any:
    """CuPy's _prepare_slice_list: device index arrays as they are, host ones (NumPy
    arrays, lists) converted to the device (counted in HOST_TO_DEVICE); ints, slices,
    None, Ellipsis kept."""
    items = index if isinstance(index, tuple) else (index,)
    out = []
    for s in items:
        if isinstance(s, ndarray):
            s = s._a
        elif isinstance(s, (list, np.ndarray)):
            HOST_TO_DEVICE.append(f"index {type(s).__name__} {np.shape(s)}")
            s = np.array(s)                                  # a copy: now on the device
        out.append(s)
    return tuple(out)


def _is_advanced(index: tuple) -> bool:
    return any(isinstance(s, np.ndarray) or (isinstance(s, (bool, np.bool_))) for s in index)


class _Flags(NamedTuple):
    c_contiguous: bool
    f_contiguous: bool
    owndata: bool


class ndarray:  # noqa: N801  (cupy's name)
    """The double's device array. Its memory is a NumPy array that nothing outside this
    module may see: the boundary rules of CuPy (above) hold for it. Views share memory,
    as on the device."""

    __array_priority__ = 100            # as cupy.ndarray

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = np.empty(shape, dtype=dtype, order=order)

    @classmethod
    def _wrap(cls, a: np.ndarray) -> "ndarray":
        obj = cls.__new__(cls)
        obj._a = a
        return obj

    # -- the only way out, and the conversions CuPy implements with it ------------------
    def get(self, stream=None, order="C", out=None, blocking=True) -> np.ndarray:
        if out is not None:
            np.copyto(out, self._a)
            return out
        return np.array(self._a, order=order, copy=True)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(NOT_ALLOWED)

    def __float__(self):
        return float(self.get())

    def __int__(self):
        return int(self.get())

    def __bool__(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is "
                             "ambiguous.")
        return bool(self.get())

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self):
        return f"fake_cupy.ndarray({self._a!r})"

    # -- attributes ------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a.flags.c_contiguous,
                                         self._a.flags.f_contiguous, self._a.flags.owndata))
    T = property(lambda self: ndarray._wrap(self._a.T))

    # -- views, copies, reductions (device in, device out) -------------------------------
    def reshape(self, *shape, order="C", copy=None):
        return ndarray._wrap(self._a.reshape(*shape, order=order))

    def transpose(self, *axes):
        return ndarray._wrap(self._a.transpose(*axes))

    def ravel(self, order="C"):
        return ndarray._wrap(self._a.ravel(order))

    def copy(self, order="C"):
        return ndarray._wrap(self._a.copy(order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return ndarray._wrap(self._a.astype(dtype, order=order, copy=copy))

    def fill(self, value):
        if isinstance(value, np.ndarray) and value.shape != ():
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        if isinstance(value, ndarray):
            value = value._a
        self._a.fill(value)

    def _reduce(self, fn, axis, out, keepdims, **kwargs):
        if out is not None:
            raise NotImplementedError("out= of a reduction: not used by zaremba_ref")
        return _wrap_result(fn(self._a, axis=axis, keepdims=keepdims, **kwargs))

    def max(self, axis=None, out=None, keepdims=False):
        return self._reduce(np.max, axis, out, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return self._reduce(np.min, axis, out, keepdims)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return self._reduce(np.sum, axis, out, keepdims, dtype=dtype)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return self._reduce(np.mean, axis, out, keepdims, dtype=dtype)

    def all(self, axis=None, out=None, keepdims=False):
        return self._reduce(np.all, axis, out, keepdims)

    # -- indexing ----------------------------------------------------------------------
    def __getitem__(self, index):
        idx = _device_index(index)
        r = self._a[idx]
        if not isinstance(r, np.ndarray):            # one element: CuPy gives a 0-d view
            r = self._a[idx + (Ellipsis,)]
        return ndarray._wrap(r)

    def __setitem__(self, index, value):
        idx = _device_index(index)
        if isinstance(value, np.ndarray) and value.shape != () and not _is_advanced(idx):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        if isinstance(value, np.ndarray):
            HOST_TO_DEVICE.append(f"value {value.shape} assigned through an index array")
        self._a[idx] = value._a if isinstance(value, ndarray) else value

    def _scatter_op(self, slices, value, op):
        """``cupy.add.at(a, ...)`` calls this on ``a`` (cupy/_core/_kernel.pyx,
        ``ufunc.at``); a host ``value`` is copied over; repeated indices accumulate."""
        if op != "add":
            raise NotImplementedError(f"the double's _scatter_op does 'add' only, not {op!r}")
        if isinstance(value, np.ndarray):
            HOST_TO_DEVICE.append(f"add.at value {value.shape}")   # copied over
        value = value._a if isinstance(value, ndarray) else value
        np.add.at(self._a, _device_index(slices), value)

    # -- arithmetic: device arrays and scalars only --------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            return NotImplemented
        out = kwargs.pop("out", None)
        if out is not None:
            (out,) = out
        return _apply(ufunc, ufunc.__name__, inputs, out, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        # CuPy dispatches a NumPy function to cupy's function of the same name, if any;
        # the double offers none, so NumPy raises TypeError ("no implementation found")
        return NotImplemented

    def _binary(ufunc, name, reflected=False):  # noqa: N805  (builds methods)
        def op(self, other):
            return _apply(ufunc, name, (other, self) if reflected else (self, other))
        return op

    def _inplace(ufunc, name):  # noqa: N805
        def op(self, other):
            return _apply(ufunc, name, (self, other), out=self)
        return op

    __add__, __radd__, __iadd__ = (_binary(np.add, "+"), _binary(np.add, "+", True),
                                   _inplace(np.add, "+="))
    __sub__, __rsub__, __isub__ = (_binary(np.subtract, "-"), _binary(np.subtract, "-", True),
                                   _inplace(np.subtract, "-="))
    __mul__, __rmul__, __imul__ = (_binary(np.multiply, "*"), _binary(np.multiply, "*", True),
                                   _inplace(np.multiply, "*="))
    __truediv__, __rtruediv__, __itruediv__ = (
        _binary(np.true_divide, "/"), _binary(np.true_divide, "/", True),
        _inplace(np.true_divide, "/="))
    __matmul__, __rmatmul__ = _binary(np.matmul, "@"), _binary(np.matmul, "@", True)
    __pow__ = _binary(np.power, "**")
    __ge__, __gt__ = _binary(np.greater_equal, ">="), _binary(np.greater, ">")
    __le__, __lt__ = _binary(np.less_equal, "<="), _binary(np.less, "<")
    __eq__, __ne__ = _binary(np.equal, "=="), _binary(np.not_equal, "!=")
    __hash__ = None
    del _binary, _inplace

    def __neg__(self):
        return ndarray._wrap(-self._a)


def _ufunc(np_ufunc):
    """A cupy ufunc: device arrays and scalars in, a device array out."""
    def ufunc(x, /, out=None, *, casting="same_kind", dtype=None):
        return _apply(np_ufunc, np_ufunc.__name__, (x,), out, casting=casting, dtype=dtype)
    ufunc.__name__ = np_ufunc.__name__
    return ufunc


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """A device array as it is (or cast); anything else copied from the host."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    return ndarray._wrap(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        obj = obj._a
    return ndarray._wrap(np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def empty(shape, dtype=float, order="C"):
    return ndarray._wrap(np.empty(shape, dtype, order))


def zeros(shape, dtype=float, order="C"):
    return ndarray._wrap(np.zeros(shape, dtype, order))


def ones(shape, dtype=float, order="C"):
    return ndarray._wrap(np.ones(shape, dtype, order))


# CuPy reads only a prototype's dtype, flags and shape (cupy/_creation/basic.py,
# _new_like_order_and_strides): a host prototype is allowed, as here.
def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    proto = prototype._a if isinstance(prototype, ndarray) else prototype
    return ndarray._wrap(np.empty_like(proto, dtype=dtype, order=order, shape=shape))


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    proto = a._a if isinstance(a, ndarray) else a
    return ndarray._wrap(np.zeros_like(proto, dtype=dtype, order=order, shape=shape))


def arange(start, stop=None, step=1, dtype=None):
    return ndarray._wrap(np.arange(start, stop, step, dtype=dtype))


def vdot(a, b):
    return _apply(np.vdot, "vdot", (a, b))


def broadcast_to(array, shape):
    """cupy.broadcast_to: a view of a device array with stride 0 along the new axes
    (cupy/_manipulation/dims.py, ``broadcast_to`` -> ``array._broadcast_to``): a method
    of cupy's ndarray, so a host array is refused."""
    if not isinstance(array, ndarray):
        raise TypeError(f"Unsupported type {type(array)}")
    return ndarray._wrap(np.broadcast_to(array._a, shape))


def matmul(x1, x2, /, out=None):
    """cupy.matmul (benchmarks/bench.py's GEMM floor writes into ``out``)."""
    return _apply(np.matmul, "matmul", (x1, x2), out)


class FakeStream:
    """cupy.cuda.Stream: the double runs everything in order, so synchronizing is free."""

    def synchronize(self):
        pass


def get_current_stream(device_id=-1):
    return FakeStream()


class AddUfunc:
    """``cupy.add``, of which zaremba_ref uses ``at`` alone (the embedding gradient)."""

    def at(self, a, indices, b=None):
        """cupy.add.at: ``a._scatter_op(indices, b, 'add')`` (cupy/_core/_kernel.pyx,
        ``ufunc.at``), so ``a`` must be a device array; repeated indices accumulate."""
        a._scatter_op(indices, b, "add")


MODULE_FUNCTIONS = {f.__name__: f for f in (asarray, array, empty, empty_like, zeros,
                                            zeros_like, ones, arange, vdot, matmul,
                                            broadcast_to)}
CUDA_FUNCTIONS = {"get_current_stream": get_current_stream}   # cupy.cuda.<name>
# cupy.cuda.runtime.<name>, getDeviceCount aside (make_fake_cupy's device_count): the
# device that benchmarks/bench.py records (zaremba_ref.machine.cuda_device)
RUNTIME_FUNCTIONS = {
    "getDevice": lambda: 0,
    "getDeviceProperties": lambda device: {"name": b"fake GPU (tests/fake_cupy.py)",
                                           "major": 9, "minor": 0, "totalGlobalMem": 2**34},
    "runtimeGetVersion": lambda: 13000}
STREAM_METHODS = ("synchronize",)
UFUNCS = {name: _ufunc(getattr(np, name)) for name in ("exp", "log", "isfinite", "tanh")}
UFUNC_METHODS = {"add": AddUfunc}           # cupy.<name>, for its methods alone
GENERATOR_METHODS = ("random",)
# The ndarray methods and attributes zaremba_ref uses (the double offers no other public one)
NDARRAY_METHODS = ("get", "reshape", "transpose", "ravel", "copy", "astype", "fill", "max",
                   "min", "sum", "mean", "all")
NDARRAY_PRIVATE = ("_scatter_op",)          # what CuPy's own functions call on an array
NDARRAY_ATTRIBUTES = ("shape", "dtype", "size", "ndim", "strides", "itemsize", "nbytes",
                      "flags", "T")
DTYPES = ("dtype", "float32", "float64", "int32", "int64")


class FakeGenerator:
    """What zaremba_ref uses of ``cupy.random.Generator``, drawing NumPy's numbers (so a
    seed gives the masks of the CPU path) onto the device, as CuPy's ``random`` returns
    a device array (cupy/random/_generator_api.pyx, ``Generator.random``). As in CuPy,
    the seed is anything ``numpy.random.SeedSequence`` takes (cupy/random/
    _bit_generator.pyx, ``BitGenerator.__init__``), and ``bit_generator.state`` is a
    method (it returns the device pointer of cuRAND's state), not NumPy's dict."""

    def __init__(self, seed=None):
        self._numpy = np.random.default_rng(np.random.SeedSequence(seed))
        self.bit_generator = types.SimpleNamespace(state=lambda: 0)

    def random(self, size=None, dtype=np.float64, out=None):
        if out is not None and not isinstance(out, ndarray):
            raise TypeError("out must be a cupy.ndarray")
        a = self._numpy.random(size, dtype=dtype)
        if out is None:
            return ndarray._wrap(np.asarray(a))
        out[...] = ndarray._wrap(np.asarray(a))
        return out


def make_fake_cupy(builder: Builder, device_count: int | Exception = 1):
    """A ``cupy`` stand-in: device arrays that keep CuPy's host/device boundary,
    CPU-compiled ElementwiseKernels.

    ``device_count``: what ``cupy.cuda.runtime.getDeviceCount()`` returns, or an
    exception it raises (no driver). ``cupy.kernels`` lists every kernel built,
    ``cupy.host_to_device`` every host array that CuPy would copy over implicitly.
    """
    cupy = types.ModuleType("cupy")
    cupy.__doc__ = "A test double of cupy (tests/fake_cupy.py)."
    HOST_TO_DEVICE.clear()
    cupy.host_to_device = HOST_TO_DEVICE     # the implicit copies CuPy would make
    # Exactly what zaremba_ref calls on backend.xp; tests/test_fake_cupy.py holds each one
    # against the real cupy.
    cupy.ndarray = ndarray
    for name in DTYPES:
        setattr(cupy, name, getattr(np, name))
    for name, fn in {**MODULE_FUNCTIONS, **UFUNCS}.items():
        setattr(cupy, name, fn)
    for name, cls in UFUNC_METHODS.items():
        setattr(cupy, name, cls())
    cupy.random = types.SimpleNamespace(default_rng=FakeGenerator)

    def get_device_count() -> int:
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=get_device_count, **RUNTIME_FUNCTIONS), **CUDA_FUNCTIONS)
    cupy.__version__ = "0+fake"
    cupy.kernels = []

    def elementwise_kernel(*args, **kwargs) -> CpuElementwiseKernel:
        kernel = CpuElementwiseKernel(*args, builder=builder, device=True, **kwargs)
        cupy.kernels.append(kernel)
        return kernel

    cupy.ElementwiseKernel = elementwise_kernel

    def missing(name: str):
        raise AttributeError(f"the fake cupy (tests/fake_cupy.py) has no {name!r}: if CuPy "
                             "has it with NumPy's semantics, add it to make_fake_cupy")

    cupy.__getattr__ = missing

    return cupy

