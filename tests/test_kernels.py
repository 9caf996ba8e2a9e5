"""The CUDA kernels of kernels.py, compiled on the CPU and compared with their NumPy twins.

Each ``KernelSpec`` body runs through ``fake_cupy.CpuElementwiseKernel``: the same C++
text CuPy would compile, in a plain loop over ``i`` built by the host compiler (see
STYLE.md, "Testing GPU kernels on a machine without a GPU"). Hypothesis draws shapes,
float32 and float64, and saturating inputs (|x| up to 100 into sigmoid and tanh).
Kernels without a transcendental function must match their twin bit for bit; the LSTM
cell's may differ only by the last bits of tanh (NumPy's and the C library's).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zaremba_ref import kernels
from zaremba_ref.kernels import CUDA_PREAMBLE

from fake_cupy import Builder, CompileError, CpuElementwiseKernel, parse_params

FLOATS = (np.float32, np.float64)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def kernel(builder: Builder, spec: kernels.KernelSpec) -> CpuElementwiseKernel:
    return CpuElementwiseKernel(*spec, preamble=CUDA_PREAMBLE, builder=builder)


def eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def values(dtype, shape, bound: float = 100.0):
    """Arrays of ``dtype`` with finite elements in [-bound, bound], edges included."""
    width = 32 if dtype == np.float32 else 64
    return hnp.arrays(dtype, shape, elements=st.floats(-bound, bound, width=width))


@st.composite
def cell_shapes(draw):
    return draw(st.sampled_from(FLOATS)), draw(st.integers(1, 6)), draw(st.integers(1, 9))


# -- the specs themselves ----------------------------------------------------------------

def test_every_spec_sits_beside_a_twin_of_its_name():
    assert set(kernels.CUDA_KERNELS) == {"lstm_cell_forward", "lstm_cell_backward", "dropout",
                                          "softmax_cross_entropy_grad", "sgd_update"}
    for name, spec in kernels.CUDA_KERNELS.items():
        assert spec.name == name and callable(getattr(kernels, name))
        params = parse_params(spec.in_params, True) + parse_params(spec.out_params, False)
        assert "i" not in [p.name for p in params]
    for helper in ("sigmoid", "dsigmoid", "dtanh"):     # device helpers mirror NumPy's
        assert f"__device__ U {helper}(U " in CUDA_PREAMBLE and callable(getattr(kernels, helper))


def test_importing_the_package_never_imports_cupy():
    code = ("import sys, zaremba_ref, zaremba_ref.kernels, zaremba_ref.cuda_backend; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_harness_is_as_strict_as_cupy(builder):
    """Writing an input does not compile (CuPy's inputs are const); mixed float types
    are refused like CuPy does; a broadcast non-raw input is read at stride 0."""
    with pytest.raises(CompileError, match="read-only|const"):
        CpuElementwiseKernel("T x", "T y", "x = 1; y = x", "bad", builder=builder)(
            np.zeros(3), np.zeros(3))
    k = CpuElementwiseKernel("T x, T w", "T y", "y = x * w", "mul", builder=builder)
    with pytest.raises(TypeError, match="mismatched"):
        k(np.zeros(3), np.zeros(3, np.float32), np.zeros(3))
    y = k(np.arange(6.0).reshape(2, 3), np.array([[10.0], [100.0]]))   # (2,3) * (2,1)
    np.testing.assert_array_equal(y, [[0, 10, 20], [300, 400, 500]])


# -- the device helpers ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
def test_helpers_match_their_twins_and_never_overflow(builder, dtype):
    x = np.concatenate([np.linspace(-100, 100, 2001), [-np.inf, -1e30, -88.8, -1e-30, 0.0,
                                                        1e-30, 88.8, 1e30, np.inf]]).astype(dtype)
    k = CpuElementwiseKernel("T x", "T s, T ds, T dt", "s = sigmoid(x); ds = dsigmoid(s); "
                             "dt = dtanh(tanh(x))", "helpers", preamble=CUDA_PREAMBLE,
                             builder=builder)
    s, ds, dt = k(x)
    want = kernels.sigmoid(x, out=np.empty_like(x))
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    assert s[x == -np.inf] == 0 and s[x == np.inf] == 1
    np.testing.assert_allclose(s, want, rtol=0, atol=4 * eps(dtype))
    np.testing.assert_array_equal(ds, kernels.dsigmoid(s))         # same formula, same input
    np.testing.assert_allclose(dt, kernels.dtanh(np.tanh(x)), rtol=0, atol=8 * eps(dtype))


# -- the kernels -------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), shape=cell_shapes())
def test_lstm_cell_forward(builder, data, shape):
    dtype, B, H = shape
    z = data.draw(values(dtype, (B, 4 * H)), label="z")
    c_prev = data.draw(values(dtype, (B, H)), label="c_prev")
    # c, h are slices of (2, B, H) arrays as in lstm.py; prefilled with NaN: all written
    cc, hh = np.full((2, B, H), np.nan, dtype), np.full((2, B, H), np.nan, dtype)
    cc[0] = c_prev
    z_want, c_want, h_want = z.copy(), np.empty((B, H), dtype), np.empty((B, H), dtype)
    kernels.lstm_cell_forward(z_want, c_prev, c_want, h_want)
    kernel(builder, kernels.LSTM_CELL_FORWARD)(cc[0], H, z, cc[1], hh[1])
    # the gates may differ in the last bits of tanh; c_prev carries that into c and h
    e = 8 * eps(dtype)
    atol = e * (1 + np.abs(c_prev).max())
    np.testing.assert_allclose(z, z_want, rtol=e, atol=e)              # gates, |.| <= 1
    np.testing.assert_allclose(cc[1], c_want, rtol=e, atol=atol)
    np.testing.assert_allclose(hh[1], h_want, rtol=e, atol=atol)
    assert np.isnan(hh[0]).all()                                      # nothing else written


@SETTINGS
@given(data=st.data(), shape=cell_shapes())
def test_lstm_cell_backward(builder, data, shape):
    dtype, B, H = shape
    gates = data.draw(values(dtype, (B, 4 * H)), label="z")   # saturating pre-activations,
    kernels.sigmoid(gates[:, :3 * H], out=gates[:, :3 * H])    # then the gates as the
    np.tanh(gates[:, 3 * H:], out=gates[:, 3 * H:])            # forward pass saves them
    c_prev = data.draw(values(dtype, (B, H)), label="c_prev")
    c = data.draw(values(dtype, (B, H)), label="c")
    dh = data.draw(values(dtype, (B, H), 10.0), label="dh")
    dc_next = data.draw(values(dtype, (B, H), 10.0), label="dc_next")
    dz_want, dcp_want = np.empty((B, 4 * H), dtype), np.empty((B, H), dtype)
    kernels.lstm_cell_backward(gates, c_prev, c, dh, dc_next, dz_want, dcp_want)
    dz, dc_prev = np.full((B, 4 * H), np.nan, dtype), np.full((B, H), np.nan, dtype)
    kernel(builder, kernels.LSTM_CELL_BACKWARD)(gates, c_prev, c, dh, dc_next, H, dz, dc_prev)
    # tanh(c) is recomputed: the two tanh may differ in the last bits, which dh carries
    e = 8 * eps(dtype)
    atol = e * (1 + np.abs(dh).max()) * (1 + np.abs(c_prev).max())
    np.testing.assert_allclose(dz, dz_want, rtol=e, atol=atol)
    np.testing.assert_allclose(dc_prev, dcp_want, rtol=e, atol=atol)


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(FLOATS),
       shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), in_place=st.booleans())
def test_dropout(builder, data, dtype, shape, in_place):
    x = data.draw(values(dtype, shape, 1e6), label="x")
    # the mask as model.py passes it: a transposed view (strided), scaled 0 or 1/(1-p)
    keep = data.draw(hnp.arrays(np.bool_, shape[::-1]), label="keep")
    mask = (keep / dtype(0.7)).astype(dtype).transpose()
    want = kernels.dropout(x, mask, out=np.empty_like(x))
    out = x if in_place else np.full_like(x, np.nan)
    got = kernel(builder, kernels.DROPOUT)(x, mask, out)
    assert got is out
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(FLOATS), itype=st.sampled_from([np.int32, np.int64]),
       N=st.integers(1, 8), V=st.integers(1, 12))
def test_softmax_cross_entropy_grad(builder, data, dtype, itype, N, V):
    y = data.draw(values(dtype, (N, V), 30.0), label="y")
    e = np.exp(y - y.max(axis=1, keepdims=True))                      # as loss.py leaves it
    sums = e.sum(axis=1, keepdims=True)
    targets = data.draw(hnp.arrays(itype, (N,), elements=st.integers(0, V - 1)), label="targets")
    scale = 1.0 / N
    want = kernels.softmax_cross_entropy_grad(e.copy(), sums, targets, scale)
    got = e.copy()
    assert kernel(builder, kernels.SOFTMAX_CROSS_ENTROPY_GRAD)(sums, targets, scale, V, got) is got
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(FLOATS),
       shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=9),
       lr_scale=st.floats(-100, 100))
def test_sgd_update(builder, data, dtype, shape, lr_scale):
    p = data.draw(values(dtype, shape, 10.0), label="p")
    g = data.draw(values(dtype, shape, 1e3), label="g")
    want = p.copy()
    kernels.sgd_update(want, g, lr_scale)
    kernel(builder, kernels.SGD_UPDATE)(g, lr_scale, p)
    np.testing.assert_array_equal(p, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update_is_the_plain_update_in_the_parameters_dtype(dtype):
    """Bit for bit p - lr_scale * g in the parameters' own dtype, across chunk
    boundaries (float32 arithmetic, not float64 rounded once: they differ in the last
    bit of some entries)."""
    rng = np.random.default_rng(0)
    n = 2 * kernels.SGD_CHUNK + 17
    p0 = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    lr_scale = 0.123456789
    p = p0.copy()
    kernels.sgd_update(p, g, lr_scale)
    np.testing.assert_array_equal(p, p0 - dtype(lr_scale) * g)
    if dtype is np.float32:
        wide = (p0.astype(np.float64) - lr_scale * g.astype(np.float64)).astype(np.float32)
        assert not np.array_equal(p, wide)          # the test can tell the two apart


@pytest.mark.parametrize("p_strided, g_strided", [(True, False), (False, True), (True, True)])
def test_sgd_update_updates_strided_views_in_place(p_strided, g_strided):
    """A parameter that is a view (every other column of a larger array) is updated
    where it lives; reshaping it would update a copy."""
    rng = np.random.default_rng(1)
    base_p, base_g = rng.standard_normal((6, 10)), rng.standard_normal((6, 10))
    p = base_p[:, ::2] if p_strided else base_p[:, :5].copy()
    g = base_g[:, ::2] if g_strided else base_g[:, :5].copy()
    want = p - 0.5 * g
    kernels.sgd_update(p, g, 0.5)
    np.testing.assert_array_equal(p, want)
    if p_strided:
        np.testing.assert_array_equal(base_p[:, ::2], want)
