"""Many training runs of the one trainer: Table 1's ensembles and grids of settings.

    python -m zaremba_ref ensemble train --config small --members 2 --out runs/ens
    python -m zaremba_ref sweep --config small --set mode=none,naive,zaremba \\
        --seeds 0 1 2 --out runs/sweep

Each *member* is a normal run directory trained by :func:`zaremba_ref.train.train`
with its usual checkpoints; this module only decides which members to train where,
watches their files, and sums up. It is no scheduler: members run one after another
in this process, side by side as subprocesses (``--engine local``), or as tasks of an
existing distributed engine, Ray (``--engine ray``), that places them on CPUs and GPUs
and retries a task whose worker died. A member always continues from its own
checkpoint when one exists, so a retried member, or one whose command is run again,
resumes where it stopped (bit for bit on the CPU) instead of starting over.

A member directory holds, beside the trainer's files (checkpoint.npz, metrics.jsonl,
segments.jsonl):

    member.json     what defines it (configuration, seed, dtype, train fraction);
                    written before it first trains, and checked on every later run
    attempts.jsonl  one line per process that started it (time, host, pid, resume)
    train.log       the trainer's progress lines
    done.json       the trainer's summary, written once the member has finished

The state a progress line shows comes from those files alone (so it works for
members on other machines, given a shared ``--out``): queued (no attempt yet in this
command), running, retried (a second attempt: Ray restarted it), done, failed.

Ray is optional and imported only inside :func:`_run_ray`; the rest needs numpy only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np

from .checkpoint import FILENAME
from .config import HELP, PRESETS, Config

ENGINES = ("local", "ray")
RAY_INSTALL = 'pip install -e ".[ray]"  (or: pip install "ray>=2.9")'
IDENTITY = ("config", "seed", "dtype", "train_fraction")   # what member.json pins


class LaunchError(ValueError):
    """A launch that cannot start (a bad --set, an unknown engine, a member directory
    holding another run); one line naming the problem and the fix (exit code 2)."""


@dataclass(frozen=True)
class Member:
    """One training run of an ensemble or a sweep (JSON-able, sent to the workers)."""

    name: str                    # how progress lines and tables call it
    run_dir: str                 # absolute: the workers' working directory differs
    config: dict                 # Config.to_dict()
    seed: int
    setting: dict                # the swept fields and their values ({} in an ensemble)
    dtype: str = "float32"
    device: str = "cpu"
    data_dir: str | None = None
    verify_data: bool = True
    save_every: int = 1000
    max_steps: int | None = None
    train_fraction: float = 1.0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------- one member, anywhere

def train_subset(stream: np.ndarray, batch_size: int, num_steps: int,
                 fraction: float) -> np.ndarray:
    """The first ``fraction`` of each of the ``batch_size`` streams of ``stream``, as one
    stream again (so that ``batchify`` lays it out in the same rows). The placement
    study's budget (examples/dropout_placement.py --train-fraction)."""
    if fraction >= 1:
        return stream
    from .data import batchify
    data = batchify(stream, batch_size)                          # (B, N / B)
    cols = max(num_steps + 1, round(data.shape[1] * fraction))
    return np.ascontiguousarray(data[:, :cols]).reshape(-1)


