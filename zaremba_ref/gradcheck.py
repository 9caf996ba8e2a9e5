"""Finite-difference check of ``loss_and_grads``: the proof behind every gradient.

For a parameter entry p, the central difference of fourth order::

    dJ/dp ~ [ -J(p+2e) + 8 J(p+e) - 8 J(p-e) + J(p-2e) ] / (12 e)

in float64, where J is the objective whose gradient ``loss_and_grads`` returns: the
mean NLL plus, when ``dstate`` is given, sum_l <dh_T^l, h_T^l> + <dc_T^l, c_T^l>
(a random weighting of the final state, so that the paths into h_T and c_T are
checked too). The initial state (h_0, c_0 of every layer) is checked like a parameter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import CPU, Backend
from .model import loss_and_grads


def _on(backend, params, inputs, targets, state, masks, dstate):
    """The host arrays moved onto ``backend`` (no copy on the CPU)."""
    dev = backend.asarray
    pairs = lambda s: None if s is None else [(dev(h), dev(c)) for h, c in s]  # noqa: E731
    return ({k: dev(v) for k, v in params.items()}, dev(inputs), dev(targets), pairs(state),
            None if masks is None else [dev(m) for m in masks], pairs(dstate))


def _objective(params, inputs, targets, state, masks, mode, dstate, backend,
               weight_masks) -> float:
    args = _on(backend, params, inputs, targets, state, masks, None)
    loss, _, final = loss_and_grads(*args[:5], mode=mode, backend=backend,
                                    weight_masks=weight_masks)
    final = [(backend.to_numpy(h), backend.to_numpy(c)) for h, c in final]
    if dstate is not None:
        loss += sum(float(np.vdot(dh, h)) + float(np.vdot(dc, c))
                    for (dh, dc), (h, c) in zip(dstate, final))
    return loss


def check_gradients(params: dict[str, np.ndarray], inputs: np.ndarray, targets: np.ndarray,
                    state: list | None = None, masks: list | None = None, *,
                    mode: str = "zaremba", dstate: list | None = None, eps: float = 1e-4,
                    max_entries: int = 40, seed: int = 0, floor: float = 1e-4,
                    elementwise: bool = False, backend: Backend = CPU,
                    weight_masks: list | None = None) -> dict[str, float]:
    """Compare ``loss_and_grads`` with finite differences, in float64.

    Up to ``max_entries`` entries of each tensor are checked (all of them if it is
    smaller, a random sample otherwise). Returns, for every parameter name and for
    ``state.{l}.h`` / ``state.{l}.c``, the relative error
    max|analytic - numeric| / max(max|analytic|, max|numeric|, floor) over the
    entries checked. The floor keeps a tensor whose true gradient is 0 (all its masks
    zero, say) from reporting the differences' rounding noise (~1e-11 at eps=1e-4) as
    a relative error of 1: for gradients smaller than ``floor`` the error is absolute,
    divided by ``floor``. ``backend`` is the implementation under test (its results
    are brought back to NumPy; use float64 on it too). ``weight_masks``: weight
    drop's fixed masks (see ``loss_and_grads``), held fixed like ``masks``.

    ``elementwise=True`` measures each entry against itself instead,
    max |analytic - numeric| / max(|analytic|, |numeric|, floor): a wrong entry next to
    a large one can no longer hide below the tensor's largest value. Use it with
    ``max_entries`` at least the tensor sizes (small tensors: every entry checked)
    and a floor near the differences' noise (~1e-9).
    """
    f64 = lambda a: np.array(a, dtype=np.float64)  # noqa: E731  (copies: we perturb in place)
    params = {k: f64(v) for k, v in params.items()}
    B = inputs.shape[0]
    H = params["embedding"].shape[1]
    L = sum(1 for k in params if k.endswith(".W_h"))
    state = ([(np.zeros((B, H)), np.zeros((B, H))) for _ in range(L)] if state is None
             else [(f64(h), f64(c)) for h, c in state])
    masks = None if masks is None else [f64(m) for m in masks]
    dstate = None if dstate is None else [(f64(h), f64(c)) for h, c in dstate]
    weight_masks = (None if weight_masks is None
                    else [backend.asarray(f64(M)) for M in weight_masks])

    p, x, y, s, m, ds = _on(backend, params, inputs, targets, state, masks, dstate)
    _, grads, _ = loss_and_grads(p, x, y, s, m, mode=mode, dstate=ds, backend=backend,
                                 weight_masks=weight_masks)
    grads = {k: backend.to_numpy(v) for k, v in grads.items() if k != "state"} | {
        "state": [(backend.to_numpy(h), backend.to_numpy(c)) for h, c in grads["state"]]}
    tensors = dict(params)
    analytic = {k: grads[k] for k in params}
    for l, ((h, c), (dh, dc)) in enumerate(zip(state, grads["state"]), start=1):
        tensors.update({f"state.{l}.h": h, f"state.{l}.c": c})
        analytic.update({f"state.{l}.h": dh, f"state.{l}.c": dc})

    J = lambda: _objective(params, inputs, targets, state, masks, mode, dstate,  # noqa: E731
                           backend, weight_masks)
    rng = np.random.default_rng(seed)
    errors = {}
    for name, p in tensors.items():
        flat = p.reshape(-1)                      # a view: perturbing it perturbs p
        idx = (np.arange(flat.size) if flat.size <= max_entries
               else rng.choice(flat.size, max_entries, replace=False))
        a = analytic[name].reshape(-1)[idx]
        n = np.empty(len(idx))
        for j, k in enumerate(idx):
            p0 = flat[k]
            values = []
            for step in (2 * eps, eps, -eps, -2 * eps):
                flat[k] = p0 + step
                values.append(J())
            flat[k] = p0
            n[j] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * eps)
        if elementwise:
            scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
        else:
            scale = max(np.abs(a).max(), np.abs(n).max(), floor)
        errors[name] = float((np.abs(a - n) / scale).max())
    return errors
