"""The test double of cupy (tests/fake_cupy.py) held against the real cupy, and its
host/device boundary.

The double is only worth what it shares with CuPy. With cupy installed (no GPU needed:
nothing here launches a kernel), every name the double offers must exist in the real
cupy with a compatible signature, CuPy's own parser must read every ``KernelSpec`` as the
double does, and each GPU wrapper must pass its arguments in the order of the parameters
CuPy parsed. Any drift fails, naming the name. Under ``CI=true`` a missing cupy fails.

The boundary rules (a NumPy array never passes silently where CuPy would refuse it) are
checked on the double itself; where CuPy enforces each one is cited in fake_cupy.py.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys

import numpy as np
import pytest

from zaremba_ref import kernels
from zaremba_ref.checkpoint import save_checkpoint
from zaremba_ref.kernels import CUDA_PREAMBLE

import fake_cupy as fc
from conftest import skip_or_fail

KIND = inspect.Parameter


@pytest.fixture(scope="module")
def cupy():
    """The real ``cupy``; a skip (a failure under CI=true) without it."""
    try:
        import cupy
    except ImportError as e:
        skip_or_fail(f"cupy is not installed ({e}): pip install -e \".[gpu-compile]\"")
    return cupy


@pytest.fixture
def double(builder, monkeypatch):
    cupy = fc.make_fake_cupy(builder)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


# -- signatures ---------------------------------------------------------------------------

def signature_of(fn) -> list[tuple[str, object, bool]]:
    """[(name, kind, has default)] of ``fn`` without ``self``: from inspect, or, for
    Cython methods and CuPy's ufuncs, from the first line of the docstring, which Cython
    and CuPy write as ``name(params)``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return signature_from_doc(fn.__doc__ or "", repr(fn))
    return [(p.name, p.kind, p.default is not KIND.empty) for p in params if p.name != "self"]


