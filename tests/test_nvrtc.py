"""Every CUDA kernel as CuPy would compile it, through CUDA's own compiler (NVRTC), on a
machine without a GPU.

CuPy builds the CUDA source of an ``ElementwiseKernel`` call from the kernel's spec and
the kinds of its arguments (``_ArgInfo``: an array of some dtype, ndim, contiguity and
index width, CuPy's indexer, or a scalar), with ``T`` bound by a ``_TypeMap``. This test
asks CuPy's own generator (``cupy._core._kernel._get_elementwise_kernel_code``) for that
source, for every ``KernelSpec`` x {float32, float64} x every argument kind that
``cuda_backend.py`` passes or CuPy's launcher can make of it, prefixes CuPy's headers,
compiles with CuPy's compiler options and NVRTC to PTX for compute_80 (A100) and
compute_90 (H100/H200) and to machine code (CUBIN) for sm_80 and sm_90, as CuPy does on
such a device, and checks that each kernel was emitted. The argument kinds:

* contiguous arrays (CuPy folds them to one dimension, ``reduce_dims``), and arrays of 2
  and 3 dimensions, contiguous or strided: the dropout masks are time-major views
  (T, B, H) of batch-major (B, T, H) arrays, and naive mode's step masks are (B, H)
  slices of those, which CuPy cannot fold;
* the mask alone strided beside contiguous inputs (the dropout call as the model makes it);
* 32- and 64-bit indexing (CuPy picks 64 bits for arrays over 2 GiB);
* raw arrays as the backend passes them (``z``, ``gates``, ``dz`` (B, 4H), ``sums``
  (N, 1), ``targets`` (N,) of int32 or int64);
* Python scalars (``H``, ``V``, ``scale``, ``lr_scale``: CuPy's ``CScalar``) and, though the
  backend passes none today, the same ``T`` scalars as device arrays.

These are CuPy's private functions: the versions are pinned in pyproject's
``gpu-compile`` extra, and a CuPy that moves them fails here, naming what moved. Without
cupy or NVRTC the tests skip with the reason; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import importlib
import inspect
import re
from types import SimpleNamespace

import numpy as np
import pytest

from zaremba_ref import kernels
from zaremba_ref.kernels import CUDA_PREAMBLE

from conftest import skip_or_fail

PINNED = "cupy-cuda12x==14.2.0, nvidia-cuda-nvrtc-cu12==12.9.86"   # pyproject: gpu-compile
# PTX for the virtual architectures, and CUBIN (machine code: NVRTC runs ptxas too) for
# the real ones, which is what CuPy asks NVRTC for on a device it knows
# (cupy/cuda/compiler.py, _get_arch_for_options_for_nvrtc)
ARCHS = ("compute_80", "compute_90", "sm_80", "sm_90")
FLOATS = (np.float32, np.float64)
INTS = (np.int32, np.int64)          # word ids: int32 from data.py, int64 from a user's arrays
# The raw arrays' dimensions as cuda_backend passes them: z[t-1], gates[t-1], dz[t-1]
# (B, 4H); sums (N, 1); targets (N,). A new raw parameter must be added here.
RAW_NDIM = {"z": 2, "gates": 2, "dz": 2, "sums": 2, "targets": 1}
ARRAY, INDEXER, SCALAR = 1, 2, 3     # CuPy's _ArgKind (cupy/_core/_kernel.pxd)

# What this file needs from CuPy, private names included: (module, attribute)
NEEDED = [("cupy", "ElementwiseKernel"), ("cupy", "ndarray"),
          ("cupy._core._kernel", "_get_elementwise_kernel_code"),
          ("cupy._core._kernel", "_ArgInfo"), ("cupy._core._kernel", "_TypeMap"),
          ("cupy._core._scalar", "CScalar"), ("cupy._core._carray", "Indexer"),
          ("cupy._core.core", "_cupy_header_list"),
          ("cupy._core.core", "assemble_cupy_compiler_options"),
          ("cupy._core.core", "_get_cccl_include_options"),
          ("cupy._core.core", "_get_header_dir_path"),
          ("cupy.cuda.nvrtc", "createProgram"), ("cupy.cuda.nvrtc", "compileProgram"),
          ("cupy.cuda.nvrtc", "getPTX"), ("cupy.cuda.nvrtc", "getCUBIN"),
          ("cupy.cuda.nvrtc", "getProgramLog"),
          ("cupy.cuda.nvrtc", "destroyProgram"), ("cupy.cuda.nvrtc", "getVersion"),
          ("cupy.cuda.nvrtc", "NVRTCError")]


# What CuPy adds when it compiles an elementwise kernel (cupy/cuda/compiler.py:
# _compile_with_cache_cuda, _compile_using_nvrtc); the architecture comes last
NVRTC_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def options_without_cuda_headers(found: dict) -> tuple:
    """CuPy's options (cupy/_core/core.pyx, assemble_cupy_compiler_options) less the CUDA
    toolkit's include folder, which CuPy insists on finding but these kernels do not use."""
    return tuple(found["_get_cccl_include_options"]()) + (
        "--std=c++17", "-I" + found["_get_header_dir_path"]()) + NVRTC_OPTIONS


