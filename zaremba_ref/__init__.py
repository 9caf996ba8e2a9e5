"""zaremba_ref: a reference implementation of Zaremba, Sutskever & Vinyals (2014),
"Recurrent Neural Network Regularization", in NumPy (and CuPy), with forward and
backward through time written out by hand.

The oracle contract (kept stable)::

    init_params(V, H, L, init_scale, seed, dtype) -> params
    loss_and_grads(params, inputs, targets, state, masks, ...) -> (loss, grads, final_state)
    params_from_torch(state_dict), params_to_torch(params_or_grads)
    check_gradients(params, inputs, targets, ...) -> {name: relative error}

Studies and tools around it: ``trace`` (every intermediate and gradient of a window),
``gradient_path`` (how far back the last word's loss reaches: its gradient with
respect to every h^l_t and c^l_t of the window),
``dropout_crossings`` and ``mask_applications`` (Figure 3), ``evaluate_ensemble``
(Table 1's model averaging), ``params_to_torch7`` / ``params_from_torch7`` (the paper's
own Torch code's layout).

Beyond the paper (off by default): ``mode="variational"``, ``init_params(...,
tie_weights=True)``, ``loss_and_grads(..., weight_masks=...)`` (see README, "Beyond the
paper").
"""

from .backend import CPU, Backend, BackendUnavailable, get_backend
from .dropout import MODES, draw_masks, num_masks
from .ensemble import evaluate_ensemble
from .figure3 import dropout_crossings, mask_applications
from .gradcheck import check_gradients
from .gradient_path import gradient_path
from .model import init_params, loss_and_grads, loss_only, param_names, zero_state
from .optim import clip_factor, global_norm, learning_rate, sgd_step
from .oracle import params_from_torch, params_from_torch7, params_to_torch, params_to_torch7
from .trace import trace

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendUnavailable", "CPU", "MODES", "check_gradients", "clip_factor",
    "draw_masks", "dropout_crossings", "evaluate_ensemble", "get_backend", "global_norm",
    "gradient_path",
    "init_params", "learning_rate", "loss_and_grads", "loss_only", "mask_applications",
    "num_masks",
    "param_names", "params_from_torch", "params_from_torch7", "params_to_torch",
    "params_to_torch7", "sgd_step", "trace", "zero_state",
]