def _append_json(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    """Atomically: a temporary file, then rename (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def run_member(member: dict) -> dict:
    """Train one member to its end in this process and return the trainer's summary.

    Resumes from the member's checkpoint when there is one (a retry, or the command
    run again); does nothing for a finished member. This is what a local subprocess
    and a Ray task run.
    """
    from .backend import get_backend
    from .data import load_ptb
    from .train import train
    m = Member(**member)
    run_dir = Path(m.run_dir)
    done = run_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = (run_dir / FILENAME).exists()
    _append_json(run_dir / "attempts.jsonl", {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(), "pid": os.getpid(), "resume": resume})
    config = Config.from_dict(m.config)
    corpus = load_ptb(m.data_dir, verify=m.verify_data)
    if m.train_fraction < 1:
        corpus.train = train_subset(corpus.train, config.batch_size, config.num_steps,
                                    m.train_fraction)
    with open(run_dir / "train.log", "a") as log:
        summary = train(config, corpus, run_dir, backend=get_backend(m.device), dtype=m.dtype,
                        seed=m.seed, resume=resume, max_steps=m.max_steps,
                        save_every=m.save_every, out=log)
    summary = {"name": m.name, "seed": m.seed, "setting": m.setting, **summary}
    if summary["status"] in ("done", "max_steps"):
        _write_json(done, summary)
    return summary


# ---------------------------------------------------------------- what the files say

def _lines(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:        # a line being written right now
            pass
    return out


class Reporter:
    """Prints one line per member whenever its state or epoch changes, from the
    member's files (attempts.jsonl, metrics.jsonl, done.json); polled by a thread."""

    def __init__(self, members: Sequence[Member], out: TextIO, interval: float = 1.0):
        self.members, self.out, self.interval = list(members), out, interval
        self.width = max(len(m.name) for m in members)
        # attempts made before this command: a later one is this command's
        self.before = {m.name: len(_lines(Path(m.run_dir) / "attempts.jsonl"))
                       for m in members}
        self.failed: dict[str, str] = {}
        self.last: dict[str, str] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def state(self, m: Member) -> tuple[str, int, float | None]:
        """(state, epochs finished, last valid ppl) of member ``m``."""
        run = Path(m.run_dir)
        valid = [r["valid_ppl"] for r in _lines(run / "metrics.jsonl") if "valid_ppl" in r]
        last = valid[-1] if valid else None
        if m.name in self.failed:
            return "failed", len(valid), last
        if (run / "done.json").exists():
            return "done", len(valid), last
        attempts = len(_lines(run / "attempts.jsonl")) - self.before[m.name]
        return ("queued" if attempts == 0 else "running" if attempts == 1
                else "retried"), len(valid), last

    def line(self, m: Member, state: str, epochs: int, valid: float | None) -> str:
        max_epoch = m.config["max_epoch"]
        epoch = epochs if state == "done" else min(epochs + 1, max_epoch)
        text = f"{m.name:<{self.width}}  {state:<8}  epoch {epoch}/{max_epoch}"
        text += f"  valid ppl {valid:.2f}" if valid is not None else "  valid ppl -"
        if state == "retried":
            starts = [s for s in _lines(Path(m.run_dir) / "segments.jsonl")
                      if s.get("event") == "start"]
            if starts and starts[-1].get("resume"):
                text += f"  (resumed at step {starts[-1]['global_step']})"
        if state == "failed":
            text += f"  ({self.failed[m.name]})"
        if state == "done" and epochs < max_epoch:
            text += "  (stopped at --max-steps)"
        return text

    def poll(self) -> None:
        with self.lock:
            for m in self.members:
                line = self.line(m, *self.state(m))
                if self.last.get(m.name) != line:
                    self.last[m.name] = line
                    print(line, file=self.out, flush=True)

    def fail(self, name: str, why: str) -> None:
        self.failed[name] = " ".join(why.split())[:300]
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "Reporter":
        self.poll()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


# ---------------------------------------------------------------- engines

def _run_in_process(members: Sequence[Member], report: Reporter) -> str | None:
    """One member after another in this process; stops at a SIGINT/SIGTERM (the
    trainer saves a checkpoint) and returns "interrupted"."""
    from .train import TrainingError
    from .checkpoint import CheckpointError
    for m in members:
        try:
            summary = run_member(m.to_dict())
        except (TrainingError, CheckpointError, ValueError) as e:
            report.fail(m.name, str(e))
            continue
        if summary["status"] == "interrupted":
            return "interrupted"
    return None


