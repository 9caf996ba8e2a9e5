"""The core: gradients proven by finite differences, windows, dropout placement,
precision, and argument checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zaremba_ref as z
from zaremba_ref import CPU
from zaremba_ref.lstm import lstm_forward
from zaremba_ref.model import forward


def random_case(rng, V, H, L, B, T, mode, p=0.4, dtype=np.float64, scale=0.5):
    """Parameters, a window, a non-zero state, dstate and fixed masks."""
    params = z.init_params(V, H, L, scale, seed=int(rng.integers(1 << 30)), dtype=dtype)
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B, T))
    state = [(rng.normal(size=(B, H)).astype(dtype), rng.normal(size=(B, H)).astype(dtype))
             for _ in range(L)]
    dstate = [(rng.normal(size=(B, H)), rng.normal(size=(B, H))) for _ in range(L)]
    shape = (B, H) if mode == "variational" else (B, T, H)     # variational: one per window
    masks = [((rng.random(shape) >= p) / (1 - p)).astype(dtype)
             for _ in range(z.num_masks(mode, L))] or None
    return params, x, y, state, dstate, masks


@settings(max_examples=20, deadline=None)
@given(V=st.integers(2, 9), H=st.integers(1, 5), L=st.integers(1, 3), B=st.integers(1, 3),
       T=st.integers(1, 4), mode=st.sampled_from(z.MODES), seed=st.integers(0, 2**31))
def test_every_gradient_matches_finite_differences(V, H, L, B, T, mode, seed):
    """Every parameter and the initial state, all three dropout modes, loss = NLL +
    a random weighted sum of the final state (so the paths into h_T, c_T count too)."""
    rng = np.random.default_rng(seed)
    params, x, y, state, dstate, masks = random_case(rng, V, H, L, B, T, mode)
    errors = z.check_gradients(params, x, y, state, masks, mode=mode, dstate=dstate,
                               max_entries=12, seed=seed)
    assert set(errors) == set(params) | {f"state.{l}.{w}" for l in range(1, L + 1) for w in "hc"}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, (worst, errors[worst])


def test_gradient_check_catches_a_wrong_gradient():
    """The checker is not vacuous: a backward kernel with a 10% error on the carried
    dc_{t-1} (forward untouched) is caught."""
    from zaremba_ref import kernels

    def wrong(gates, c_prev, c, dh, dc_next, dz, dc_prev):
        kernels.lstm_cell_backward(gates, c_prev, c, dh, dc_next, dz, dc_prev)
        dc_prev *= 0.9

    rng = np.random.default_rng(0)
    params, x, y, state, dstate, masks = random_case(rng, 6, 3, 2, 2, 3, "zaremba")
    broken = dataclasses.replace(CPU, lstm_cell_backward=wrong)
    errors = z.check_gradients(params, x, y, state, masks, dstate=dstate, backend=broken)
    assert errors["state.1.c"] > 1e-3
    assert max(z.check_gradients(params, x, y, state, masks, dstate=dstate).values()) < 1e-6


@settings(max_examples=8, deadline=None)
@given(V=st.integers(2, 6), H=st.integers(1, 3), L=st.integers(1, 2), B=st.integers(1, 2),
       T=st.integers(1, 3), mode=st.sampled_from(z.MODES), seed=st.integers(0, 2**31))
def test_every_entry_of_small_tensors_matches_finite_differences(V, H, L, B, T, mode, seed):
    """Beside the sampled check above: every entry of every (small) tensor, each one
    measured against itself (floor 1e-8, ~100x the differences' noise), so a wrong
    small entry next to a large one cannot pass."""
    rng = np.random.default_rng(seed)
    params, x, y, state, dstate, masks = random_case(rng, V, H, L, B, T, mode)
    errors = z.check_gradients(params, x, y, state, masks, mode=mode, dstate=dstate,
                               max_entries=10**6, elementwise=True, floor=1e-8)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-3, (worst, errors[worst])


def test_elementwise_check_sees_a_wrong_small_entry_that_the_sampled_one_misses():
    """A softmax gradient that flushes probabilities below 1e-6 to zero: the gradient
    of three words with probability ~1e-8 is lost. Relative to the tensor's largest
    entry that is ~1e-7 and passes the sampled check; entry by entry it is >10%."""
    def flushing(y, sums, w, scale):
        g = CPU.softmax_cross_entropy_grad(y, sums, w, scale)
        g[np.abs(g) < 1e-6 * scale] = 0
        return g

    rng = np.random.default_rng(6)
    params, x, y, state, dstate, masks = random_case(rng, 8, 3, 1, 2, 3, "zaremba")
    params["softmax.b"][5:] = -18.0           # words 5-7: p ~ 1e-8, and never targets
    y = y % 5
    broken = dataclasses.replace(CPU, softmax_cross_entropy_grad=flushing)
    args = (params, x, y, state, masks)
    assert max(z.check_gradients(*args, dstate=dstate, backend=broken).values()) <= 1e-6
    every = dict(dstate=dstate, max_entries=10**6, elementwise=True, floor=1e-8)
    assert z.check_gradients(*args, **every, backend=broken)["softmax.b"] > 0.1
    assert max(z.check_gradients(*args, **every).values()) <= 1e-3


def test_one_window_equals_shorter_windows_with_state_carried():
    rng = np.random.default_rng(1)
    V, H, L, B, T = 11, 4, 2, 3, 7
    params, x, y, state, _, _ = random_case(rng, V, H, L, B, T, "none")
    loss, _, final = z.loss_and_grads(params, x, y, state)
    y_all, final_fwd = forward(params, x, state)
    total, carried = 0.0, state
    for a, b in ((0, 2), (2, 3), (3, 7)):
        part, _, carried = z.loss_and_grads(params, x[:, a:b], y[:, a:b], carried)
        total += part * B * (b - a)
    np.testing.assert_allclose(total / (B * T), loss, rtol=1e-13)
    for (h1, c1), (h2, c2), (h3, c3) in zip(final, carried, final_fwd):
        np.testing.assert_allclose(h1, h2, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(c1, c2, rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(h1, h3)
    # The logits too: step by step with the state carried equals the whole window.
    carried, rows = state, []
    for t in range(T):
        yt, carried = forward(params, x[:, t:t + 1], carried)
        rows.append(yt)
    np.testing.assert_allclose(np.concatenate(rows), y_all, rtol=1e-12, atol=1e-14)


def test_zaremba_masks_leave_the_recurrence_alone():
    """All L+1 vertical masks zero: every layer runs on its own h_{t-1}, c_{t-1} exactly
    as an unmasked layer fed zero inputs would; the softmax sees only its bias."""
    rng = np.random.default_rng(2)
    V, H, L, B, T = 8, 5, 3, 2, 6
    params, x, y, state, _, _ = random_case(rng, V, H, L, B, T, "zaremba")
    zeros = [np.zeros((B, T, H)) for _ in range(L + 1)]
    loss, _, final = z.loss_and_grads(params, x, y, state, zeros)
    for l in range(1, L + 1):
        cache = lstm_forward(params[f"l{l}.W_x"], params[f"l{l}.W_h"], params[f"l{l}.b_x"],
                             params[f"l{l}.b_h"], np.zeros((T, B, H)), *state[l - 1], CPU)
        np.testing.assert_array_equal(final[l - 1][0], cache.h[-1])
        np.testing.assert_array_equal(final[l - 1][1], cache.c[-1])
        assert np.abs(cache.h[-1] - state[l - 1][0]).max() > 1e-3   # the state did evolve
    b = params["softmax.b"]
    expected = np.mean(np.log(np.exp(b).sum()) - b[y])
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_naive_mode_masks_the_recurrent_state():
    """naive: the extra L masks act on h_{t-1} inside the recurrence. Zeroing them is
    the same as an unmasked run with W_h = 0; in zaremba mode nothing of the kind exists."""
    rng = np.random.default_rng(3)
    V, H, L, B, T = 8, 4, 2, 2, 5
    params, x, y, state, _, _ = random_case(rng, V, H, L, B, T, "naive")
    ones = [np.ones((B, T, H)) for _ in range(L + 1)]
    rec_zero = [np.zeros((B, T, H)) for _ in range(L)]
    loss, _, final = z.loss_and_grads(params, x, y, state, ones + rec_zero, mode="naive")
    no_rec = dict(params, **{f"l{l}.W_h": np.zeros_like(params[f"l{l}.W_h"])
                             for l in range(1, L + 1)})
    loss_ref, _, final_ref = z.loss_and_grads(params=no_rec, inputs=x, targets=y, state=state)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-13)
    for (h, c), (hr, cr) in zip(final, final_ref):
        np.testing.assert_allclose(h, hr, rtol=1e-13)
        np.testing.assert_allclose(c, cr, rtol=1e-13)
    # and with recurrent masks of ones, naive is exactly the zaremba run
    loss1, _, _ = z.loss_and_grads(params, x, y, state, ones + [np.ones((B, T, H))] * L,
                                   mode="naive")
    loss2, _, _ = z.loss_and_grads(params, x, y, state, ones)
    assert loss1 == loss2


def test_masks_drawn_from_the_callers_generator():
    masks = z.draw_masks(np.random.default_rng(0), 0.25, "zaremba", 2, 20, 30, 40, np.float32)
    assert len(masks) == 3 and all(m.shape == (20, 30, 40) and m.dtype == np.float32
                                   for m in masks)
    values = np.unique(np.concatenate([m.ravel() for m in masks]))
    np.testing.assert_allclose(values, [0, 1 / 0.75])
    kept = np.mean([np.mean(m > 0) for m in masks])
    assert abs(kept - 0.75) < 0.01
    again = z.draw_masks(np.random.default_rng(0), 0.25, "zaremba", 2, 20, 30, 40, np.float32)
    assert all(np.array_equal(a, b) for a, b in zip(masks, again))
    assert len(z.draw_masks(np.random.default_rng(0), 0.25, "naive", 2, 2, 3, 4, np.float32)) == 5
    assert z.draw_masks(np.random.default_rng(0), 0.0, "zaremba", 2, 2, 3, 4, np.float32) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masks_are_the_documented_stream_and_keep_u_equal_to_p(dtype):
    """m = (u >= p) / (1 - p) with u = rng.random(shape, dtype) drawn in the masks'
    dtype, mask after mask: another implementation can replay our masks from the seed
    (float32 draws take half the generator's bits, so the dtype is part of the stream).
    u == p keeps the unit, so the keep probability is exactly 1 - p on the grid of
    float uniforms."""
    masks = z.draw_masks(np.random.default_rng(5), 0.3, "naive", 2, 3, 4, 6, dtype)
    rng = np.random.default_rng(5)
    want = [(rng.random((3, 4, 6), dtype=dtype) >= 0.3).astype(dtype) / dtype(0.7)
            for _ in range(5)]
    for m, w in zip(masks, want, strict=True):
        assert m.dtype == dtype
        np.testing.assert_allclose(m, w, rtol=1e-6 if dtype == np.float32 else 1e-15)
    from types import SimpleNamespace
    at_p = SimpleNamespace(random=lambda shape, dtype: np.full(shape, 0.25, dtype))
    (m,) = z.draw_masks(at_p, 0.25, "zaremba", 0, 2, 3, 4, dtype)
    np.testing.assert_allclose(m, np.full((2, 3, 4), 1 / 0.75), rtol=1e-6)


def test_dropout_rate_draws_masks_from_rng():
    rng = np.random.default_rng(4)
    params, x, y, state, _, _ = random_case(rng, 9, 4, 2, 3, 5, "zaremba")
    a = z.loss_and_grads(params, x, y, state, dropout=0.5, rng=np.random.default_rng(7))[0]
    b = z.loss_and_grads(params, x, y, state, dropout=0.5, rng=np.random.default_rng(7))[0]
    masks = z.draw_masks(np.random.default_rng(7), 0.5, "zaremba", 2, 3, 5, 4, np.float64)
    c = z.loss_and_grads(params, x, y, state, masks)[0]
    d = z.loss_and_grads(params, x, y, state)[0]
    assert a == b == c and a != d


@settings(max_examples=40, deadline=None)
@given(V=st.integers(1, 12), N=st.integers(0, 30), H=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_cpu_scatter_add_equals_numpy_add_at(V, N, H, seed):
    """The CPU backend's embedding-gradient scatter (sorted runs summed by reduceat) is
    numpy.add.at: repeated ids accumulate, into a non-zero array, empty index lists too."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(V, H))
    idx, vals = rng.integers(0, V, N), rng.normal(size=(N, H))
    want = a.copy()
    np.add.at(want, idx, vals)
    CPU.scatter_add(a, idx, vals)
    np.testing.assert_allclose(a, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(3,), (2 * z.kernels.SGD_CHUNK + 5,), (700, 300)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update_in_chunks_is_the_plain_update(shape, dtype):
    """The CPU twin goes chunk by chunk through a small buffer: bit for bit the plain
    p - lr_scale * g, across chunk boundaries, and for strided views of p and g."""
    rng = np.random.default_rng(0)
    p, g = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    want = p - 0.37 * g
    z.kernels.sgd_update(p, g, 0.37)
    np.testing.assert_array_equal(p, want)
    if len(shape) == 2:                                  # non-contiguous views
        P, G = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
        want = P.copy()
        want[:, ::2] -= 0.37 * G[:, ::2]
        z.kernels.sgd_update(P[:, ::2], G[:, ::2], 0.37)
        np.testing.assert_array_equal(P, want)


def test_init_params_uniform_and_reproducible():
    p = z.init_params(50, 8, 2, 0.1, seed=3)
    assert list(p) == z.param_names(2)
    assert all(v.dtype == np.float32 for v in p.values())
    assert all(np.abs(v).max() <= 0.1 for v in p.values())
    assert all(np.abs(v).max() > 0.05 for v in p.values())          # biases drawn too
    assert p["l1.W_x"].shape == (32, 8) and p["l2.b_h"].shape == (32,)
    q = z.init_params(50, 8, 2, 0.1, seed=3, dtype=np.float64)
    assert all(np.array_equal(p[k], q[k].astype(np.float32)) for k in p)


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(5)
    params, x, y, state, dstate, masks = random_case(rng, 30, 16, 2, 4, 8, "zaremba",
                                                     scale=0.3)
    l64, g64, f64 = z.loss_and_grads(params, x, y, state, masks, dstate=dstate)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    s32 = [(h.astype(np.float32), c.astype(np.float32)) for h, c in state]
    m32 = [m.astype(np.float32) for m in masks]
    d32 = [(h.astype(np.float32), c.astype(np.float32)) for h, c in dstate]
    l32, g32, f32 = z.loss_and_grads(p32, x, y, s32, m32, dstate=d32)
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    for k in params:
        assert g32[k].dtype == np.float32
        scale = np.abs(g64[k]).max()
        assert np.abs(g32[k] - g64[k]).max() <= 1e-4 * scale, k
    for (h32, c32), (h64, c64) in zip(f32, f64):
        assert h32.dtype == np.float32
        np.testing.assert_allclose(h32, h64, atol=1e-5)
        np.testing.assert_allclose(c32, c64, atol=1e-5)


def test_global_norm_clipping_and_sgd():
    params = {"a": np.ones(3), "b": np.zeros((2, 2))}
    grads = {"a": np.array([3.0, 0, 0]), "b": np.array([[0, 4.0], [0, 0]]), "state": None}
    assert z.global_norm(grads, ["a", "b"]) == 5.0         # one norm over all parameters
    assert z.clip_factor(5.0, 10.0) == 1.0 and z.clip_factor(5.0, 1.0) == 0.2
    before = {k: v.copy() for k, v in params.items()}
    norm = z.sgd_step(params, grads, lr=0.5, max_norm=1.0)
    assert norm == 5.0
    for k in params:                                      # p - lr * (1/5) * g, every p
        np.testing.assert_allclose(params[k], before[k] - 0.5 * 0.2 * grads[k])
    # loss_scale multiplies the gradient before the norm is taken
    params = {k: v.copy() for k, v in before.items()}
    norm = z.sgd_step(params, grads, lr=1.0, max_norm=100.0, loss_scale=3.0)
    assert norm == 15.0
    np.testing.assert_allclose(params["a"], before["a"] - 3.0 * grads["a"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_step_on_the_used_rows_is_the_dense_step_to_the_bit(dtype):
    """``rows``: the embedding's update touches only the rows its gradient can be
    non-zero in, and the parameters end exactly where the dense update leaves them."""
    rng = np.random.default_rng(0)
    params = {"embedding": rng.normal(size=(50, 6)).astype(dtype),
              "w": rng.normal(size=(4, 6)).astype(dtype)}
    used = np.unique(rng.integers(0, 50, 30))
    g = np.zeros((50, 6), dtype)
    g[used] = rng.normal(size=(len(used), 6))
    grads = {"embedding": g, "w": rng.normal(size=(4, 6)).astype(dtype)}
    before = params["embedding"].copy()
    dense = {k: v.copy() for k, v in params.items()}
    n_dense = z.sgd_step(dense, grads, 0.7, 1.0, loss_scale=3.0)
    n_rows = z.sgd_step(params, grads, 0.7, 1.0, loss_scale=3.0, rows={"embedding": used})
    assert n_rows == n_dense and n_dense > 1.0                   # clipping fired
    for k in params:
        np.testing.assert_array_equal(params[k], dense[k])
    assert (params["embedding"][used] != before[used]).all()     # the used rows moved


def test_an_arena_hands_out_the_same_arrays_after_each_reset():
    """with_arena(): the k-th request after a reset gets the k-th array of the last
    round if its shape and dtype match; the plain backend always gives fresh ones."""
    be = CPU.with_arena()
    a, b_ = be.empty((3, 4), np.float32), be.zeros((5,), np.float64)
    assert not b_.any() and a is not b_
    be.arena.reset()
    assert be.empty((3, 4), np.float32) is a and be.zeros((5,), np.float64) is b_
    be.arena.reset()
    c = be.empty((3, 5), np.float32)                     # another shape: a new array
    assert c is not a and be.empty((5,), np.float64) is b_
    assert CPU.empty((3, 4), np.float32) is not CPU.empty((3, 4), np.float32)
    assert CPU.arena is None and be.arena is not None


def test_sgd_step_takes_the_norm_on_the_backend_it_is_given():
    """The norm is summed on the device (the backend's xp), one vdot per parameter;
    only the scalar comes back. A NumPy norm of CuPy arrays would fail on a GPU."""
    from types import SimpleNamespace
    calls = []
    xp = SimpleNamespace(vdot=lambda a, b: calls.append(a.shape) or np.vdot(a, b))
    backend = dataclasses.replace(CPU, xp=xp)
    params = {"a": np.ones(3), "b": np.zeros((2, 2))}
    grads = {"a": np.array([3.0, 0, 0]), "b": np.array([[0, 4.0], [0, 0]])}
    assert z.sgd_step(params, grads, lr=0.1, max_norm=1.0, backend=backend) == 5.0
    assert calls == [(3,), (4,)]


def test_learning_rate_schedule_follows_the_paper():
    lrs = [z.learning_rate(e, 1.0, 4, 2.0) for e in range(1, 8)]
    assert lrs == [1, 1, 1, 1, 0.5, 0.25, 0.125]


@pytest.mark.parametrize("change, message", [
    (dict(inputs=np.zeros((2, 3, 1), int)), "inputs must be an integer array shaped"),
    (dict(inputs=np.zeros((2, 3))), "inputs must be an integer array"),
    (dict(inputs=np.full((2, 3), 9)), "inputs holds token ids in [9, 9], expected ids in [0, 8]"),
    (dict(targets=np.full((2, 3), -1)), "targets holds token ids in [-1, -1]"),
    (dict(targets=np.zeros((2, 4), int)), "targets has shape (2, 4), expected (2, 3)"),
    (dict(state=[(np.zeros((2, 4)), np.zeros((2, 4)))]), "state must be a list of 2"),
    (dict(state=[(np.zeros((2, 5)), np.zeros((2, 4)))] * 2),
     "state[0] h has shape (2, 5), expected (batch, hidden) = (2, 4)"),
    (dict(masks=[np.ones((2, 3, 4))] * 2), "masks must be a list of 3 arrays"),
    (dict(masks=[np.ones((2, 3, 4))] * 2 + [np.ones((3, 2, 4))]),
     "masks[2] has shape (3, 2, 4), expected (batch, steps, hidden) = (2, 3, 4)"),
    (dict(mode="everywhere"), "mode must be one of"),
    (dict(dropout=1.0), "dropout must be in [0, 1)"),
    (dict(dropout=0.5), "dropout > 0 needs rng"),
    (dict(dstate=[(np.zeros((2, 5)), np.zeros((2, 4)))] * 2),
     "dstate[0] h has shape (2, 5), expected (batch, hidden) = (2, 4)"),
    (dict(weight_masks=[np.ones((16, 4))]), "weight_masks must be a list of 2 arrays"),
    (dict(weight_masks=[np.ones((16, 4)), np.ones((4, 4))]),
     "weight_masks[1] has shape (4, 4), expected (4 * hidden, hidden) = (16, 4)"),
])
def test_bad_input_raises_a_clear_value_error(change, message):
    params = z.init_params(9, 4, 2, dtype=np.float64)
    args = dict(inputs=np.zeros((2, 3), int), targets=np.zeros((2, 3), int), state=None,
                masks=None)
    args.update(change)
    kwargs = {k: args.pop(k) for k in ("mode", "dropout") if k in args}
    with pytest.raises(ValueError) as e:
        z.loss_and_grads(params, **args, **kwargs)
    assert message in str(e.value)



@pytest.mark.parametrize("bad, message", [
    (dict(targets=np.full((2, 3), 9)), "targets holds token ids in [9, 9], expected ids in "
                                       "[0, 8]"),
    (dict(targets=np.zeros((3, 2), int)), "targets has shape (3, 2), expected (2, 3)"),
    (dict(inputs=np.full((2, 3), -1)), "inputs holds token ids in [-1, -1]"),
])
def test_evaluation_checks_its_input_as_training_does(bad, message):
    """loss_only (every evaluation pass) refuses what loss_and_grads refuses, with the
    same line, rather than an IndexError from deep inside the softmax."""
    params = z.init_params(9, 4, 2, dtype=np.float64)
    args = dict(inputs=np.zeros((2, 3), int), targets=np.zeros((2, 3), int)) | bad
    with pytest.raises(ValueError) as e:
        z.loss_only(params, args["inputs"], args["targets"])
    assert message in str(e.value)


def test_perplexity_of_a_diverged_loss_is_inf_not_an_error():
    from zaremba_ref.loss import perplexity
    assert perplexity(0.0) == 1.0 and perplexity(1.0) == math.e
    assert perplexity(709.0) == math.exp(709.0) < math.inf
    assert perplexity(709.9) == perplexity(1e6) == perplexity(math.inf) == math.inf


def _untouched(rng: np.random.Generator, state: dict) -> bool:
    return rng.bit_generator.state == state


def test_draw_masks_rates_and_what_draws_nothing():
    """Which calls draw no random numbers at all (the generator is left as it was), and
    the rates of variational mode's two kinds of mask (recurrent_p is variational's)."""
    from zaremba_ref.dropout import draw_masks
    L, B, T, H = 2, 3, 4, 50
    for p, mode, q in [(0.0, "variational", None), (0.0, "zaremba", 0.3),
                       (0.0, "naive", 0.3), (0.5, "none", None)]:
        rng = np.random.default_rng(0)
        before = rng.bit_generator.state
        assert draw_masks(rng, p, mode, L, B, T, H, np.float64, recurrent_p=q) == []
        assert _untouched(rng, before), (p, mode, q)
    for p, q in [(0.0, 0.3), (0.5, 0.2), (0.5, None)]:
        masks = draw_masks(np.random.default_rng(0), p, "variational", L, B, T, H,
                           np.float64, recurrent_p=q)
        assert len(masks) == 2 * L + 1 and all(m.shape == (B, H) for m in masks)
        q = p if q is None else q
        for k, m in enumerate(masks):
            rate = p if k <= L else q
            assert set(np.unique(m)) == ({1.0} if rate == 0 else {0.0, 1 / (1 - rate)}), k


def test_weight_masks_have_the_parameters_dtype_and_rate():
    from zaremba_ref.dropout import draw_weight_masks
    from zaremba_ref.model import drop_weights
    for dtype in (np.float32, np.float64):
        masks = draw_weight_masks(np.random.default_rng(0), 0.25, 2, 6, dtype)
        assert [(m.shape, m.dtype) for m in masks] == [((24, 6), dtype)] * 2
        assert set(np.unique(masks[0])) == {0.0, dtype(1 / 0.75)}
    assert draw_weight_masks(np.random.default_rng(0), 0.0, 2, 6, np.float64) == []
    params = z.init_params(9, 6, 2, dtype=np.float64)
    assert drop_weights(params, []) is params


def test_init_params_defaults_are_the_small_preset_scale_and_seed_0():
    """Defaults: uniform(-0.1, 0.1) (the small preset's init_scale), seed 0, float32."""
    params = z.init_params(9, 4, 2)
    explicit = z.init_params(9, 4, 2, 0.1, seed=0, dtype=np.float32)
    assert all(np.array_equal(params[k], explicit[k]) for k in params)
    assert params["l1.W_x"].dtype == np.float32
    assert 0.09 < max(float(np.abs(v).max()) for v in params.values()) <= 0.1


@pytest.mark.parametrize("V, H, L, scale", [(0, 4, 2, 0.1), (9, 0, 2, 0.1), (9, 4, 0, 0.1),
                                            (9, 4, 2, -0.1)])
def test_init_params_refuses_an_empty_model_or_a_negative_scale(V, H, L, scale):
    with pytest.raises(ValueError) as e:
        z.init_params(V, H, L, scale)
    assert str(e.value) == ("vocab_size, hidden_size, num_layers must be >= 1 and "
                            f"init_scale >= 0, got {V}, {H}, {L}, {scale}")


@pytest.mark.parametrize("L, tie", [(1, False), (3, False), (2, True)])
def test_init_params_has_exactly_param_names_in_order(L, tie):
    params = z.init_params(9, 4, L, 0.0, tie_weights=tie)     # scale 0 is allowed: zeros
    assert list(params) == z.param_names(L, tie)
    assert all(not v.any() for v in params.values())

def test_bad_params_raise():
    params = z.init_params(9, 4, 2)
    with pytest.raises(ValueError, match="params\\['l2.W_h'\\] has shape"):
        z.loss_and_grads(dict(params, **{"l2.W_h": np.zeros((4, 4))}), np.zeros((1, 1), int),
                         np.zeros((1, 1), int))
    with pytest.raises(ValueError, match="must be >= 1"):
        z.init_params(0, 4, 2)


# -- holes found by the issue-15 mutation audit: each test below fails on the named bug ----

def test_clipping_fires_on_the_scaled_norm():
    """Paper: clip the norm of the objective's gradient, T * g. Hand computation with
    ||g|| = 5, loss_scale T = 20, max_norm 5: the scaled norm is 100, s = 5/100, and
    p <- p - lr * s * T * g = p - 0.5 * g. (Clipping the unscaled norm, 5, would not
    fire and would step 20 times further.)"""
    params = {"a": np.ones(3), "b": np.zeros((2, 2))}
    grads = {"a": np.array([3.0, 0, 0]), "b": np.array([[0, 4.0], [0, 0]]), "state": None}
    before = {k: v.copy() for k, v in params.items()}
    norm = z.sgd_step(params, grads, lr=0.5, max_norm=5.0, loss_scale=20.0)
    assert norm == 100.0
    for k in params:
        np.testing.assert_allclose(params[k], before[k] - 0.5 * grads[k], rtol=1e-15)
    # between the two norms: ||g|| = 5 < max_norm = 10 < T ||g|| = 100: it must fire
    params = {k: v.copy() for k, v in before.items()}
    z.sgd_step(params, grads, lr=1.0, max_norm=10.0, loss_scale=20.0)
    np.testing.assert_allclose(params["a"], before["a"] - (10 / 100) * 20 * grads["a"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_is_stable_for_logits_up_to_1e4(dtype):
    """Logits in [-1e4, 1e4] (rows with one huge winner, rows of near ties, a target
    with probability ~e^-20000): loss and gradient finite and equal to a float64
    reference computed with logaddexp (no shift can be forgotten there)."""
    from zaremba_ref.loss import log_softmax_nll, softmax_nll_and_grad
    rng = np.random.default_rng(0)
    N, V = 8, 50
    y = rng.uniform(-1e4, 1e4, (N, V))
    y[1] = -1e4
    y[1, 7] = 1e4                                     # one winner, everything else ~0
    y[2] = 1e4 - rng.uniform(0, 3, V)                 # near ties at the top
    y[3] = 100.0 + rng.normal(size=V)                 # a float32 logit of 100: e^100 = inf
    y = y.astype(dtype)
    w = rng.integers(0, V, N)
    w[1], w[2] = 3, 5                                 # a hopeless target, a contested one
    y64 = y.astype(np.float64)
    lse = np.logaddexp.reduce(y64, axis=1)
    want_loss = float(np.mean(lse - y64[np.arange(N), w]))
    want_grad = np.exp(y64 - lse[:, None])
    want_grad[np.arange(N), w] -= 1
    want_grad /= N
    loss, sums = log_softmax_nll(y.copy(), w, CPU)
    loss2, grad = softmax_nll_and_grad(y.copy(), w, CPU)
    assert np.isfinite(loss) and loss == loss2
    assert sums.dtype == dtype       # the (N, V) logits are never copied to float64
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    assert abs(loss - want_loss) <= rtol * abs(want_loss), (loss, want_loss)
    assert grad.dtype == dtype and np.isfinite(grad).all()
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-6 if dtype == np.float32
                               else 1e-12)
    # and through the model: a float32 softmax bias of 100 on one word (training and
    # evaluation both)
    params = z.init_params(9, 4, 1, 0.1, seed=0, dtype=dtype)
    params["softmax.b"][2] = 100.0
    x = rng.integers(0, 9, (2, 3))
    t = np.full((2, 3), 4)
    loss, grads, _ = z.loss_and_grads(params, x, t)
    assert np.isfinite(loss) and loss > 90 and all(np.isfinite(g).all() for k, g in
                                                   grads.items() if k != "state")
    assert z.loss_only(params, x, t)[0] == pytest.approx(loss, rel=1e-6)