class NvrtcError(Exception):
    """NVRTC refused a source; the message is its log."""


def resolve(dotted: str):
    """A module by its dotted name, imported or reached as an attribute (cupy.cuda
    offers nvrtc as an attribute, not as an importable submodule)."""
    try:
        return importlib.import_module(dotted)
    except ImportError:
        parent, _, name = dotted.rpartition(".")
        return getattr(resolve(parent), name)


@pytest.fixture(scope="module")
def cu():
    """CuPy's code generator and NVRTC, or a skip (a failure under CI=true) saying why.
    A CuPy without one of the NEEDED names fails, naming it."""
    try:
        import cupy
    except ImportError as e:
        skip_or_fail(f"cupy is not installed ({e}); pip install -e \".[gpu-compile]\" "
                     f"({PINNED})")
    found, moved = {}, []
    for module, name in NEEDED:
        try:
            found[name] = getattr(resolve(module), name)
        except (ImportError, AttributeError):
            moved.append(f"{module}.{name}")
    if moved:
        pytest.fail(f"CuPy {cupy.__version__} has no {', '.join(moved)}: this test drives "
                    f"CuPy's code generator and was written against {PINNED}; find where "
                    "they moved and update tests/test_nvrtc.py")
    try:
        version = found["getVersion"]()
    except Exception as e:  # the NVRTC library is missing: CuPy raises when it loads it
        skip_or_fail(f"NVRTC is not loadable ({type(e).__name__}: {e}); pip install "
                     f"nvidia-cuda-nvrtc-cu12 ({PINNED})")
    try:
        options = tuple(found["assemble_cupy_compiler_options"](())) + NVRTC_OPTIONS
    except RuntimeError:
        # No CUDA toolkit headers on this machine (CuPy adds their folder on a GPU
        # machine; test_without_cuda_headers_the_kernels_compile shows none is needed)
        options = options_without_cuda_headers(found)
    header = "".join(f"#include <{h}>\n" for h in found["_cupy_header_list"])
    return SimpleNamespace(cupy=cupy, version=version, options=options, header=header,
                           **found)


def arg_info(cu, kind: int, dtype=None, ndim: int = 0, c_contiguous: bool = True,
             index_32_bits: bool = True):
    typ = {ARRAY: cu.ndarray, INDEXER: cu.Indexer, SCALAR: cu.CScalar}[kind]
    try:
        return cu._ArgInfo(kind, typ, None if dtype is None else np.dtype(dtype), ndim,
                           c_contiguous, index_32_bits)
    except TypeError as e:
        pytest.fail(f"CuPy {cu.cupy.__version__} changed _ArgInfo(kind, type, dtype, ndim, "
                    f"c_contiguous, index_32_bits) ({e}); written against {PINNED}")


def is_scalar(spec: kernels.KernelSpec, name: str) -> bool:
    """Whether the backend passes parameter ``name`` as a Python scalar: a size the wrapper
    reads off an array (H, V: not an argument of the NumPy twin), or an argument the twin
    annotates as a number (scale, lr_scale)."""
    twin = inspect.signature(getattr(kernels, spec.name)).parameters
    return name not in twin or twin[name].annotation in ("float", "int", float, int)


def variants(cu, spec, params, types: dict) -> list[tuple[str, tuple]]:
    """(label, arginfos) for every argument kind the backend can make CuPy see."""
    dtype = lambda p: p.dtype if p.dtype is not None else types[p.ctype]   # noqa: E731
    scalar = {p.name for p in params if not p.raw and is_scalar(spec, p.name)}
    has_mask = any(p.name == "mask" for p in params)
    has_t_scalar = any(p.dtype is None and p.name in scalar for p in params)
    layouts = ["contiguous", "strided"] + ["mask strided"] * has_mask + [
        "device scalars"] * has_t_scalar
    out = []
    for ndim in (1, 2, 3):
        for i32 in (True, False):
            for layout in layouts:
                infos = []
                for p in params:
                    if p.raw:
                        if p.name not in RAW_NDIM:
                            pytest.fail(f"raw parameter {p.name!r} is new: add how the "
                                        "backend passes it to RAW_NDIM in test_nvrtc.py")
                        infos.append(arg_info(cu, ARRAY, dtype(p), RAW_NDIM[p.name], True,
                                              i32))
                    elif p.name in scalar and p.dtype is None and layout == "device scalars":
                        infos.append(arg_info(cu, ARRAY, dtype(p), ndim, False, i32))
                    elif p.name in scalar:
                        infos.append(arg_info(cu, SCALAR, dtype(p)))
                    else:
                        strided = layout == "strided" or (layout == "mask strided"
                                                          and p.name == "mask")
                        infos.append(arg_info(cu, ARRAY, dtype(p), ndim, not strided, i32))
                infos.append(arg_info(cu, INDEXER, None, ndim, True, i32))   # CIndexer _ind
                out.append((f"{ndim}-d {layout} {'32' if i32 else '64'}-bit", tuple(infos)))
    return out