def _worker_env(extra: dict | None = None) -> dict:
    """This process's environment with this copy of the package first on the path."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""),
                **(extra or {}))


def _run_subprocesses(members: Sequence[Member], report: Reporter, parallel: int) -> str | None:
    """Up to ``parallel`` members side by side, each in its own process
    (``python -m zaremba_ref.launch MEMBER_JSON``). With --device gpu, slot k gets
    the k-th visible device (CUDA_VISIBLE_DEVICES, else 0..parallel-1)."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    visible = visible or [str(k) for k in range(parallel)]
    queue, running, interrupted = list(members), {}, False
    try:
        while queue or running:
            free = [k for k in range(parallel) if k not in running]
            while queue and free and not interrupted:
                m, slot = queue.pop(0), free.pop(0)
                spec = Path(m.run_dir) / "member.json"
                extra = {"CUDA_VISIBLE_DEVICES": visible[slot % len(visible)]} \
                    if m.device == "gpu" else {}
                log = open(Path(m.run_dir) / "worker.log", "a")
                p = subprocess.Popen([sys.executable, "-m", "zaremba_ref.launch", str(spec)],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     env=_worker_env(extra))
                running[slot] = (m, p, log)
            if interrupted and not running:
                break
            time.sleep(0.2)
            for slot, (m, p, log) in list(running.items()):
                if p.poll() is None:
                    continue
                log.close()
                del running[slot]
                if p.returncode in (130, 143):
                    interrupted = True
                elif p.returncode != 0:
                    tail = (Path(m.run_dir) / "worker.log").read_text().strip().splitlines()
                    report.fail(m.name, f"exit code {p.returncode}: "
                                        f"{tail[-1] if tail else 'no output'}")
    except KeyboardInterrupt:   # Ctrl-C reached the children too: they save and stop
        for m, p, log in running.values():
            p.wait()
            log.close()
        interrupted = True
    return "interrupted" if interrupted else None


def check_ray_installed() -> None:
    """A LaunchError with the install command where ray is missing (without importing
    it: ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported)."""
    import importlib.util
    if importlib.util.find_spec("ray") is None:
        raise LaunchError(f"--engine ray needs Ray, which is not installed: {RAY_INSTALL}")


def import_ray() -> Any:
    """The ray module, or a LaunchError with the install command."""
    check_ray_installed()
    try:
        import ray
    except ImportError as e:
        raise LaunchError(f"--engine ray: importing ray failed ({e}); reinstall it: "
                          f"{RAY_INSTALL}") from None
    return ray


def ray_init(address: str | None = None, **kwargs: Any) -> Any:
    """Connect to the Ray cluster at ``address``, or start Ray on this machine bound to
    127.0.0.1 only (no dashboard). The workers import this copy of the package (sent
    to the cluster as a runtime_env py_module), so every node runs the driver's code.
    ``kwargs`` go to ``ray.init`` (e.g. ``num_cpus``). Returns the ray module."""
    if not address:   # read when ray is imported: 0 keeps a one-machine Ray on loopback
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = import_ray()
    runtime_env = {"py_modules": [str(Path(__file__).resolve().parent)]}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, **kwargs)
        return ray
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env=runtime_env, log_to_driver=False, **kwargs)
    ips = sorted({n["NodeManagerAddress"] for n in ray.nodes()})
    if ips != ["127.0.0.1"]:
        ray.shutdown()
        raise LaunchError(f"the local Ray instance bound to {', '.join(ips)}, not 127.0.0.1: "
                          "ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was "
                          "set; set it in the environment")
    return ray


class MemberInterrupted(Exception):
    """A member's process got SIGINT/SIGTERM and saved a checkpoint (a node being
    drained or preempted): the Ray task fails with this so that Ray retries it."""


def _ray_task(member: dict) -> dict:
    """A Ray task: train one member (resuming from its checkpoint after a retry)."""
    summary = run_member(member)
    if summary["status"] == "interrupted":
        raise MemberInterrupted(f"{member['name']}: stopped by signal {summary['signal']}, "
                                "checkpoint saved")
    return summary


