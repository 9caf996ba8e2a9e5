"""What a run will need, checked before anything large is allocated: memory and data.

Memory, in array elements (bytes = elements x the dtype's size), for a model of
vocabulary V, H units, L layers, run on windows of B rows x T steps, N = B*T::

    parameters     P = 2VH + V + L (8H^2 + 8H)      embedding, softmax, L x (W_x, W_h, b_x, b_h)
    training step  P + NV + NH (6 + 6L + m)         gradients, the logits (N, V), and the
                   + 2LBH                           activations: embedding rows, per layer
                                                    the gates z (4), h and c (2), and the
                                                    backward's dz and dx; m = 2(L+1) with
                                                    dropout (the masks and the dropped
                                                    copies), 4L+2 in naive mode, 0 without
    evaluation     NV + NH (6L + 2) + 2LBH          no gradients, no masks

The trainer holds the parameters and, in turn, a step's buffers, then a validation pass's,
then the test pass's (``test_batch_size`` rows): its peak is P plus the largest of
the three. ``benchmarks/memory_step.py`` measured the medium preset: parameters
75.5 MiB, a step's buffers 140.7 MiB at their peak; these formulas give 75.5 and
144.0 MiB, and ``tests/test_faults.py`` holds them to within [-3%, +25%] of
``tracemalloc`` on other shapes (1-3 layers, each dropout mode, float32 and float64).

The memory available is the kernel's ``MemAvailable`` (``/proc/meminfo``; else free
pages from ``os.sysconf``), capped by a cgroup v2 limit where one is set; on the GPU,
CuPy's free device memory. When it cannot be read, nothing is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GiB, MiB = 2**30, 2**20


class ResourceError(ValueError):
    """A run that cannot fit: the one-line message gives both numbers and the fix."""


def param_elements(V: int, H: int, L: int) -> int:
    """P: the number of parameters of the model (see the module docstring)."""
    return 2 * V * H + V + L * (8 * H * H + 8 * H)


def _mask_factor(L: int, dropout: float, mode: str) -> int:
    if dropout <= 0 or mode == "none":
        return 0
    return 2 * (L + 1) + (2 * L if mode == "naive" else 0)


def step_elements(V: int, H: int, L: int, B: int, T: int, dropout: float = 0.0,
                  mode: str = "zaremba") -> int:
    """The peak of one training step's own buffers (gradients included), in elements."""
    N = B * T
    return (param_elements(V, H, L) + N * V + N * H * (6 + 6 * L + _mask_factor(L, dropout, mode))
            + 2 * L * B * H)


def eval_elements(V: int, H: int, L: int, B: int, T: int) -> int:
    """The peak of one evaluation window's buffers (no gradients, no masks)."""
    N = B * T
    return N * V + N * H * (6 * L + 2) + 2 * L * B * H


def trace_elements(V: int, H: int, L: int, B: int, T: int, dropout: float = 0.0,
                   mode: str = "zaremba") -> int:
    """``trace``'s peak beyond the caller's parameters: its own float64 copy of them, a
    training step, then every intermediate kept (~11 (T, B, H) arrays per layer)."""
    N = B * T
    m = _mask_factor(L, dropout, mode)
    return (param_elements(V, H, L) + step_elements(V, H, L, B, T, dropout, mode) + N * V
            + N * H * (11 * L + 4 + m))


def training_bytes(config: Any, itemsize: int, vocab_size: int | None = None) -> dict:
    """The trainer's peak for ``config`` (a Config): parameters, step, evaluation."""
    V = vocab_size or config.vocab_size
    H, L, B, T = config.hidden_size, config.num_layers, config.batch_size, config.num_steps
    params = param_elements(V, H, L) * itemsize
    step = step_elements(V, H, L, B, T, config.dropout, config.mode) * itemsize
    evals = max(eval_elements(V, H, L, B, T),
                eval_elements(V, H, L, config.test_batch_size, T)) * itemsize
    return {"params": params, "step": step, "eval": evals,
            "total": params + max(step, evals)}


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), if it is limited."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("\n")[0].split("::", 1)[1]
        d = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (d / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((d / "memory.current").read_text())
    except (OSError, ValueError, IndexError):
        return None


def available_bytes(backend: Any = None) -> int | None:
    """Memory this run can still take (see the module docstring); None if unknown."""
    if backend is not None and getattr(backend, "name", "cpu") == "gpu":
        try:
            return int(backend.xp.cuda.Device().mem_info[0])
        except Exception:  # noqa: BLE001 (a test double, a driver without the query)
            return None
    host = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    return min(host) if host else None


def human(n: float) -> str:
    """Bytes as people read them: 1,024 GiB, 298 GiB, 1.5 GiB, 220 MiB, 12 KiB."""
    if n >= 1000 * GiB:
        return f"{n / GiB:,.0f} GiB"
    if n >= GiB:
        return f"{n / GiB:.3g} GiB"
    if n >= MiB:
        return f"{n / MiB:.3g} MiB"
    return f"{n / 1024:.3g} KiB"


def require_memory(needed: int, what: str, fix: str, backend: Any = None) -> None:
    """Raise ResourceError if ``needed`` bytes exceed the memory available."""
    avail = available_bytes(backend)
    if avail is not None and needed > avail:
        where = "this GPU has" if getattr(backend, "name", "cpu") == "gpu" else \
            "this machine has"
        raise ResourceError(f"{what} needs ~{human(needed)}; {where} {human(avail)} "
                            f"available; {fix}")


def training_fix(config: Any, itemsize: int, vocab_size: int | None = None) -> str:
    """Which arguments to lower: the model's size, or the window's, whichever dominates."""
    est = training_bytes(config, itemsize, vocab_size)
    model = 2 * est["params"]                          # parameters and their gradients
    if model >= est["total"] - model:
        return "lower --hidden-size or --num-layers"
    return "lower --batch-size or --num-steps (or --test-batch-size)"


def check_training(config: Any, itemsize: int, vocab_size: int, backend: Any = None) -> None:
    """Refuse a training run whose peak memory exceeds what is available."""
    est = training_bytes(config, itemsize, vocab_size)
    require_memory(est["total"], f"training (H={config.hidden_size}, L={config.num_layers}, "
                   f"B={config.batch_size}, T={config.num_steps}, V={vocab_size})",
                   training_fix(config, itemsize, vocab_size), backend)


def check_windows(name: str, tokens: int, batch_size: int, num_steps: int,
                  fix: str) -> None:
    """Refuse a batch size and window that leave no full window in a stream of
    ``tokens`` words: each of the B rows needs T + 1 words (inputs and targets)."""
    per_row = tokens // batch_size if batch_size > 0 else 0
    if per_row < num_steps + 1:
        raise ResourceError(f"{name} has {tokens} words: {batch_size} rows of {per_row} "
                            f"leave no full window of {num_steps} steps (each row needs "
                            f"{num_steps + 1}, so at most {tokens // (num_steps + 1)} rows "
                            f"at this window); {fix}")
