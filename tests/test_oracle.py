"""The oracle: our gradients against PyTorch autograd, and the weight layouts of
PyTorch and of the paper's Torch7 code (both ways).

The PyTorch model is built layer by layer (one single-layer ``nn.LSTM`` per layer,
or ``nn.LSTMCell`` loops in naive mode) so that the same explicit masks apply where
our model applies them: mask k (B, T, H) multiplies the input of layer k+1, mask L
the top output, mask L+l the h_{t-1} going into W_h of layer l (naive). Everything in
float64, from a non-zero carried state, with a loss that also weighs the final state
(so the gradient arriving through h_T, c_T, our ``dstate``, is checked too).
"""

from __future__ import annotations

import numpy as np
import pytest

import zaremba_ref
from zaremba_ref import (draw_masks, init_params, loss_and_grads, loss_only, param_names,
                         params_from_torch, params_from_torch7, params_to_torch,
                         params_to_torch7)
from zaremba_ref.oracle import state_from_torch7, state_to_torch7

from conftest import import_torch

SHAPES = [  # V, H, L, B, T
    (7, 3, 1, 1, 4),
    (11, 5, 2, 3, 6),
    (13, 4, 3, 2, 5),
    (9, 6, 2, 4, 1),
]


def problem(V, H, L, B, T, mode, seed=0):
    rng = np.random.default_rng(seed)
    params = init_params(V, H, L, init_scale=0.4, seed=seed, dtype=np.float64)
    inputs, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = [(rng.uniform(-0.8, 0.8, (B, H)), rng.uniform(-0.8, 0.8, (B, H)))
             for _ in range(L)]
    masks = draw_masks(rng, 0.5, mode, L, B, T, H, np.float64)
    dstate = [(rng.normal(size=(B, H)), rng.normal(size=(B, H))) for _ in range(L)]
    return params, inputs, targets, state, masks, dstate


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(), np.abs(b).max())
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


# -- PyTorch autograd ------------------------------------------------------------------

def torch_run(params, inputs, targets, state, masks, mode, dstate):
    """The same model in PyTorch, layer by layer. Returns (loss, grads keyed like
    params_to_torch, initial-state grads [(dh0, dc0)], final state [(h_T, c_T)])."""
    torch = import_torch()
    nn, F = torch.nn, torch.nn.functional
    V, H = params["embedding"].shape
    L = sum(k.endswith(".W_h") for k in params)
    B, T = inputs.shape
    sd = {k: torch.tensor(v) for k, v in params_to_torch(params).items()}
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    m = [t(mk) for mk in masks]                                   # (B, T, H) each

    embedding = nn.Embedding(V, H).double()
    decoder = nn.Linear(H, V).double()
    naive = mode == "naive"
    layers = [(nn.LSTMCell(H, H) if naive else nn.LSTM(H, H, 1, batch_first=True)).double()
              for _ in range(L)]
    with torch.no_grad():
        embedding.weight.copy_(sd["embedding.weight"])
        decoder.weight.copy_(sd["decoder.weight"])
        decoder.bias.copy_(sd["decoder.bias"])
        for k, layer in enumerate(layers):
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, w if naive else f"{w}_l0").copy_(sd[f"lstm.{w}_l{k}"])
    h0 = [t(h).requires_grad_() for h, _ in state]
    c0 = [t(c).requires_grad_() for _, c in state]

    x = embedding(torch.tensor(inputs))                           # (B, T, H)
    final = []
    for k, layer in enumerate(layers):
        if m:
            x = x * m[k]                                          # D(h^k) into layer k+1
        if naive:                                                 # D(h_{t-1}) into W_h only
            h, c, outs = h0[k], c0[k], []
            for s in range(T):
                h, c = layer(x[:, s], (h * m[L + 1 + k][:, s], c))
                outs.append(h)
            x = torch.stack(outs, dim=1)
        else:
            x, (h, c) = layer(x, (h0[k][None], c0[k][None]))
            h, c = h[0], c[0]
        final.append((h, c))
    if m:
        x = x * m[L]                                              # D(h^L) into the softmax
    logits = decoder(x)                                           # (B, T, V)
    nll = F.cross_entropy(logits.reshape(-1, V), torch.tensor(targets).reshape(-1))
    weighted = sum((t(dh) * h).sum() + (t(dc) * c).sum()
                   for (dh, dc), (h, c) in zip(dstate, final))
    (nll + weighted).backward()

    grads = {"embedding.weight": embedding.weight.grad, "decoder.weight": decoder.weight.grad,
             "decoder.bias": decoder.bias.grad}
    for k, layer in enumerate(layers):
        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            grads[f"lstm.{w}_l{k}"] = getattr(layer, w if naive else f"{w}_l0").grad
    np_ = lambda a: a.detach().numpy()  # noqa: E731
    return (float(nll.detach()), {k: np_(v) for k, v in grads.items()},
            [(np_(h.grad), np_(c.grad)) for h, c in zip(h0, c0)],
            [(np_(h), np_(c)) for h, c in final])