def _run_ray(members: Sequence[Member], report: Reporter, address: str | None,
             cpus_per_member: float, gpus_per_member: float, max_retries: int) -> str | None:
    """Each member a Ray task with ``num_cpus``/``num_gpus`` and ``max_retries``: Ray
    reruns a task whose worker or node died (or whose worker got SIGTERM and saved),
    and the rerun resumes from the member's checkpoint. Uses the Ray instance this process already holds, else connects to
    ``address``, else starts one on this machine, on 127.0.0.1 only."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray_init(address)
    try:
        task = ray.remote(_ray_task)
        refs = {task.options(num_cpus=cpus_per_member, num_gpus=gpus_per_member,
                             max_retries=max_retries, retry_exceptions=[MemberInterrupted],
                             name=m.name).remote(m.to_dict()): m for m in members}
        interrupted = False
        pending = list(refs)
        while pending:
            try:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            except KeyboardInterrupt:   # the members keep their last periodic checkpoints
                for ref in pending:
                    ray.cancel(ref, force=True)
                return "interrupted"
            for ref in ready:
                m = refs[ref]
                try:
                    summary = ray.get(ref)
                except Exception as e:       # the task's error, or retries used up
                    cause = getattr(e, "cause", None) or e
                    report.fail(m.name, f"{type(cause).__name__}: {cause}".splitlines()[0])
                    continue
                interrupted |= summary["status"] == "interrupted"
        return "interrupted" if interrupted else None
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- launching

def prepare(members: Sequence[Member]) -> None:
    """Create each member's directory and member.json; refuse a directory that holds
    another run (other configuration, seed, dtype or train fraction)."""
    for m in members:
        run = Path(m.run_dir)
        spec = run / "member.json"
        if spec.exists():
            old = json.loads(spec.read_text())
            diff = [f"{k}: {old.get(k)!r} there vs {getattr(m, k)!r} now" for k in IDENTITY
                    if k != "config" and old.get(k) != getattr(m, k)]
            diff += [f"{k}: {old['config'].get(k)!r} there vs {v!r} now"
                     for k, v in m.config.items() if old.get("config", {}).get(k) != v]
            if diff:
                raise LaunchError(f"{run} holds another run ({'; '.join(diff)}); use the "
                                  "original settings or another --out")
        run.mkdir(parents=True, exist_ok=True)
        _write_json(spec, m.to_dict())


def launch(members: Sequence[Member], engine: str = "local", *, parallel: int = 1,
           address: str | None = None, cpus_per_member: float = 1,
           gpus_per_member: float = 0, max_retries: int = 3,
           out: TextIO | None = None, interval: float = 1.0) -> dict[str, str]:
    """Train every unfinished member with ``engine``; returns {name: final state}
    (done, failed, interrupted, ...), after printing one line per member change."""
    out = out or sys.stdout
    if engine not in ENGINES:
        raise LaunchError(f"unknown engine {engine!r}; use --engine local or --engine ray")
    prepare(members)
    todo = [m for m in members if not (Path(m.run_dir) / "done.json").exists()]
    for m in members:
        if m not in todo:
            print(f"{m.name}  done earlier: skipped", file=out, flush=True)
    if not todo:
        return {m.name: "done" for m in members}
    with Reporter(todo, out, interval) as report:
        if engine == "ray":
            stop = _run_ray(todo, report, address, cpus_per_member, gpus_per_member,
                            max_retries)
        elif parallel > 1:
            stop = _run_subprocesses(todo, report, parallel)
        else:
            stop = _run_in_process(todo, report)
    states = {m.name: report.state(m)[0] for m in todo}
    if stop:
        states = {k: (v if v in ("done", "failed") else stop) for k, v in states.items()}
    return {m.name: states.get(m.name, "done") for m in members}


def _unfinished(states: dict[str, str]) -> int:
    """0 if every member is done; else one line on stderr and 130 (interrupted) or 1."""
    bad = {k: v for k, v in states.items() if v != "done"}
    if not bad:
        return 0
    print(f"error: {len(bad)} member(s) not done ({', '.join(f'{k}: {v}' for k, v in bad.items())}"
          "); run the same command again to resume them", file=sys.stderr, flush=True)
    return 130 if "interrupted" in bad.values() else 1


# ---------------------------------------------------------------- summing up

def evaluate_members(members: Sequence[Member], device: str = "cpu") -> dict:
    """Each member alone and the average of their predicted probabilities (Table 1's
    model averaging, :func:`zaremba_ref.ensemble.evaluate_ensemble`), on valid and
    test, with the first member's batching (its batch size for valid, its test batch
    size for test)."""
    from .backend import get_backend
    from .checkpoint import load_checkpoint
    from .data import load_ptb
    from .ensemble import evaluate_ensemble
    backend = get_backend(device)
    first = members[0]
    corpus = load_ptb(first.data_dir, verify=first.verify_data)
    params = [{k: backend.asarray(v) for k, v in load_checkpoint(m.run_dir)[0].items()}
              for m in members]
    config = Config.from_dict(first.config)
    rows = [{"name": m.name, "seed": m.seed, "run_dir": m.run_dir} for m in members]
    result = {"config": first.config, "members": rows, "ensemble": {}}
    for split, B in (("valid", config.batch_size), ("test", config.test_batch_size)):
        r = evaluate_ensemble(params, getattr(corpus, split), B, config.num_steps, backend)
        result["ensemble"][f"{split}_ppl"] = r.perplexity
        for row, ppl in zip(rows, r.member_perplexities):
            row[f"{split}_ppl"] = ppl
    return result


def ensemble_table(result: dict) -> str:
    rows = result["members"]
    width = max(len("average of 00"), *(len(r["name"]) for r in rows))
    lines = [f"{'':<{width}}  {'valid ppl':>10}  {'test ppl':>10}"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {r['valid_ppl']:>10.2f}  {r['test_ppl']:>10.2f}")
    e = result["ensemble"]
    lines.append(f"{'average of ' + str(len(rows)):<{width}}  {e['valid_ppl']:>10.2f}  "
                 f"{e['test_ppl']:>10.2f}")
    return "\n".join(lines)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def sweep_summary(groups: dict[str, list[Member]]) -> dict:
    """Per setting: each seed's validation perplexity per epoch and final test
    perplexity (from its metrics.jsonl), and their mean and standard deviation."""
    settings = []
    for label, members in groups.items():
        runs = []
        for m in members:
            records = _lines(Path(m.run_dir) / "metrics.jsonl")
            test = [r["test_ppl"] for r in records if "test_ppl" in r]
            runs.append({"seed": m.seed, "run_dir": m.run_dir,
                         "valid_ppl": [r["valid_ppl"] for r in records if "valid_ppl" in r],
                         "test_ppl": test[-1] if test else None})
        epochs = min(len(r["valid_ppl"]) for r in runs)
        per_epoch = [_mean_std([r["valid_ppl"][e] for r in runs]) for e in range(epochs)]
        tests = [r["test_ppl"] for r in runs if r["test_ppl"] is not None]
        test = _mean_std(tests) if len(tests) == len(runs) else (None, None)
        settings.append({"label": label, "setting": members[0].setting,
                         "seeds": [m.seed for m in members], "runs": runs,
                         "valid_ppl_mean": [s[0] for s in per_epoch],
                         "valid_ppl_std": [s[1] for s in per_epoch],
                         "test_ppl_mean": test[0], "test_ppl_std": test[1]})
    return {"settings": settings}


def sweep_table(summary: dict) -> str:
    """Validation perplexity per epoch, mean ± std over the seeds, one column per
    setting; then the test perplexity the same way."""
    settings = summary["settings"]
    w = max(22, *(len(s["label"]) + 2 for s in settings))
    n = {len(s["seeds"]) for s in settings}
    lines = [f"validation perplexity per epoch, mean ± std over "
             f"{'/'.join(map(str, sorted(n)))} seed(s)",
             "epoch " + "".join(s["label"].rjust(w) for s in settings)]
    for e in range(max(len(s["valid_ppl_mean"]) for s in settings)):
        cells = [f"{s['valid_ppl_mean'][e]:.2f} ± {s['valid_ppl_std'][e]:.2f}"
                 if e < len(s["valid_ppl_mean"]) else "" for s in settings]
        lines.append(f"{e + 1:<6d}" + "".join(c.rjust(w) for c in cells))
    cells = [f"{s['test_ppl_mean']:.2f} ± {s['test_ppl_std']:.2f}"
             if s["test_ppl_mean"] is not None else "-" for s in settings]
    lines.append("test  " + "".join(c.rjust(w) for c in cells))
    return "\n".join(lines)


def sweep_plot(summary: dict, path: Path) -> bool:
    """Validation perplexity per epoch with ±1 std error bars, if matplotlib is there."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summary["settings"]:
        epochs = range(1, len(s["valid_ppl_mean"]) + 1)
        ax.errorbar(list(epochs), s["valid_ppl_mean"], yerr=s["valid_ppl_std"], marker="o",
                    capsize=3, label=s["label"])
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation perplexity (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- command line

def parse_settings(specs: Sequence[str]) -> list[dict]:
    """``["dropout=0,0.5", "mode=zaremba,naive"]`` -> the grid, as a list of dicts of
    Config fields (values converted to the field's type), first key varying slowest."""
    types = {f.name: type(f.default) for f in fields(Config)}
    grid: dict[str, list] = {}
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key or not values.strip():
            raise LaunchError(f"--set {spec!r}: write FIELD=V1,V2,... (e.g. "
                              "--set dropout=0,0.25,0.5)")
        if key == "seed":
            raise LaunchError("--set seed=...: seeds are not a setting; use --seeds 0 1 2")
        if key not in types:
            raise LaunchError(f"--set {spec!r}: unknown field {key!r}; one of "
                              f"{', '.join(types)}")
        if key in grid:
            raise LaunchError(f"--set {key} given twice; list every value once: "
                              f"--set {key}=V1,V2")
        parsed = []
        for v in values.split(","):
            try:
                parsed.append(types[key](v.strip()))
            except ValueError:
                raise LaunchError(f"--set {spec!r}: {v.strip()!r} is not a "
                                  f"{types[key].__name__} (for {key})") from None
        if len(set(parsed)) != len(parsed):
            raise LaunchError(f"--set {spec!r}: a value is listed twice")
        grid[key] = parsed
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def _label(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items())


def _add_common(p: argparse.ArgumentParser, add_data_args: Callable) -> None:
    p.add_argument("--config", choices=sorted(PRESETS), default="small",
                   help="the paper's section 4.1 preset to start from (default: small)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="one member per seed (ensemble default: 0 .. N-1; sweep: 0)")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="the members' run directories go under DIR; with Ray on several "
                        "machines DIR must be on a filesystem every node sees")
    p.add_argument("--engine", default="local", metavar="local|ray",
                   help="local: in this process one after another, or --parallel K "
                        "subprocesses; ray: each member a Ray task (default: local)")
    p.add_argument("--parallel", type=int, default=1, metavar="K",
                   help="local engine: K members side by side as subprocesses (with "
                        "--device gpu, one per visible device; default: 1)")
    p.add_argument("--address", metavar="ADDR",
                   help="ray engine: the cluster to connect to (e.g. ray://HEAD:10001 or "
                        "auto); default: start Ray on this machine, on 127.0.0.1")
    p.add_argument("--cpus-per-member", type=float, default=1, metavar="C",
                   help="ray engine: num_cpus of each member's task (default: 1)")
    p.add_argument("--gpus-per-member", type=float, default=0, metavar="G",
                   help="ray engine: num_gpus of each member's task, with --device gpu "
                        "(default: 0 on the CPU, 1 with --device gpu)")
    p.add_argument("--max-retries", type=int, default=3, metavar="R",
                   help="ray engine: rerun a member whose worker died up to R times; the "
                        "rerun resumes from its checkpoint (default: 3)")
    add_data_args(p)   # --device: where members train and where the final evaluation runs
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--max-steps", type=int, metavar="N",
                   help="stop each member after N steps (smoke runs)")
    p.add_argument("--save-every", type=int, default=1000, metavar="N",
                   help="each member also checkpoints every N steps (default: 1000)")
    p.add_argument("--train-fraction", type=float, default=1.0, metavar="F",
                   help="train on the first fraction F of each of the batch-size streams "
                        "of PTB train (the placement study's budget: 0.25; default: 1)")
    g = p.add_argument_group("overrides of the preset, for every member")
    for f in fields(Config):
        g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                       metavar=f.name.upper(), help=HELP[f.name])


