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
    none                  no masks.

Every mask is shaped (batch, steps, hidden), already scaled (values 0 or 1/(1-p)).
"""

from __future__ import annotations

from typing import Any

MODES = ("zaremba", "naive", "none")


def num_masks(mode: str, num_layers: int) -> int:
    """How many masks a window needs in ``mode`` with ``num_layers`` LSTM layers."""
    return {"zaremba": num_layers + 1, "naive": 2 * num_layers + 1, "none": 0}[mode]


def draw_masks(rng: Any, p: float, mode: str, num_layers: int, batch: int, steps: int,
               hidden: int, dtype: Any) -> list:
    """Draw the masks of one window from the caller's generator ``rng``.

    m = (u >= p) / (1 - p) with u ~ U[0, 1): keep with probability 1-p.
    Returns a list of ``num_masks(mode, num_layers)`` arrays (batch, steps, hidden).
    """
    if p == 0 or mode == "none":
        return []
    scale = 1.0 / (1.0 - p)
    return [(rng.random((batch, steps, hidden), dtype=dtype) >= p).astype(dtype) * scale
            for _ in range(num_masks(mode, num_layers))]