@pytest.mark.parametrize("mode", ["zaremba", "naive", "none"])
@pytest.mark.parametrize("V,H,L,B,T", SHAPES)
def test_every_gradient_matches_pytorch_autograd(V, H, L, B, T, mode):
    import_torch()
    params, inputs, targets, state, masks, dstate = problem(V, H, L, B, T, mode, seed=V)
    loss, grads, final = loss_and_grads(params, inputs, targets, state, masks, mode=mode,
                                        dstate=dstate)
    t_loss, t_grads, t_state_grads, t_final = torch_run(params, inputs, targets, state,
                                                        masks, mode, dstate)
    assert abs(loss - t_loss) <= 1e-12 * abs(t_loss)
    ours = params_to_torch(grads)
    assert set(ours) == set(t_grads)
    for key in ours:
        assert rel_err(ours[key], t_grads[key]) < 1e-9, key
    for l in range(L):
        for j, which in enumerate("hc"):
            assert rel_err(grads["state"][l][j], t_state_grads[l][j]) < 1e-9, f"d{which}0 {l}"
            assert rel_err(final[l][j], t_final[l][j]) < 1e-12, f"{which}_T {l}"


def test_torch_layout_round_trip_and_a_real_module():
    torch = import_torch()
    V, H, L, B, T = 10, 4, 2, 3, 5
    params, inputs, targets, state, _, _ = problem(V, H, L, B, T, "none")
    back = params_from_torch(params_to_torch(params))
    assert list(back) == param_names(L)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])

    class LM(torch.nn.Module):                # the layout params_to_torch promises
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, H)
            self.lstm = torch.nn.LSTM(H, H, L, batch_first=True)
            self.decoder = torch.nn.Linear(H, V)

    lm = LM().double()
    lm.load_state_dict({k: torch.tensor(v) for k, v in params_to_torch(params).items()},
                       strict=True)
    for k, v in params_from_torch(lm.state_dict()).items():
        np.testing.assert_array_equal(v, params[k])
    # the multi-layer nn.LSTM (no dropout) computes our loss from the same weights
    h0 = torch.tensor(np.stack([h for h, _ in state]))
    c0 = torch.tensor(np.stack([c for _, c in state]))
    out, _ = lm.lstm(lm.embedding(torch.tensor(inputs)), (h0, c0))
    nll = torch.nn.functional.cross_entropy(lm.decoder(out).reshape(-1, V),
                                            torch.tensor(targets).reshape(-1))
    assert float(nll.detach()) == pytest.approx(loss_only(params, inputs, targets, state)[0],
                                       rel=1e-13)
    # from torch to ours to torch: a state_dict of torch's own initialisation
    sd = {k: v.numpy() for k, v in LM().double().state_dict().items()}
    for k, v in params_to_torch(params_from_torch(sd)).items():
        np.testing.assert_array_equal(v, sd[k])


# -- the paper's Torch7 code --------------------------------------------------------------

def sigm(x):
    return 1 / (1 + np.exp(-x))


def lua_lstm(x, prev_c, prev_h, w, l):
    """One step of main.lua's ``lstm(x, prev_c, prev_h)`` in NumPy, from Torch7 weights."""
    H = prev_h.shape[1]
    gates = (x @ w[f"l{l}.i2h.weight"].T + w[f"l{l}.i2h.bias"]          # i2h(x)
             + prev_h @ w[f"l{l}.h2h.weight"].T + w[f"l{l}.h2h.bias"])   # + h2h(prev_h)
    sliced = gates.reshape(-1, 4, H)                    # nn.Reshape(4, rnn_size), SplitTable(2)
    in_gate = sigm(sliced[:, 0])
    in_transform = np.tanh(sliced[:, 1])
    forget_gate = sigm(sliced[:, 2])
    out_gate = sigm(sliced[:, 3])
    next_c = forget_gate * prev_c + in_gate * in_transform
    next_h = out_gate * np.tanh(next_c)
    return next_c, next_h


