"""The options beyond the paper against PyTorch autograd, on a model built the way
those papers' code builds it (the masks are given, not drawn, so that both
implementations see the same ones):

* variational dropout as a ``LockedDropout`` module (AWD-LSTM's, after Gal &
  Ghahramani): one mask (B, H) for every step of the sequence; on the recurrent
  connection, an ``nn.LSTMCell`` loop fed h_{t-1} * mask (Gal's placement);
* tied embeddings as in PyTorch's word_language_model (``--tied``):
  ``decoder.weight = embedding.weight``, one Parameter;
* weight drop as AWD-LSTM's ``WeightDrop``: the raw W_hh becomes a Parameter of the
  wrapper (``weight_hh_raw``), and before each forward the wrapped layer's W_hh is set
  to raw * M (nn.LSTM's ``__setattr__`` refreshes the flat weights it runs on).

Float64, a non-zero carried state, a loss that also weighs the final state. Also the
layout converters for tied weights, both layouts, both ways.
"""

from __future__ import annotations

import numpy as np
import pytest

import zaremba_ref as z
from conftest import import_module_or_skip
from zaremba_ref.dropout import draw_weight_masks
from zaremba_ref.oracle import (OURS_TO_TORCH, _reorder, params_from_torch,
                                params_from_torch7, params_to_torch, params_to_torch7)

torch = import_module_or_skip("torch", "PyTorch is not installed: no autograd oracle")
nn, F = torch.nn, torch.nn.functional


class LockedDropout(nn.Module):
    """x (B, T, H) times one mask (B, H) at every step (variational), or (B, T, H)."""

    def forward(self, x, mask):
        return x * (mask[:, None, :] if mask.dim() == 2 else mask)


class WeightDrop(nn.Module):
    """AWD-LSTM's WeightDrop, with the mask given: ``module`` runs with W_hh = raw * M."""

    def __init__(self, module, name):
        super().__init__()
        self.module, self.name = module, name
        raw = getattr(module, name)
        del module._parameters[name]
        self.weight_hh_raw = nn.Parameter(raw.detach().clone())
        setattr(module, name, self.weight_hh_raw.detach())

    def forward(self, *args, mask):
        setattr(self.module, self.name, self.weight_hh_raw * mask)
        return self.module(*args)


class TorchLM(nn.Module):
    def __init__(self, V, H, L, tie, variational_recurrent):
        super().__init__()
        self.embedding = nn.Embedding(V, H)
        cell = nn.LSTMCell if variational_recurrent else (lambda i, o: nn.LSTM(i, o, 1,
                                                                              batch_first=True))
        self.rnns = nn.ModuleList(cell(H, H) for _ in range(L))
        self.decoder = nn.Linear(H, V)
        if tie:
            self.decoder.weight = self.embedding.weight              # one Parameter
        self.lockdrop = LockedDropout()
        self.cell_loop = variational_recurrent

    def forward(self, inputs, state, masks, weight_masks):
        L = len(self.rnns)
        x = self.embedding(inputs)                                   # (B, T, H)
        final = []
        for k, rnn in enumerate(self.rnns):
            if masks:
                x = self.lockdrop(x, masks[k])
            run = ((lambda *a: rnn(*a, mask=weight_masks[k])) if weight_masks  # noqa: E731
                   else rnn)
            h, c = state[k]
            if self.cell_loop:                                       # Gal: D(h_{t-1})
                outs = []
                for s in range(x.shape[1]):
                    m = masks[L + 1 + k] if masks else None            # naive: per step
                    m = m[:, s] if m is not None and m.dim() == 3 else m
                    h, c = run(x[:, s], (h if m is None else h * m, c))
                    outs.append(h)
                x = torch.stack(outs, dim=1)
            else:
                x, (h, c) = run(x, (h[None], c[None]))
                h, c = h[0], c[0]
            final.append((h, c))
        if masks:
            x = self.lockdrop(x, masks[L])
        return self.decoder(x), final                                # (B, T, V)


