#!/usr/bin/env python
"""Memory of the training step: the parameters, the peak of the step's own buffers, and
the process's resident size after each of N steps (flat = no growth from step to step).

    python benchmarks/memory_step.py [--config small|medium|large] [--steps N]

The step is the trainer's real ``train_step`` (dropout as in the preset) on random
windows. NumPy reports its buffers to ``tracemalloc``, so the traced peak during a step,
less what was traced before it, is what the step itself allocates at its peak.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working tree's package

from zaremba_ref import CPU, init_params, zero_state  # noqa: E402
from zaremba_ref.config import PRESETS  # noqa: E402
from zaremba_ref.train import train_step  # noqa: E402

MiB = 1024 * 1024


def rss_mib() -> float:
    """The resident set size now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MiB


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(PRESETS), default="medium")
    ap.add_argument("--steps", type=int, default=20, help="steps to watch (default: 20)")
    args = ap.parse_args(argv)
    cfg = PRESETS[args.config]
    params = init_params(cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.init_scale,
                         seed=0, dtype=np.float32)
    data = np.random.default_rng(0).integers(0, cfg.vocab_size,
                                             (cfg.batch_size, cfg.num_steps + 1), dtype=np.int32)
    x, y = data[:, :-1], data[:, 1:]
    state, rng = zero_state(params, cfg.batch_size), CPU.rng(0)
    param_mib = sum(p.nbytes for p in params.values()) / MiB
    tracemalloc.start()
    peaks, rss = [], []
    for _ in range(args.steps):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        _, _, state = train_step(params, x, y, state, cfg, cfg.lr, rng)
        peaks.append((tracemalloc.get_traced_memory()[1] - before) / MiB)
        rss.append(round(rss_mib(), 1))
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.config}: params {param_mib:.1f} MiB; peak extra during one step "
          f"(tracemalloc, numpy buffers) {max(peaks):.1f} MiB (per step: "
          f"{min(peaks):.1f}-{max(peaks):.1f}); RSS after steps 1..{args.steps}: {rss}; "
          f"peak RSS {peak_rss:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
