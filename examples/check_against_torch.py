"""Check zaremba_ref against PyTorch, array by array.

Builds an LSTM language model in PyTorch (embedding, one single-layer ``nn.LSTM`` per
layer, linear decoder; float64), copies its weights into ours with
``params_from_torch``, runs both on the same words, the same carried state and the
same dropout masks (the paper's placement: between layers and before the softmax),
and compares the loss, every gradient (the initial state's too), and the trace: h
and c of every layer at every step, and the logits. Prints a table of differences.

    python examples/check_against_torch.py [--vocab 50] [--hidden 8] [--layers 2]
        [--batch 3] [--steps 6] [--dropout 0.5] [--seed 0]

Exit code 0 if every array agrees (|ours - torch| <= atol + rtol |torch|), 1 if not,
2 without PyTorch.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import zaremba_ref
from zaremba_ref.trace import compare_traces, format_comparison

try:
    import torch
    from torch import nn
except ImportError:
    torch = None


class TorchLM(nn.Module if torch else object):
    """The paper's model in PyTorch, with the dropout masks passed in explicitly."""

    def __init__(self, V: int, H: int, L: int):
        super().__init__()
        self.embedding = nn.Embedding(V, H)
        self.layers = nn.ModuleList(nn.LSTM(H, H, batch_first=True) for _ in range(L))
        self.decoder = nn.Linear(H, V)
        for p in self.parameters():                       # the paper's initialisation
            nn.init.uniform_(p, -0.1, 0.1)

    def forward(self, inputs, state, masks):
        """inputs (B, T); state [(h0, c0)] * L, (B, H) each; masks (B, T, H) each.
        Returns the logits (B, T, V) and every h_t, c_t of every layer (B, T, H)."""
        x = self.embedding(inputs)
        hs, cs = [], []
        for k, lstm in enumerate(self.layers):
            x = x * masks[k]                              # D(h^k) into layer k + 1
            h, c = state[k][0][None], state[k][1][None]   # (1, B, H)
            h_steps, c_steps = [], []
            for t in range(x.shape[1]):                   # one step at a time, to see c_t
                _, (h, c) = lstm(x[:, t:t + 1], (h, c))
                h_steps.append(h[0])
                c_steps.append(c[0])
            x = torch.stack(h_steps, dim=1)
            hs.append(x)
            cs.append(torch.stack(c_steps, dim=1))
        return self.decoder(x * masks[-1]), hs, cs        # D(h^L) into the softmax

    def oracle_state_dict(self) -> dict:
        """The weights keyed as ``params_from_torch`` expects (one multi-layer nn.LSTM)."""
        sd = {"embedding.weight": self.embedding.weight,
              "decoder.weight": self.decoder.weight, "decoder.bias": self.decoder.bias}
        for k, lstm in enumerate(self.layers):
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                sd[f"lstm.{w}_l{k}"] = getattr(lstm, f"{w}_l0")
        return sd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (("vocab", 50), ("hidden", 8), ("layers", 2), ("batch", 3),
                          ("steps", 6), ("seed", 0)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--atol", type=float, default=1e-12)
    args = ap.parse_args(argv)
    if torch is None:
        print("PyTorch is not installed (pip install torch)", file=sys.stderr)
        return 2
    V, H, L, B, T = args.vocab, args.hidden, args.layers, args.batch, args.steps
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    inputs, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = [(rng.uniform(-0.5, 0.5, (B, H)), rng.uniform(-0.5, 0.5, (B, H)))
             for _ in range(L)]
    masks = zaremba_ref.draw_masks(rng, args.dropout, "zaremba", L, B, T, H, np.float64)
    masks = masks or [np.ones((B, T, H))] * (L + 1)       # --dropout 0: keep everything

    # PyTorch: forward, mean cross-entropy, autograd
    lm = TorchLM(V, H, L).double()
    t_state = [tuple(torch.tensor(a, requires_grad=True) for a in pair) for pair in state]
    logits, hs, cs = lm(torch.tensor(inputs), t_state, [torch.tensor(m) for m in masks])
    loss = nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(targets).reshape(-1))
    loss.backward()

    # zaremba_ref: the same weights, words, state and masks
    params = zaremba_ref.params_from_torch(lm.oracle_state_dict())
    ours = zaremba_ref.trace(params, inputs, targets, state, masks, "zaremba")

    # PyTorch's arrays under our trace's names (time-major (T, B, ...), our gate order)
    np_ = lambda a: a.detach().numpy()  # noqa: E731
    theirs = {}
    for l in range(1, L + 1):
        theirs[f"l{l}.c"] = np_(cs[l - 1]).transpose(1, 0, 2)
        theirs[f"l{l}.h"] = np_(hs[l - 1]).transpose(1, 0, 2)
    theirs.update(logits=np_(logits).transpose(1, 0, 2), loss=np_(loss))
    grads = zaremba_ref.params_from_torch({k: v.grad for k, v in lm.oracle_state_dict().items()})
    theirs.update({f"grad.{k}": v for k, v in grads.items()})
    for l, (h0, c0) in enumerate(t_state, start=1):
        theirs[f"grad.state.{l}.h"], theirs[f"grad.state.{l}.c"] = np_(h0.grad), np_(c0.grad)
    ours = {k: ours[k] for k in theirs}                   # the arrays both sides have

    rows, first = compare_traces(ours, theirs, args.rtol, args.atol)
    print(f"zaremba_ref vs PyTorch {torch.__version__}: V={V} H={H} L={L} B={B} T={T}, "
          f"dropout {args.dropout} (zaremba placement), float64, carried state")
    print(format_comparison(rows, first, args.rtol, args.atol))
    return 0 if first is None else 1


if __name__ == "__main__":
    sys.exit(main())
