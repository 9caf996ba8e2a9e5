"""gradient_path: d l_T / d h^l_t and d l_T / d c^l_t, every entry, by three oracles.

Which oracle checks which entry (float64, Hypothesis-drawn shapes, a non-zero state):

* **PyTorch autograd**, every entry element by element (1e-8 relative per (l, t)): a
  hand-written LSTM in PyTorch's layout and gate order with ``retain_grad`` on every
  h_t and c_t. Hand-written because ``nn.LSTMCell`` returns h_t and c_t side by side
  from one fused op, so its c_t.grad would miss the path c_t -> h_t.
* **Finite differences, no torch**, every entry (a random direction per (l, t, h|c)):
  a forward that runs each layer one step at a time (``lstm.lstm_forward`` on one-step
  windows) and adds eps * u to h^l_t, or to c^l_t and then recomputes h^l_t = o_t
  tanh(c^l_t), right after layer l computes step t. So the perturbation flows through
  every path: into layer l+1 at t, into step t+1, and from c_t into h_t.
* **The public forward alone** (``model.forward``), by splitting the window at t and
  perturbing the state carried across the split. That state holds h^l_t and c^l_t of
  every layer *fixed together*, so its gradient is the part of the total that flows
  through step t+1 only. That is the total for h of the top layer (t < T: l_T reads
  h^L_t only through step t+1), not for h of a lower layer (it misses h^l_t -> layer
  l+1 at t), and for c it is the carried part dc_t - dh_t o_t (1 - tanh(c_t)^2) (it
  misses c_t -> h_t): the test checks exactly those, and that the lower layers' h
  differ. At t = 0 the split is the initial state: the gradient the walk carries back
  to it is checked by central differences on the whole window, and for T = 1 against
  ``loss_and_grads``' own ``grads["state"]``, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zaremba_ref as z
from zaremba_ref import CPU, gradient_path
from zaremba_ref.gradient_path import path_gradients
from zaremba_ref.lstm import lstm_forward
from zaremba_ref.model import forward

from conftest import import_torch

SHAPES = dict(V=st.integers(2, 9), H=st.integers(1, 5), L=st.integers(1, 3),
              B=st.integers(1, 3), T=st.integers(1, 5), seed=st.integers(0, 2**31))


def case(V, H, L, B, T, seed, dtype=np.float64):
    """Parameters (scale 0.5, so that the gates are not all near 0.5), a window and a
    non-zero initial state."""
    rng = np.random.default_rng(seed)
    params = z.init_params(V, H, L, 0.5, seed=seed, dtype=dtype)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = [(rng.normal(size=(B, H)).astype(dtype), rng.normal(size=(B, H)).astype(dtype))
             for _ in range(L)]
    return params, x, y, state


def last_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """l_T: the batch-mean NLL of ``targets`` (B,) under ``logits`` (B, V), by hand."""
    m = logits.max(axis=1, keepdims=True)
    log_z = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(len(targets)), targets]))


def rel_err(a, b) -> float:
    scale = max(np.abs(a).max(), np.abs(b).max())
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


# -- PyTorch autograd ------------------------------------------------------------------

def torch_path(params, inputs, targets, state):
    """dl_T/dh^l_t and dl_T/dc^l_t (L, T, B, H) by autograd, and l_T."""
    torch = import_torch()
    sd = {k: torch.tensor(v, requires_grad=True) for k, v in z.params_to_torch(params).items()}
    L = sum(k.endswith(".W_h") for k in params)
    B, T = inputs.shape
    x = sd["embedding.weight"][torch.tensor(inputs)]               # (B, T, H)
    hs, cs = [], []
    for k in range(L):
        W_ih, W_hh = sd[f"lstm.weight_ih_l{k}"], sd[f"lstm.weight_hh_l{k}"]
        b = sd[f"lstm.bias_ih_l{k}"] + sd[f"lstm.bias_hh_l{k}"]
        h, c = (torch.tensor(a) for a in state[k])
        hs.append([]), cs.append([])
        for t in range(T):
            i, f, g, o = (x[:, t] @ W_ih.T + h @ W_hh.T + b).chunk(4, dim=1)  # torch: i f g o
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            h.retain_grad(), c.retain_grad()
            hs[k].append(h), cs[k].append(c)
        x = torch.stack(hs[k], dim=1)                              # (B, T, H)
    logits = x[:, -1] @ sd["decoder.weight"].T + sd["decoder.bias"]  # step T only  (B, V)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets[:, -1]))
    loss.backward()
    grads = lambda v: np.stack([[a.grad.numpy() for a in row] for row in v])  # noqa: E731
    return float(loss.detach()), grads(hs), grads(cs)


@settings(max_examples=25, deadline=None)
@given(**SHAPES)
def test_every_entry_matches_pytorch_autograd(V, H, L, B, T, seed):
    params, x, y, state = case(V, H, L, B, T, seed)
    ours = path_gradients(params, x, y, state)
    loss, dh, dc = torch_path(params, x, y, state)
    assert ours.loss == pytest.approx(loss, rel=1e-12)
    assert ours.dh.shape == ours.dc.shape == (L, T, B, H)
    for l in range(L):
        for t in range(T):
            assert rel_err(ours.dh[l, t], dh[l, t]) < 1e-8, ("h", l + 1, t + 1)
            assert rel_err(ours.dc[l, t], dc[l, t]) < 1e-8, ("c", l + 1, t + 1)
    norms = gradient_path(params, x, y, state)
    assert set(norms) == {"h", "c"}
    for which, g in (("h", dh), ("c", dc)):
        assert norms[which].shape == (L, T) and norms[which].dtype == np.float64
        want = np.sqrt((g ** 2).sum(axis=(2, 3)))
        assert np.all(np.abs(norms[which] - want) <= 1e-8 * want), which


# -- Finite differences through every path --------------------------------------------

def last_loss_poked(params, inputs, targets, state, poke=None) -> float:
    """l_T by a forward that runs each layer one step at a time, with ``poke`` = (l, t,
    "h" or "c", d) added to h^l_t, or to c^l_t (then h^l_t = o_t * tanh(c^l_t) again,
    as the cell computes it), right after layer l computes step t."""
    L = sum(k.endswith(".W_h") for k in params)
    B, T = inputs.shape
    H = params["embedding"].shape[1]
    hc = [(h, c) for h, c in state]
    for t in range(1, T + 1):
        x = params["embedding"][inputs[:, t - 1]][None]            # (1, B, H)
        for l in range(1, L + 1):
            cache = lstm_forward(params[f"l{l}.W_x"], params[f"l{l}.W_h"],
                                 params[f"l{l}.b_x"], params[f"l{l}.b_h"], x,
                                 *hc[l - 1], CPU)
            h, c = cache.h[1].copy(), cache.c[1].copy()             # (B, H)
            if poke is not None and poke[:2] == (l, t):
                if poke[2] == "h":
                    h += poke[3]
                else:
                    c += poke[3]
                    h = cache.gates[0, :, 2 * H:3 * H] * np.tanh(c)  # o_t tanh(c_t)
            hc[l - 1] = (h, c)
            x = h[None]
    return last_nll(h @ params["softmax.W"].T + params["softmax.b"], targets[:, -1])


@settings(max_examples=20, deadline=None)
@given(**SHAPES)
def test_every_entry_matches_finite_differences(V, H, L, B, T, seed):
    params, x, y, state = case(V, H, L, B, T, seed)
    g = path_gradients(params, x, y, state)
    assert g.loss == pytest.approx(last_loss_poked(params, x, y, state), rel=1e-13)
    rng, eps = np.random.default_rng(seed + 1), 1e-6
    for l in range(1, L + 1):
        for t in range(1, T + 1):
            for which, grad in (("h", g.dh), ("c", g.dc)):
                u = rng.normal(size=(B, H))
                fd = (last_loss_poked(params, x, y, state, (l, t, which, eps * u))
                      - last_loss_poked(params, x, y, state, (l, t, which, -eps * u))) / (2 * eps)
                exact = float((grad[l - 1, t - 1] * u).sum())
                assert abs(fd - exact) <= 1e-6 * abs(exact) + 1e-8, (which, l, t, fd, exact)


# -- The public forward alone: the initial state, and the window split at t ------------------

def l_T(params, inputs, targets, state) -> float:
    """l_T by the public model.forward over the window from ``state``."""
    B = inputs.shape[0]
    logits, _ = forward(params, inputs, state)                    # (T*B, V), time-major
    return last_nll(logits[-B:], targets[:, -1])


def directional(f, state, l, j, u, eps=1e-6) -> float:
    """Central difference of f(state) along u added to state[l][j] (j: 0 h, 1 c)."""
    def moved(sign):
        s = [list(pair) for pair in state]
        s[l][j] = s[l][j] + sign * eps * u
        return [tuple(pair) for pair in s]
    return (f(moved(1)) - f(moved(-1))) / (2 * eps)


@settings(max_examples=20, deadline=None)
@given(**SHAPES)
def test_the_walk_ends_at_the_initial_state_gradient(V, H, L, B, T, seed):
    """What the walk carries back past step 1 is d l_T / d (h^l_0, c^l_0): central
    differences on the whole window through model.forward."""
    params, x, y, state = case(V, H, L, B, T, seed)
    g = path_gradients(params, x, y, state)
    rng = np.random.default_rng(seed + 2)
    for l in range(L):
        for j in (0, 1):
            u = rng.normal(size=(B, H))
            fd = directional(lambda s: l_T(params, x, y, s), state, l, j, u)
            exact = float((g.dstate[l][j] * u).sum())
            assert abs(fd - exact) <= 1e-6 * abs(exact) + 1e-8, (l + 1, "hc"[j], fd, exact)


def test_one_step_is_loss_and_grads_bit_for_bit():
    """For T = 1, l_T is the window's loss: the loss and the initial-state gradient are
    loss_and_grads' own, and the totals at t = 1 are the state's carried through step 1."""
    params, x, y, state = case(9, 4, 2, 3, 1, 5)
    g = path_gradients(params, x, y, state)
    loss, grads, final = z.loss_and_grads(params, x, y, state)
    assert g.loss == loss
    for (dh0, dc0), (want_h, want_c) in zip(g.dstate, grads["state"]):
        np.testing.assert_array_equal(dh0, want_h)
        np.testing.assert_array_equal(dc0, want_c)
    for (h, c), (want_h, want_c) in zip(g.final_state, final):
        np.testing.assert_array_equal(h, want_h)
        np.testing.assert_array_equal(c, want_c)


@settings(max_examples=20, deadline=None)
@given(**{**SHAPES, "T": st.integers(2, 5)})
def test_the_split_window_checks_the_top_h_and_the_carried_c(V, H, L, B, T, seed):
    """Split at t (1 <= t < T): run steps 1..t by model.forward, then l_T from the state
    at t. Its gradient is the total for h^L_t, and the carried part of c^l_t."""
    params, x, y, state = case(V, H, L, B, T, seed)
    g = path_gradients(params, x, y, state)
    tr = z.trace(params, x, y, state, mode="none")                 # o_t, c_t of each layer
    rng = np.random.default_rng(seed + 3)
    for t in range(1, T):
        _, at_t = forward(params, x[:, :t], state)                 # [(h^l_t, c^l_t)] * L
        rest = lambda s: l_T(params, x[:, t:], y[:, t:], s)         # noqa: E731
        u = rng.normal(size=(B, H))
        fd = directional(rest, at_t, L - 1, 0, u)
        exact = float((g.dh[L - 1, t - 1] * u).sum())
        assert abs(fd - exact) <= 1e-6 * abs(exact) + 1e-8, ("h", L, t, fd, exact)
        for l in range(1, L + 1):
            o, c = tr[f"l{l}.o"][t - 1], tr[f"l{l}.c"][t - 1]
            carried = g.dc[l - 1, t - 1] - g.dh[l - 1, t - 1] * o * (1 - np.tanh(c) ** 2)
            u = rng.normal(size=(B, H))
            fd = directional(rest, at_t, l - 1, 1, u)
            exact = float((carried * u).sum())
            assert abs(fd - exact) <= 1e-6 * abs(exact) + 1e-8, ("c", l, t, fd, exact)


def test_the_split_misses_the_lower_layers_vertical_path():
    """Why the split checks h of the top layer only: for l < L, h^l_t also feeds layer
    l+1 at step t, which the state at t holds fixed."""
    params, x, y, state = case(9, 4, 2, 3, 4, 11)
    g = path_gradients(params, x, y, state)
    _, at_t = forward(params, x[:, :2], state)
    u = np.random.default_rng(0).normal(size=(3, 4))
    fd = directional(lambda s: l_T(params, x[:, 2:], y[:, 2:], s), at_t, 0, 0, u)
    exact = float((g.dh[0, 1] * u).sum())
    assert abs(fd - exact) > 1e-3 * abs(exact)


# -- Contract ----------------------------------------------------------------------------

def test_float32_agrees_with_float64_and_the_state_defaults_to_zeros():
    params, x, y, _ = case(9, 4, 2, 3, 6, 2)
    zeros = z.zero_state(params, 3)
    g64 = gradient_path(params, x, y)
    assert all(np.array_equal(g64[k], gradient_path(params, x, y, zeros)[k]) for k in "hc")
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    g32 = gradient_path(p32, x, y)
    for k in "hc":
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4)


@pytest.mark.parametrize("bad, message", [
    (lambda p, x, y, s: (p, x, y[:, :-1], s), "targets has shape"),
    (lambda p, x, y, s: (p, x.astype(float), y, s), "inputs must be an integer array"),
    (lambda p, x, y, s: (p, x, y, s[:1]), "state must be a list of 2"),
    (lambda p, x, y, s: (p, x + 100, y, s), "inputs holds token ids"),
])
def test_bad_arguments_are_one_line_errors(bad, message):
    args = bad(*case(9, 4, 2, 3, 4, 0))
    with pytest.raises(ValueError, match=message) as e:
        gradient_path(*args)
    assert "\n" not in str(e.value)


def test_the_gpu_code_path_matches_numpy(builder, monkeypatch):
    """The same walk with CuPy's arrays and kernels (the test double of
    tests/fake_cupy.py, which refuses host arrays in device code)."""
    import sys

    from fake_cupy import make_fake_cupy
    from zaremba_ref.cuda_backend import make_gpu_backend
    cupy = make_fake_cupy(builder)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    gpu = make_gpu_backend()
    params, x, y, state = case(9, 4, 2, 3, 5, 4)
    want = gradient_path(params, x, y, state)
    put = lambda a: gpu.asarray(np.array(a))                       # noqa: E731
    got = gradient_path({k: put(v) for k, v in params.items()}, put(x), put(y),
                        [(put(h), put(c)) for h, c in state], backend=gpu)
    for k in "hc":
        assert isinstance(got[k], np.ndarray)
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
