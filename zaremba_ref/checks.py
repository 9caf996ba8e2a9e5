"""Argument checks for the model's public functions, kept out of the math.

Every problem raises ``ValueError`` naming the argument and the expected shape,
before anything is computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dropout import MODES, num_masks


def _shape(a: Any) -> tuple:
    return tuple(getattr(a, "shape", ()))


def check_params(params: dict) -> tuple[int, int, int]:
    """(V, H, L) of a parameter dict, after checking that its shapes agree."""
    from .model import num_layers_of, param_names  # model imports this module
    if not isinstance(params, dict) or "embedding" not in params:
        raise ValueError("params must be the dict returned by init_params()")
    V, H = _shape(params["embedding"])
    L = num_layers_of(params)
    tied = "softmax.W" not in params                     # tied embeddings: E is W_s too
    expected = {"embedding": (V, H), "softmax.b": (V,)} | ({} if tied else {"softmax.W": (V, H)})
    for l in range(1, L + 1):
        expected.update({f"l{l}.W_x": (4 * H, H), f"l{l}.W_h": (4 * H, H),
                         f"l{l}.b_x": (4 * H,), f"l{l}.b_h": (4 * H,)})
    missing = [k for k in param_names(L, tied) if k not in params]
    if missing or L < 1:
        raise ValueError(f"params is missing {missing or 'every layer'}; "
                         "build it with init_params()")
    for k, shape in expected.items():
        if _shape(params[k]) != shape:
            raise ValueError(f"params[{k!r}] has shape {_shape(params[k])}, expected {shape}")
    return V, H, L


def check_call(params, inputs, targets, state, masks, dropout, mode, rng, dstate, backend):
    """Check one call of loss_and_grads / loss_only / forward (targets None); return
    the state (zeros if None)."""
    from .model import zero_state
    V, H, L = check_params(params)
    for name, a in (("inputs", inputs), ("targets", targets)):
        if a is None:                                    # forward() has no targets
            continue
        if len(_shape(a)) != 2 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array shaped (batch, steps), "
                             f"got {getattr(a, 'dtype', type(a).__name__)} {_shape(a)}")
        if a.size == 0:
            raise ValueError(f"{name} must not be empty, got shape {_shape(a)}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"{name} holds token ids in [{lo}, {hi}], expected ids in "
                             f"[0, {V - 1}] (vocabulary size {V})")
    B, T = _shape(inputs)
    if targets is not None and _shape(targets) != (B, T):
        raise ValueError(f"targets has shape {_shape(targets)}, expected {(B, T)} like inputs")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if masks is not None:
        n = num_masks(mode, L)
        if len(masks) != n:
            raise ValueError(f"masks must be a list of {n} arrays in {mode!r} mode with "
                             f"{L} layers, got {len(masks)}")
        shape, what = ((B, H), "(batch, hidden)") if mode == "variational" else (
            (B, T, H), "(batch, steps, hidden)")
        for k, m in enumerate(masks):
            if _shape(m) != shape:
                raise ValueError(f"masks[{k}] has shape {_shape(m)}, expected "
                                 f"{what} = {shape} in {mode!r} mode")
    elif dropout > 0 and mode != "none" and rng is None:
        raise ValueError("dropout > 0 needs rng (a seeded generator) or explicit masks")
    for name, s in (("state", state), ("dstate", dstate)):
        if s is None:
            continue
        if len(s) != L or any(len(pair) != 2 for pair in s):
            raise ValueError(f"{name} must be a list of {L} (h, c) pairs, one per layer")
        for l, pair in enumerate(s):
            for which, a in zip("hc", pair):
                if _shape(a) != (B, H):
                    raise ValueError(f"{name}[{l}] {which} has shape {_shape(a)}, "
                                     f"expected (batch, hidden) = {(B, H)}")
    return zero_state(params, B, backend) if state is None else state


def check_weight_masks(params, weight_masks, weight_drop, rng) -> None:
    """Check weight drop's arguments of loss_and_grads: L masks (4H, H), or a rate."""
    _, H, L = check_params(params)
    if not 0 <= weight_drop < 1:
        raise ValueError(f"weight_drop must be in [0, 1), got {weight_drop}")
    if weight_masks is None:
        if weight_drop > 0 and rng is None:
            raise ValueError("weight_drop > 0 needs rng (a seeded generator) or explicit "
                             "weight_masks")
        return
    if len(weight_masks) != L:
        raise ValueError(f"weight_masks must be a list of {L} arrays (one per layer), "
                         f"got {len(weight_masks)}")
    for l, M in enumerate(weight_masks, start=1):
        if _shape(M) != (4 * H, H):
            raise ValueError(f"weight_masks[{l - 1}] has shape {_shape(M)}, expected "
                             f"(4 * hidden, hidden) = {(4 * H, H)} like l{l}.W_h")
