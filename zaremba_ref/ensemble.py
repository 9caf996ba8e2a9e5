"""Model averaging (the paper's Table 1, "model averaging of N LSTMs"): the members
predict each word independently, each carrying its own state, and the ensemble's
prediction is the average of their predicted probabilities::

    p(w_{n+1} | w_1..w_n) = (1/M) sum_m p_m(w_{n+1} | w_1..w_n)
    perplexity = exp( -(1/N) sum_n log p(w_{n+1} | ...) )

The average is of probabilities, not of log-probabilities (that would be a product
of experts, a different model). It is computed as a log-sum-exp over the members'
log-probabilities of the target (in float64 on the host), so that it stays exact
when the members' probabilities are tiny.

The pass over the stream is the one of :func:`zaremba_ref.train.evaluate`: one pass
in order, the state carried from window to window, no dropout, every word after
the first of each of the ``batch_size`` rows predicted once (the last, shorter
window included), so that an ensemble of one gives ``evaluate``'s perplexity.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from .backend import CPU, Backend
from .data import batchify, evaluation_windows
from .loss import perplexity, target_log_probs
from .model import forward


class EnsembleResult(NamedTuple):
    perplexity: float                 # of the averaged probabilities
    member_perplexities: list[float]  # each member alone, on the same windows


def evaluate_ensemble(list_of_params: Sequence[dict], stream: np.ndarray, batch_size: int,
                      num_steps: int, backend: Backend = CPU) -> EnsembleResult:
    """Perplexity of ``stream`` under the average of the members' predicted
    probabilities, and each member's own perplexity on the same pass.

    list_of_params: the members' parameter dicts (same vocabulary; sizes may differ).
    """
    if not list_of_params:
        raise ValueError("an ensemble needs at least one member")
    vocab = {p["embedding"].shape[0] for p in list_of_params}
    if len(vocab) != 1:
        raise ValueError(f"members have different vocabulary sizes {sorted(vocab)}")
    M = len(list_of_params)
    states = [None] * M                               # None: forward starts from zeros
    total, member_totals, count = 0.0, np.zeros(M), 0
    for x, y in evaluation_windows(batchify(stream, batch_size), num_steps):
        x_dev = backend.asarray(x)
        w = backend.asarray(y.T.reshape(-1))          # time-major like the logits   (T*B,)
        log_p = np.empty((M, w.shape[0]))             # log p_m(target)             (M, T*B)
        for m, params in enumerate(list_of_params):
            logits, states[m] = forward(params, x_dev, states[m], backend=backend)
            log_p[m] = backend.to_numpy(target_log_probs(logits, w, backend)[0])
        peak = log_p.max(axis=0)                      # log mean_m p_m, via log-sum-exp
        log_avg = peak + np.log(np.exp(log_p - peak).sum(axis=0)) - math.log(M)
        total -= log_avg.sum()
        member_totals -= log_p.sum(axis=1)
        count += w.shape[0]
    return EnsembleResult(perplexity(total / count),
                          [perplexity(s / count) for s in member_totals])