def add_launch_parsers(sub: Any, add_data_args: Callable) -> None:
    """``ensemble train`` and ``sweep``, for zaremba_ref.cli's parser."""
    e = sub.add_parser("ensemble", help="train the members of an ensemble (Table 1's "
                                        "model averaging) and evaluate their average")
    esub = e.add_subparsers(dest="ensemble_command", required=True, metavar="COMMAND")
    t = esub.add_parser(
        "train", help="train N members (one per seed) and evaluate them and their average",
        description="Train one member per seed, each a normal run directory DIR/member-SEED "
                    "with its checkpoints, then evaluate each member and the average of "
                    "their probabilities on valid and test: DIR/ensemble.json and a table. "
                    "Run again to skip finished members and resume unfinished ones.")
    t.add_argument("--members", type=int, metavar="N",
                   help="how many members (default: as many as --seeds)")
    _add_common(t, add_data_args)

    s = sub.add_parser(
        "sweep", help="train a grid of settings (x seeds) and tabulate validation perplexity",
        description="Train one run per combination of the --set values and seed, each in "
                    "DIR/FIELD=VALUE,.../seed-SEED, then write DIR/sweep.json and a table "
                    "of validation perplexity per epoch (mean ± std over seeds) and test "
                    "perplexity. Run again to skip finished runs and resume the others.")
    s.add_argument("--set", action="append", default=[], metavar="FIELD=V1,V2",
                   dest="settings", help="a configuration field and its values (repeat "
                                         "for a grid), e.g. --set mode=none,naive,zaremba")
    _add_common(s, add_data_args)