def torch_run(params, inputs, targets, state, masks, mode, dstate, wmasks):
    V, H = params["embedding"].shape
    L = z.model.num_layers_of(params)
    tie = "softmax.W" not in params
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))      # noqa: E731
    model = TorchLM(V, H, L, tie, mode in ("variational", "naive")).double()
    sd = params_to_torch(params)
    cells = mode in ("variational", "naive")
    rename = {f"lstm.{w}_l{k}": f"rnns.{k}.{w}" + ("" if cells else "_l0")
              for k in range(L) for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    model.load_state_dict({rename.get(k, k): t(v) for k, v in sd.items()})
    if wmasks:
        for k in range(L):
            model.rnns[k] = WeightDrop(model.rnns[k], "weight_hh" + ("" if cells else "_l0"))
    if tie:
        assert model.decoder.weight is model.embedding.weight
        np.testing.assert_array_equal(sd["decoder.weight"], sd["embedding.weight"])
    h0 = [t(h).requires_grad_() for h, _ in state]
    c0 = [t(c).requires_grad_() for _, c in state]
    logits, final = model(torch.tensor(inputs), list(zip(h0, c0)),
                          [t(m) for m in masks] if masks else None,
                          # a weight mask's rows are W_h's: reorder them like W_h's
                          [t(_reorder(M, OURS_TO_TORCH)) for M in wmasks] if wmasks else None)
    nll = F.cross_entropy(logits.reshape(-1, V), torch.tensor(targets).reshape(-1))
    weighted = sum((t(dh) * h).sum() + (t(dc) * c).sum()
                   for (dh, dc), (h, c) in zip(dstate, final))
    (nll + weighted).backward()
    found = dict(model.named_parameters(remove_duplicate=False))   # tied: both names
    if wmasks:                                                     # W_hh is the raw one
        for k in range(L):
            found[rename[f"lstm.weight_hh_l{k}"]] = found.pop(f"rnns.{k}.weight_hh_raw")
            found = {key.replace(f"rnns.{k}.module.", f"rnns.{k}."): v for key, v in found.items()}
    back = {v: k for k, v in rename.items()}
    grads = {back.get(k, k): p.grad.numpy() for k, p in found.items()}
    return (float(nll.detach()), grads, [(h.grad.numpy(), c.grad.numpy()) for h, c in zip(h0, c0)],
            [(h.detach().numpy(), c.detach().numpy()) for h, c in final])


def rel_err(a, b) -> float:
    scale = max(np.abs(a).max(), np.abs(b).max())
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


@pytest.mark.parametrize("mode, tie, wd", [
    ("variational", False, False), ("variational", True, False), ("zaremba", True, False),
    ("zaremba", False, True), ("variational", False, True), ("variational", True, True),
    ("none", True, True), ("naive", True, True)])
@pytest.mark.parametrize("V,H,L,B,T", [(7, 3, 1, 1, 4), (11, 5, 2, 3, 6), (13, 4, 3, 2, 5)])
def test_every_gradient_matches_pytorch_autograd(V, H, L, B, T, mode, tie, wd):
    rng = np.random.default_rng(V)
    params = z.init_params(V, H, L, 0.4, seed=V, dtype=np.float64, tie_weights=tie)
    inputs, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = [tuple(rng.uniform(-0.8, 0.8, (B, H)) for _ in "hc") for _ in range(L)]
    masks = z.draw_masks(rng, 0.5, mode, L, B, T, H, np.float64)
    wmasks = draw_weight_masks(rng, 0.4, L, H, np.float64) if wd else None
    dstate = [tuple(rng.normal(size=(B, H)) for _ in "hc") for _ in range(L)]
    loss, grads, final = z.loss_and_grads(params, inputs, targets, state, masks or None,
                                          mode=mode, dstate=dstate, weight_masks=wmasks)
    t_loss, t_grads, t_dstate0, t_final = torch_run(params, inputs, targets, state, masks,
                                                    mode, dstate, wmasks)
    assert abs(loss - t_loss) <= 1e-12 * abs(t_loss)
    ours = params_to_torch(grads)                # tied: decoder.weight = the summed grad
    assert ours.keys() == t_grads.keys()
    for k in ours:
        assert rel_err(ours[k], t_grads[k]) <= 1e-10, (k, rel_err(ours[k], t_grads[k]))
    for (dh, dc), (tdh, tdc) in zip(grads["state"], t_dstate0):
        assert rel_err(dh, tdh) <= 1e-10 and rel_err(dc, tdc) <= 1e-10
    for (h, c), (th, tc) in zip(final, t_final):
        np.testing.assert_allclose(h, th, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c, tc, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("to, back, out_key, emb_key", [
    (params_to_torch, params_from_torch, "decoder.weight", "embedding.weight"),
    (params_to_torch7, params_from_torch7, "h2y.weight", "lookup.weight")])
def test_layouts_of_tied_weights_both_ways(to, back, out_key, emb_key):
    tied = z.init_params(9, 4, 2, seed=1, dtype=np.float64, tie_weights=True)
    theirs = to(tied)
    np.testing.assert_array_equal(theirs[out_key], theirs[emb_key])  # W_s written as E
    again = back(theirs)
    assert list(again) == list(tied) and all(np.array_equal(again[k], tied[k]) for k in tied)
    assert list(back({k: v for k, v in theirs.items() if k != out_key})) == list(tied)
    untied = z.init_params(9, 4, 2, seed=1, dtype=np.float64)
    assert list(back(to(untied))) == list(untied)                    # W_s != E: untied
    forced = back(theirs, tie_weights=False)                         # or as told
    assert "softmax.W" in forced
    np.testing.assert_array_equal(forced["softmax.W"], forced["embedding"])


def test_a_tied_pytorch_state_dict_loads_tied():
    """As PyTorch's word_language_model builds it with --tied: the state_dict holds
    decoder.weight, the embedding's own Parameter under a second name."""
    class RNNModel(nn.Module):
        def __init__(self, V, H, L):
            super().__init__()
            self.embedding = nn.Embedding(V, H)
            self.lstm = nn.LSTM(H, H, L, batch_first=True)
            self.decoder = nn.Linear(H, V)
            self.decoder.weight = self.embedding.weight

    model = RNNModel(9, 4, 2).double()
    sd = model.state_dict()
    assert "decoder.weight" in sd
    params = params_from_torch(sd)
    assert list(params) == z.param_names(2, tie_weights=True)
    np.testing.assert_array_equal(params["embedding"], model.embedding.weight.detach().numpy())
    back = params_to_torch(params)
    assert back.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k].numpy(), err_msg=k)
