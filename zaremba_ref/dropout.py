"""Dropout masks (paper, section 3.2): where D sits, and how its masks are drawn.

D(x) = x * m with m = 1/(1-p) with probability 1-p, else 0 ("inverted" dropout:
the expectation of D(x) is x, so evaluation uses the network unchanged).

Placement, for L layers (mask k multiplies the input of layer k+1)::

    zaremba  (the paper)  L+1 masks: D(h^0_t) into layer 1, ..., D(h^{L-1}_t) into
                          layer L, and D(h^L_t) into the softmax. h_{t-1}, c_{t-1}
                          are never dropped.
    naive                 the same L+1, plus L more: mask L+l multiplies h^l_{t-1}
                          on its way into W_h of layer l, fresh at every step
                          (dropout on the recurrent connections, as earlier work did).
    variational           beyond the paper (Gal & Ghahramani 2016, "locked" dropout):
                          the 2L+1 masks of naive, but each one drawn once per window
                          and used at every step t. The recurrent rate may differ.
    none                  no masks.

In zaremba and naive mode every mask is shaped (batch, steps, hidden); in variational
mode (batch, hidden), the same for every step. All are already scaled (values 0 or
1/(1-p)).

Weight drop (beyond the paper, Merity et al. 2017, AWD-LSTM; DropConnect on W_h) is
not a placement on activations but a mask on a weight: M_l (4H, H), drawn once per
window, layer l uses W_h^l * M_l at every step (``model.drop_weights``).
"""

from __future__ import annotations

from typing import Any

MODES = ("zaremba", "naive", "variational", "none")


def num_masks(mode: str, num_layers: int) -> int:
    """How many masks a window needs in ``mode`` with ``num_layers`` LSTM layers."""
    L = num_layers
    return {"zaremba": L + 1, "naive": 2 * L + 1, "variational": 2 * L + 1, "none": 0}[mode]


def _masks(rng: Any, p: float, shape: tuple, dtype: Any, count: int) -> list:
    """``count`` masks m = (u >= p) / (1 - p), u ~ U[0, 1) of ``shape``, in order."""
    scale = 1.0 / (1.0 - p)
    masks = []
    for _ in range(count):
        m = rng.random(shape, dtype=dtype)     # u ~ U[0, 1); m is written in its place
        m[...] = m >= p                        # 1 where kept, 0 where dropped
        m *= scale                             # m = (u >= p) / (1 - p)
        masks.append(m)
    return masks


def draw_masks(rng: Any, p: float, mode: str, num_layers: int, batch: int, steps: int,
               hidden: int, dtype: Any, recurrent_p: float | None = None) -> list:
    """Draw the masks of one window from the caller's generator ``rng``.

    m = (u >= p) / (1 - p) with u ~ U[0, 1): keep with probability 1-p.
    Returns a list of ``num_masks(mode, num_layers)`` arrays, (batch, steps, hidden)
    each, or (batch, hidden) in variational mode: first the L+1 vertical masks, then
    (naive, variational) the L recurrent ones, drawn at rate ``recurrent_p`` in
    variational mode if given (Gal's grid), else ``p``.
    """
    if mode == "none" or p == 0 and not (mode == "variational" and recurrent_p):
        return []
    if mode == "variational":
        q = p if recurrent_p is None else recurrent_p
        return (_masks(rng, p, (batch, hidden), dtype, num_layers + 1)
                + _masks(rng, q, (batch, hidden), dtype, num_layers))
    return _masks(rng, p, (batch, steps, hidden), dtype, num_masks(mode, num_layers))


def draw_weight_masks(rng: Any, p: float, num_layers: int, hidden: int, dtype: Any) -> list:
    """Weight drop's masks for one window: L arrays M_l (4H, H), 0 or 1/(1-p), one per
    layer's W_h, drawn like the others (after them, when both are drawn)."""
    if p == 0:
        return []
    return _masks(rng, p, (4 * hidden, hidden), dtype, num_layers)
