"""Generate text from a trained model: feed the prime, then sample word by word."""

from __future__ import annotations

import numpy as np

from .backend import CPU, Backend
from .model import forward, zero_state


def sample(params: dict, vocab: list[str], words: int = 50, temperature: float = 1.0,
           seed: int | None = 0, prime: str = "", backend: Backend = CPU) -> list[str]:
    """``words`` words drawn from p(w_{t+1} | w_1..w_t) ~ softmax(y_t / temperature).

    ``prime`` (space-separated words of the vocabulary) is fed first; without it the
    model starts after an ``<eos>``, i.e. at the start of a sentence.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    word_to_id = {w: i for i, w in enumerate(vocab)}
    context = prime.split() or ["<eos>"]
    unknown = [w for w in context if w not in word_to_id]
    if unknown:
        raise ValueError(f"prime words not in the vocabulary: {unknown} (PTB writes rare "
                         "words as <unk> and numbers as N)")
    rng = np.random.default_rng(seed)
    ids = np.array([[word_to_id[w] for w in context]], dtype=np.int64)  # (1, len)
    y, state = forward(params, backend.asarray(ids), zero_state(params, 1, backend),
                       backend=backend)
    generated = []
    for _ in range(words):
        logits = backend.to_numpy(y[-1]).astype(np.float64)                 # (V,)
        p = np.exp((logits - logits.max()) / temperature)  # shift first: no overflow
        # at any temperature > 0 (the same p; bit for bit at temperature 1)
        w = int(rng.choice(len(p), p=p / p.sum()))
        generated.append(vocab[w])
        y, state = forward(params, backend.asarray(np.array([[w]])), state, backend=backend)
    return generated