def _base(args: argparse.Namespace) -> tuple[Config, dict]:
    """The preset with the explicit overrides, and the member fields shared by all."""
    changes = {f.name: getattr(args, f.name) for f in fields(Config)
               if getattr(args, f.name) is not None}
    if args.engine not in ENGINES:
        raise LaunchError(f"unknown engine {args.engine!r}; use --engine local or "
                          "--engine ray")
    for name in ("parallel", "max_steps", "max_retries"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "max_retries" else 1):
            raise LaunchError(f"--{name.replace('_', '-')} must be >= "
                              f"{0 if name == 'max_retries' else 1}, got {v}")
    if args.save_every < 0:
        raise LaunchError(f"--save-every must be >= 0, got {args.save_every}")
    if not 0 < args.train_fraction <= 1:
        raise LaunchError(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
    if args.cpus_per_member <= 0 or args.gpus_per_member < 0:
        raise LaunchError("--cpus-per-member must be > 0 and --gpus-per-member >= 0")
    if args.engine == "local" and args.gpus_per_member:
        raise LaunchError("--gpus-per-member is for --engine ray; locally use --device gpu "
                          "(and --parallel K for K devices)")
    if args.gpus_per_member and args.device != "gpu":
        raise LaunchError("--gpus-per-member needs --device gpu")
    if args.engine == "ray" and args.device == "gpu" and not args.gpus_per_member:
        args.gpus_per_member = 1      # Ray must reserve the device a member trains on
    if args.engine == "ray":
        check_ray_installed()         # before anything starts: one line if it is missing
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise LaunchError(f"--seeds lists a seed twice: {args.seeds}")
    shared = {"dtype": args.dtype, "device": args.device,
              "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
              "verify_data": not args.no_verify_data, "save_every": args.save_every,
              "max_steps": args.max_steps, "train_fraction": args.train_fraction}
    return PRESETS[args.config].replace(**changes), shared


def _vocab_size(shared: dict) -> int:
    from .data import load_ptb
    return load_ptb(shared["data_dir"], verify=shared["verify_data"]).vocab_size


def _engine_options(args: argparse.Namespace) -> dict:
    return {"parallel": args.parallel, "address": args.address,
            "cpus_per_member": args.cpus_per_member, "gpus_per_member": args.gpus_per_member,
            "max_retries": args.max_retries}


def cmd_ensemble(args: argparse.Namespace) -> int:
    """``ensemble train``: train the members, then DIR/ensemble.json and the table."""
    config, shared = _base(args)
    if args.members is None and args.seeds is None:
        raise LaunchError("say how many members: --members N (seeds 0..N-1) or --seeds S ...")
    seeds = args.seeds if args.seeds is not None else list(range(args.members))
    if args.members is not None and (args.members < 1 or len(seeds) != args.members):
        raise LaunchError(f"--members {args.members} but {len(seeds)} seed(s) in --seeds; "
                          "give one seed per member")
    config = config.replace(vocab_size=_vocab_size(shared)).validate()
    out = Path(args.out).resolve()
    members = [Member(name=f"member-{s}", run_dir=str(out / f"member-{s}"),
                      config=config.to_dict(), seed=s, setting={}, **shared) for s in seeds]
    states = launch(members, args.engine, **_engine_options(args))
    code = _unfinished(states)
    if code:
        return code
    result = evaluate_members(members, args.device)
    _write_json(out / "ensemble.json", result)
    print(ensemble_table(result))
    print(f"written: {out / 'ensemble.json'}", flush=True)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``sweep``: train the grid x seeds, then DIR/sweep.json, the table (and plot)."""
    config, shared = _base(args)
    if not args.settings:
        raise LaunchError("a sweep needs at least one --set FIELD=V1,V2,...")
    grid = parse_settings(args.settings)
    seeds = args.seeds if args.seeds is not None else [0]
    vocab = _vocab_size(shared)
    out = Path(args.out).resolve()
    groups: dict[str, list[Member]] = {}
    for setting in grid:                                # check every setting first
        try:
            c = config.replace(vocab_size=vocab, **setting).validate()
        except ValueError as e:
            raise LaunchError(f"--set {_label(setting)}: {e}") from None
        label = _label(setting)
        groups[label] = [Member(name=f"{label}/seed-{s}", run_dir=str(out / label / f"seed-{s}"),
                                config=c.to_dict(), seed=s, setting=setting, **shared)
                         for s in seeds]
    members = [m for ms in groups.values() for m in ms]
    code = _unfinished(launch(members, args.engine, **_engine_options(args)))
    if code:
        return code
    summary = sweep_summary(groups)
    _write_json(out / "sweep.json", summary)
    print(sweep_table(summary))
    if sweep_plot(summary, out / "sweep.png"):
        print(f"plot: {out / 'sweep.png'}")
    print(f"written: {out / 'sweep.json'}", flush=True)
    return 0


def _member_main(argv: Sequence[str]) -> int:
    """``python -m zaremba_ref.launch DIR/member.json``: train that member (the local
    engine's subprocess); exit code 0, or 130/143 if stopped by SIGINT/SIGTERM."""
    from .cli import exit_code
    summary = run_member(json.loads(Path(argv[0]).read_text()))
    return exit_code(summary)


if __name__ == "__main__":  # pragma: no cover
    from .cli import run_cli
    sys.exit(run_cli(lambda: _member_main(sys.argv[1:])))