def lua_network(w, inputs, targets, s, masks, L):
    """main.lua's ``create_network`` unrolled over the window (fp): LookupTable, Dropout,
    the layers, Dropout, h2y, LogSoftMax, ClassNLLCriterion; the mean of the per-step
    errors. ``s`` is the Lua state table [c1, h1, c2, h2, ...]; dropout by our masks."""
    B, T = inputs.shape
    errs = []
    for t in range(T):
        i = [w["lookup.weight"][inputs[:, t]]]
        next_s = []
        for layer in range(1, L + 1):
            prev_c, prev_h = s[2 * layer - 2], s[2 * layer - 1]
            dropped = i[layer - 1] * masks[layer - 1][:, t]
            next_c, next_h = lua_lstm(dropped, prev_c, prev_h, w, layer)
            next_s += [next_c, next_h]
            i.append(next_h)
        y = (i[L] * masks[L][:, t]) @ w["h2y.weight"].T + w["h2y.bias"]
        logp = y - y.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        errs.append(-logp[np.arange(B), targets[:, t]].mean())
        s = next_s
    return float(np.mean(errs)), s


@pytest.mark.parametrize("V,H,L,B,T", SHAPES)
def test_torch7_weights_compute_the_same_lstm(V, H, L, B, T):
    params, inputs, targets, state, masks, _ = problem(V, H, L, B, T, "zaremba", seed=1)
    w = params_to_torch7(params)
    # one step of one layer: the same c and h
    x = np.random.default_rng(2).normal(size=(B, H))
    h0, c0 = state[0]
    c_lua, h_lua = lua_lstm(x, c0, h0, w, 1)
    z = x @ params["l1.W_x"].T + params["l1.b_x"] + h0 @ params["l1.W_h"].T + params["l1.b_h"]
    i, f, o, g = sigm(z[:, :H]), sigm(z[:, H:2 * H]), sigm(z[:, 2 * H:3 * H]), np.tanh(z[:, 3 * H:])
    c = f * c0 + i * g
    np.testing.assert_allclose(c_lua, c, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(h_lua, o * np.tanh(c), rtol=1e-13, atol=1e-15)
    # the whole network over the window, with dropout masks and a carried state
    loss, _, final = loss_and_grads(params, inputs, targets, state, masks, mode="zaremba")
    lua_loss, lua_state = lua_network(w, inputs, targets, state_to_torch7(state), masks, L)
    assert lua_loss == pytest.approx(loss, rel=1e-12)
    for (h, c), (h_l, c_l) in zip(final, state_from_torch7(lua_state)):
        np.testing.assert_allclose(h_l, h, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c_l, c, rtol=1e-12, atol=1e-14)


def test_torch7_layout_round_trip():
    params, inputs, targets, state, masks, _ = problem(8, 3, 2, 2, 3, "zaremba")
    w = params_to_torch7(params)
    assert sorted(w) == sorted(["lookup.weight", "h2y.weight", "h2y.bias"] +
                               [f"l{l}.{m}.{p}" for l in (1, 2) for m in ("i2h", "h2h")
                                for p in ("weight", "bias")])
    assert w["l2.i2h.weight"].shape == (12, 3) and w["l1.h2h.bias"].shape == (12,)
    # gate blocks: Torch7 i, g, f, o <- ours i, f, o, g
    b = params["l1.b_x"]
    np.testing.assert_array_equal(w["l1.i2h.bias"], np.concatenate([b[0:3], b[9:12],
                                                                    b[3:6], b[6:9]]))
    for k, v in params_from_torch7(w).items():
        np.testing.assert_array_equal(v, params[k])
    _, grads, _ = loss_and_grads(params, inputs, targets, state, masks)
    back = params_from_torch7(params_to_torch7(grads))          # grads too ("state" dropped)
    assert set(back) == set(params)
    for k in back:
        np.testing.assert_array_equal(back[k], grads[k])
    lua_state = state_to_torch7(state)
    assert lua_state[0] is state[0][1] and lua_state[1] is state[0][0]   # c before h
    assert all(a is b for p, q in zip(state_from_torch7(lua_state), state)
               for a, b in zip(p, q))
    with pytest.raises(ValueError):
        state_from_torch7(lua_state[:3])
    assert zaremba_ref.params_to_torch7 is params_to_torch7


def test_gate_order_table_in_the_docstring():
    doc = zaremba_ref.oracle.__doc__
    for row in ("i, f, o, g", "i, g, f, o", "i, f, g, o"):
        assert row in doc
    for who in ("paper", "zaremba_ref", "Torch code", "PyTorch"):
        assert who in doc
