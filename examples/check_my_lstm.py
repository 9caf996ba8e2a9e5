"""A from-scratch LSTM language model in PyTorch ops (no nn.LSTM), checked against
zaremba_ref by its test kit. Needs PyTorch (for autograd): pip install torch.

    python examples/check_my_lstm.py                      # the check, from Python
    python -m zaremba_ref check-impl examples/check_my_lstm.py:step    # the same, CLI

``step`` is the kit's contract (see zaremba_ref/testing.py): the weights arrive keyed
like PyTorch's (gate rows i, f, g, o), the masks are the paper's L+1 dropout masks
(or None), the state is [(h, c)] per layer; it returns the mean NLL per token, the
gradients keyed like the weights, and the final state.
"""

import sys

try:
    import torch
except ImportError:
    raise SystemExit("check_my_lstm.py needs PyTorch for its autograd: pip install torch") \
        from None


def step(weights, inputs, targets, state, masks):
    w = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    x = w["embedding.weight"][torch.as_tensor(inputs)]               # (B, T, H)
    final = []
    for l, (h, c) in enumerate(state):
        x = x * torch.as_tensor(masks[l]) if masks is not None else x  # D(h^{l-1}_t)
        h, c, outputs = torch.as_tensor(h), torch.as_tensor(c), []
        for t in range(x.shape[1]):
            z = (x[:, t] @ w[f"lstm.weight_ih_l{l}"].T + w[f"lstm.bias_ih_l{l}"]
                 + h @ w[f"lstm.weight_hh_l{l}"].T + w[f"lstm.bias_hh_l{l}"])
            i, f, g, o = z.chunk(4, dim=1)                             # PyTorch's order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        x = torch.stack(outputs, dim=1)                                # (B, T, H)
        final.append((h.detach().numpy(), c.detach().numpy()))
    x = x * torch.as_tensor(masks[-1]) if masks is not None else x     # D(h^L_t)
    logits = x @ w["decoder.weight"].T + w["decoder.bias"]             # (B, T, V)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                             torch.as_tensor(targets).flatten())
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in w.items()}, final


if __name__ == "__main__":
    from zaremba_ref.testing import check_implementation

    report = check_implementation(step, layout="torch")
    print(report)
    sys.exit(0 if report.ok else 1)