def signature_from_doc(doc: str, what: str) -> list[tuple[str, object, bool]]:
    """The signature on the first line of ``doc``, read with ``ast`` (nothing evaluated)."""
    first = doc.strip().splitlines()[0].replace("\\*", "*") if doc.strip() else ""
    if "(" not in first:
        raise AssertionError(f"{what}: no signature, and no `name(params)` docstring line")
    text = first[first.index("(") + 1:first.rindex(")")]
    text = re.sub(r"\b(?:int|bint|str|object|double|Py_ssize_t|size_t)\s+(?=\w)", "", text)
    args = ast.parse(f"def f({text}): pass").body[0].args
    pos = args.posonlyargs + args.args
    defaults = [False] * (len(pos) - len(args.defaults)) + [True] * len(args.defaults)
    out = [(a.arg, KIND.POSITIONAL_ONLY if a in args.posonlyargs else
            KIND.POSITIONAL_OR_KEYWORD, d) for a, d in zip(pos, defaults)]
    if args.vararg:
        out.append((args.vararg.arg, KIND.VAR_POSITIONAL, False))
    out += [(a.arg, KIND.KEYWORD_ONLY, d is not None)
            for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        out.append((args.kwarg.arg, KIND.VAR_KEYWORD, False))
    return [p for p in out if p[0] != "self"]


def incompatibilities(fake, real) -> list[str]:
    """How a call written against ``fake`` could go wrong against ``real``: empty if every
    way of calling the double is a way of calling CuPy."""
    f, r = signature_of(fake), signature_of(real)
    positional = (KIND.POSITIONAL_ONLY, KIND.POSITIONAL_OR_KEYWORD)
    f_pos, r_pos = [p for p in f if p[1] in positional], [p for p in r if p[1] in positional]
    r_names = {p[0]: p for p in r}
    r_var = {p[1] for p in r}
    problems = []
    for k, (name, kind, default) in enumerate(f_pos):
        if k >= len(r_pos):
            if KIND.VAR_POSITIONAL not in r_var:
                problems.append(f"positional {name!r} (#{k}) has no counterpart")
            continue
        r_name, r_kind, r_default = r_pos[k]
        if kind == KIND.POSITIONAL_OR_KEYWORD and r_kind == KIND.POSITIONAL_OR_KEYWORD \
                and name != r_name:
            problems.append(f"positional #{k} is {name!r}, CuPy's is {r_name!r}")
        if default and not r_default:
            problems.append(f"{name!r} is optional here, required in CuPy")
    for name, kind, default in f:
        if kind in (KIND.KEYWORD_ONLY, KIND.POSITIONAL_OR_KEYWORD) and name not in r_names \
                and KIND.VAR_KEYWORD not in r_var and name not in dict(
                    (p[0], p) for p in f_pos[:len(r_pos)]):
            problems.append(f"keyword {name!r} is not CuPy's")
        if kind == KIND.VAR_POSITIONAL and KIND.VAR_POSITIONAL not in r_var:
            problems.append(f"*{name} is not CuPy's")
    f_names = {p[0] for p in f}
    for k, (name, kind, default) in enumerate(r):
        if kind in (KIND.VAR_POSITIONAL, KIND.VAR_KEYWORD) or default or name in f_names:
            continue
        if kind in positional and r_pos.index((name, kind, default)) < len(f_pos):
            continue                                 # filled positionally by the double's
        problems.append(f"CuPy requires {name!r}, which the double does not take")
    return problems


def test_the_compatibility_check_can_fail():
    def cupy_like(a, dtype=None, *, copy=None): ...
    assert incompatibilities(cupy_like, cupy_like) == []
    def renamed(b, dtype=None): ...                                   # noqa: E306
    def extra_keyword(a, dtype=None, *, blocking=False): ...          # noqa: E306
    def optional_first(a=None): ...                                   # noqa: E306
    assert incompatibilities(renamed, cupy_like) == ["positional #0 is 'b', CuPy's is 'a'"]
    assert incompatibilities(extra_keyword, cupy_like) == ["keyword 'blocking' is not CuPy's"]
    assert incompatibilities(optional_first, cupy_like) == [
        "'a' is optional here, required in CuPy"]
    cython = signature_from_doc("_ndarray_base.get(self, stream=None, order='C', out=None, "
                                "blocking=True)\n\n  Returns a copy", "get")
    assert [p[0] for p in cython] == ["stream", "order", "out", "blocking"]
    typed = signature_from_doc("get_current_stream(int device_id=-1)\n\nGets", "g")
    assert typed == [("device_id", KIND.POSITIONAL_OR_KEYWORD, True)]
    ufunc = signature_from_doc("exp(x, /, out=None, \\*, casting='same_kind', dtype=None)", "e")
    assert [(p[0], p[1]) for p in ufunc][:2] == [("x", KIND.POSITIONAL_ONLY),
                                                 ("out", KIND.POSITIONAL_OR_KEYWORD)]


def public(obj) -> set[str]:
    return {n for n in vars(obj) if not n.startswith("_")}


def test_every_name_the_double_offers_is_listed_and_checked(double):
    """The lists below are the double's whole surface: a name added to it without being
    added to a list (and so checked against CuPy) fails here."""
    extras = {"kernels", "host_to_device", "cuda", "random", "ElementwiseKernel", "ndarray"}
    assert public(double) == (set(fc.MODULE_FUNCTIONS) | set(fc.UFUNCS) | set(fc.DTYPES)
                              | set(fc.UFUNC_METHODS) | extras)
    assert public(fc.ndarray) == set(fc.NDARRAY_METHODS) | set(fc.NDARRAY_ATTRIBUTES)
    assert {n for n in dir(fc.FakeGenerator) if not n.startswith("_")} == set(
        fc.GENERATOR_METHODS)


@pytest.mark.parametrize("name", sorted(fc.MODULE_FUNCTIONS) + sorted(fc.UFUNCS))
def test_module_functions_exist_in_cupy_with_compatible_signatures(cupy, name):
    assert hasattr(cupy, name), f"cupy has no {name!r}"
    fake = {**fc.MODULE_FUNCTIONS, **fc.UFUNCS}[name]
    assert incompatibilities(fake, getattr(cupy, name)) == [], name


def test_dtypes_ndarray_and_runtime_exist_in_cupy(cupy, double):
    for name in fc.DTYPES:
        assert getattr(cupy, name) is getattr(np, name), f"cupy.{name} is not numpy's"
    assert isinstance(cupy.ndarray, type)
    assert callable(cupy.cuda.runtime.getDeviceCount)
    assert set(vars(sys.modules["cupy"].cuda.runtime)) == {"getDeviceCount"} | set(
        fc.RUNTIME_FUNCTIONS)
    for name, fake in fc.RUNTIME_FUNCTIONS.items():      # Cython: the names, the arity
        assert incompatibilities(fake, getattr(cupy.cuda.runtime, name)) == [], \
            f"cupy.cuda.runtime.{name}"
    assert isinstance(cupy.__version__, str)
    assert set(vars(sys.modules["cupy"].cuda)) == {"runtime"} | set(fc.CUDA_FUNCTIONS)
    for name, fake in fc.CUDA_FUNCTIONS.items():
        assert incompatibilities(fake, getattr(cupy.cuda, name)) == [], f"cupy.cuda.{name}"
    for name in fc.STREAM_METHODS:
        assert incompatibilities(getattr(fc.FakeStream, name),
                                 getattr(cupy.cuda.Stream, name)) == [], f"Stream.{name}"
    assert callable(cupy.ElementwiseKernel)
    assert incompatibilities(fc.FakeGenerator, cupy.random.default_rng) == []


@pytest.mark.parametrize("name", fc.NDARRAY_METHODS)
def test_ndarray_methods_exist_in_cupy_with_compatible_signatures(cupy, name):
    assert callable(getattr(cupy.ndarray, name, None)), f"cupy.ndarray has no {name!r}"
    assert incompatibilities(getattr(fc.ndarray, name), getattr(cupy.ndarray, name)) == [], \
        name


@pytest.mark.parametrize("name", fc.NDARRAY_ATTRIBUTES)
def test_ndarray_attributes_exist_in_cupy(cupy, name):
    assert hasattr(cupy.ndarray, name), f"cupy.ndarray has no {name!r}"
    assert not callable(getattr(cupy.ndarray, name)), f"cupy.ndarray.{name} is a method"


def test_ufunc_methods_and_the_generator_match_cupy(cupy):
    for name, cls in fc.UFUNC_METHODS.items():
        for method in public(cls):
            assert incompatibilities(getattr(cls(), method),
                                     getattr(getattr(cupy, name), method)) == [], name
    for name in fc.NDARRAY_PRIVATE:
        assert incompatibilities(getattr(fc.ndarray, name), getattr(cupy.ndarray, name)) == []
    # cupy.add.at(a, indices, b) is a._scatter_op(indices, b, 'add') in CuPy as in the
    # double (no device needed to see it: CuPy hands the call to ``a``)
    calls = []

    class Probe:
        def _scatter_op(self, slices, value, op):
            calls.append((slices, value, op))
    cupy.add.at(Probe(), "indices", "b")
    assert calls == [("indices", "b", "add")]
    for name in fc.GENERATOR_METHODS:
        assert incompatibilities(getattr(fc.FakeGenerator, name),
                                 getattr(cupy.random.Generator, name)) == [], name
    # default_rng(seed) is Generator(XORWOW(seed)) (cupy/random/__init__.py), whose state
    # is a method (the device state, cupy/random/_bit_generator.pyx), not NumPy's dict:
    # the trainer relies on that to tell the generators apart (train._rng_state)
    assert callable(cupy.random.XORWOW.state)


# -- the kernels as CuPy parses them ----------------------------------------------------

SPECS = sorted(kernels.CUDA_KERNELS)


def parsed(params) -> list[tuple]:
    """(name, raw, const, C type or placeholder, dtype) of each parameter, CuPy's or ours."""
    out = []
    for p in params:
        if p.name == "_ind":                       # CuPy's indexer, appended to every kernel
            continue
        const = p.is_const if hasattr(p, "is_const") else p.const
        ctype = p.ctype if p.ctype is not None else p.type
        out.append((p.name, p.raw, const, ctype, None if p.dtype is None else np.dtype(p.dtype)))
    return out


@pytest.mark.parametrize("name", SPECS)
def test_cupy_parses_each_kernel_spec_as_the_double_does(cupy, name):
    spec = kernels.CUDA_KERNELS[name]
    theirs = cupy.ElementwiseKernel(*spec, preamble=CUDA_PREAMBLE)
    ours = fc.parse_params(spec.in_params, True) + fc.parse_params(spec.out_params, False)
    assert (theirs.nin, theirs.nout) == (len(fc.parse_params(spec.in_params, True)),
                                         len(fc.parse_params(spec.out_params, False))), name
    assert parsed(theirs.params) == parsed(ours), name
    assert (theirs.name, theirs.operation, theirs.preamble) == (spec.name, spec.operation,
                                                                CUDA_PREAMBLE)


class Recorder:
    """An ElementwiseKernel that records its arguments instead of running."""

    def __init__(self, *spec, preamble=""):
        self.spec, self.calls = spec, []

    def __call__(self, *args):
        self.calls.append(args)


@pytest.mark.parametrize("name", SPECS)
def test_each_wrapper_passes_its_arguments_in_cupys_parameter_order(cupy, double, name):
    """Call each GPU wrapper with distinct arrays named as the NumPy twin names them; the
    argument at position k must be the one CuPy parsed as parameter k (H and V: the
    sizes the kernel bodies use)."""
    from zaremba_ref.cuda_backend import make_gpu_backend
    recorders = []
    double.ElementwiseKernel = lambda *a, **k: recorders.append(Recorder(*a, **k)) \
        or recorders[-1]
    gpu = make_gpu_backend()
    B, H, V = 2, 3, 7
    shapes = {"z": (B, 4 * H), "gates": (B, 4 * H), "dz": (B, 4 * H), "e": (B, V),
              "sums": (B, 1), "targets": (B,)}
    twin = inspect.signature(getattr(kernels, name)).parameters
    args = {}
    for k, p in enumerate(twin):
        if twin[p].annotation in ("float", float):
            args[p] = 0.25 + k                                       # a distinct scalar
        else:
            args[p] = double.asarray(np.full(shapes.get(p, (B, H)), float(k)))
    getattr(gpu, name)(**args)
    (rec,) = recorders
    (call,) = rec.calls
    expected = dict(args, H=H, V=V)
    theirs = [p.name for p in cupy.ElementwiseKernel(*rec.spec).params if p.name != "_ind"]
    assert len(call) == len(theirs), name
    for k, (param, arg) in enumerate(zip(theirs, call)):
        want = expected[param]
        assert arg is want or (not isinstance(want, fc.ndarray) and arg == want), \
            f"{name}: argument {k} should be {param!r}"


# -- the boundary: the double refuses what CuPy refuses -----------------------------------

def test_implicit_conversion_to_numpy_raises_and_get_is_the_way_out(double, tmp_path):
    a = double.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        save_checkpoint(tmp_path / "c.npz", {"w": a}, [], {})      # device params: refused
    got = a.get()
    assert type(got) is np.ndarray and got.tolist() == [0.0, 1.0, 2.0]
    assert float(a[1]) == 1.0 and int(a[2]) == 2 and bool(a[1])       # via get(), as CuPy


def test_mixing_device_and_numpy_arrays_in_arithmetic_raises(double):
    a, h = double.asarray(np.ones(3)), np.ones(3)
    for op in (lambda: a + h, lambda: h + a, lambda: a * h, lambda: h @ a, lambda: a >= h,
               lambda: np.multiply(a, h), lambda: double.exp(h)):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            op()
    with pytest.raises(TypeError, match="Unsupported type"):
        a += h
    assert type(a + 1.5) is fc.ndarray and type(np.float32(2) * a) is fc.ndarray
    assert type(np.exp(a)) is fc.ndarray                              # NumPy's ufunc: to cupy's


def test_elementwise_kernel_rejects_numpy_arguments(double):
    k = double.ElementwiseKernel(*kernels.DROPOUT)
    x = double.asarray(np.ones((2, 3)))
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        k(x, np.ones((2, 3)), double.empty((2, 3)))
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        k(x, x, np.empty((2, 3)))                                   # a host output, too
    with pytest.raises(TypeError, match="Output arguments type must be cupy.ndarray"):
        k(x, x, 0.0)
    out = double.empty((2, 3))
    assert k(x, x, out) is out and type(k(x, x)) is fc.ndarray


def test_indexing_follows_cupys_rules_for_host_arrays(double):
    a = double.asarray(np.arange(12.0).reshape(4, 3))
    assert a[np.array([0, 2])].get().tolist() == [[0, 1, 2], [6, 7, 8]]   # host index: copied
    assert double.host_to_device == ["index ndarray (2,)"]
    assert a[double.arange(2)].shape == (2, 3) and len(double.host_to_device) == 1
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[0] = np.zeros(3)                                          # basic index: refused
    a[np.array([1])] = np.full((1, 3), -1.0)                          # advanced: copied over
    assert a.get()[1].tolist() == [-1, -1, -1]
    v = a[1:3]                                                        # a view, as on the device
    v += 100
    assert a.get()[2, 0] == 106
