"""Weights in other implementations' layouts, for using zaremba_ref as an oracle.

Gate order of the rows of the 4H-row weight matrices:

    ==================  ==============
    the paper (eq. 3.1)  i, f, o, g
    zaremba_ref          i, f, o, g   (the paper's)
    PyTorch nn.LSTM      i, f, g, o
    ==================  ==============

PyTorch keys are those of a model with ``nn.Embedding`` named ``embedding``,
``nn.LSTM(batch_first=True)`` named ``lstm`` and ``nn.Linear`` named ``decoder``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OURS_TO_TORCH = (0, 1, 3, 2)   # torch block k is our block OURS_TO_TORCH[k]: i, f, g, o


def _reorder(a: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """The four H-row blocks of ``a`` (4H, ...) rearranged: block k <- block order[k]."""
    H = a.shape[0] // 4
    return np.concatenate([a[j * H:(j + 1) * H] for j in order])


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(j) for j in np.argsort(order))


def params_to_torch(params_or_grads: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our params (or grads) as NumPy arrays keyed like a PyTorch model's state_dict.

    Works on grads too (their ``"state"`` entry is left out), so that gradients can
    be compared key by key with PyTorch's ``.grad``.
    """
    p = {k: (v.get() if hasattr(v, "get") else np.asarray(v))
         for k, v in params_or_grads.items() if k != "state"}
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
    sd = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
          for k, v in state_dict.items()}
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