def generate(cu, spec: kernels.KernelSpec, types: dict) -> tuple[str, list[str]]:
    """One source holding every variant of ``spec`` with ``types``, each generated by
    CuPy and renamed ``<name>_<k>`` (the preamble once: it defines templates)."""
    kernel = cu.ElementwiseKernel(*spec, preamble=CUDA_PREAMBLE)
    params = kernel.params[:-1]                       # the last one is CuPy's _ind
    assert kernel.params[-1].name == "_ind", "CuPy's indexer is no longer the last parameter"
    type_map = cu._TypeMap(tuple(sorted((k, np.dtype(v)) for k, v in types.items())))
    sources, names = [], []
    for k, (label, infos) in enumerate(variants(cu, spec, params, types)):
        name = f"{spec.name}_{k}"
        sources.append(f"// {label}\n" + cu._get_elementwise_kernel_code(
            infos, type_map, kernel.params, kernel.operation, name,
            CUDA_PREAMBLE if k == 0 else ""))
        names.append(name)
    return cu.header + "\n".join(sources), names


def compile_ptx(cu, source: str, arch: str) -> str | bytes:
    """NVRTC: ``source`` -> PTX (text) for a ``compute_`` arch, CUBIN (bytes) for an
    ``sm_`` one, or NvrtcError with the compiler's log."""
    prog = cu.createProgram(source, "zaremba_ref_kernels.cu", [], [])
    try:
        try:
            cu.compileProgram(prog, [*cu.options, f"-arch={arch}"])
        except cu.NVRTCError:
            log = cu.getProgramLog(prog)
            raise NvrtcError(log if isinstance(log, str) else log.decode()) from None
        if arch.startswith("sm_"):
            return cu.getCUBIN(prog)
        ptx = cu.getPTX(prog)
        return ptx if isinstance(ptx, str) else ptx.decode()
    finally:
        cu.destroyProgram(prog)


def type_maps(spec: kernels.KernelSpec) -> list[dict]:
    """T as float32 and float64; I (word ids) as int32 and int64 where the spec has it."""
    ints = INTS if re.search(r"\bI\b", spec.in_params + spec.out_params) else (None,)
    return [{"T": f} | ({"I": i} if i else {}) for f in FLOATS for i in ints]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(kernels.CUDA_KERNELS))
def test_nvrtc_compiles_every_kernel_as_cupy_generates_it(cu, name, arch):
    spec = kernels.CUDA_KERNELS[name]
    for types in type_maps(spec):
        source, names = generate(cu, spec, types)
        try:
            ptx = compile_ptx(cu, source, arch)
        except NvrtcError as e:
            pytest.fail(f"NVRTC {cu.version} refused {name} with {types} for {arch}:\n{e}")
        if arch.startswith("sm_"):                    # an ELF with every kernel's symbol
            assert ptx[:4] == b"\x7fELF", arch
            for kernel_name in names:
                assert kernel_name.encode() + b"\0" in ptx, (kernel_name, types, arch)
            continue
        for kernel_name in names:                     # every variant was emitted
            assert re.search(rf"\.entry {kernel_name}\(", ptx), (kernel_name, types, arch)
        assert f".target sm_{arch.split('_')[1]}" in ptx


def broken(spec: kernels.KernelSpec, operation: str) -> kernels.KernelSpec:
    return spec._replace(operation=operation)


@pytest.mark.parametrize("operation, error", [
    ("out = x * maks", r'identifier "maks" is undefined'),                # a typo
    ("x = out; out = x * mask", r"expression must be a modifiable lvalue"),  # an input written
    ("out = x * mask", None)])                                             # the control
def test_the_check_fails_on_a_broken_body(cu, operation, error):
    source, names = generate(cu, broken(kernels.DROPOUT, operation), {"T": np.float32})
    if error is None:
        assert f".entry {names[-1]}(" in compile_ptx(cu, source, ARCHS[0])
        return
    with pytest.raises(NvrtcError, match=error):
        compile_ptx(cu, source, ARCHS[0])


def test_the_header_and_options_are_cupys(cu):
    """The source starts as CuPy's compile_with_cache makes it (its header list), and T
    is bound by CuPy's typedef, not by us."""
    source, _ = generate(cu, kernels.SGD_UPDATE, {"T": np.float64})
    assert source.startswith("#include <cupy/complex.cuh>\n#include <cupy/carray.cuh>\n")
    assert "typedef double T;" in source and "CArray<double, 1, 1, 1> _raw_p" in source
    assert "--std=c++17" in cu.options and any(o.startswith("-I") for o in cu.options)


def test_without_cuda_headers_the_kernels_compile(cu):
    """CI machines have no CUDA toolkit headers; CuPy's headers and ours need none."""
    bare = SimpleNamespace(**{**vars(cu), "options": options_without_cuda_headers(vars(cu))})
    assert not any("cuda" in o.lower() and "cupy" not in o for o in bare.options)
    for spec in kernels.CUDA_KERNELS.values():
        source, names = generate(bare, spec, type_maps(spec)[-1])
        ptx = compile_ptx(bare, source, "compute_90")
        assert all(f".entry {n}(" in ptx for n in names)
