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

The commands around it (arguments, the tables, ``ensemble.json``, ``sweep.json``) are
in :mod:`zaremba_ref.launch_commands`. A member directory holds, beside the trainer's
files (checkpoint.npz, metrics.jsonl, segments.jsonl):

    member.json     what defines it (configuration, seed, dtype, train fraction);
                    written before it first trains, and checked on every later run
    attempts.jsonl  one line per process that started it (time, host, pid, resume)
    train.log       the trainer's progress lines
    done.json       the trainer's summary, written once the member has finished

The state a progress line shows comes from those files alone (so it works for
members on other machines, given a shared ``--out``): queued (no attempt yet in this
command), running, retried (a second attempt: Ray restarted it), done, failed.

Ray is optional and imported only by :func:`import_ray` (for ``--engine ray``); the
rest needs numpy only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

import numpy as np

from .checkpoint import FILENAME
from .config import Config

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


def write_json(path: Path, obj: Any) -> None:
    """Atomically: a temporary file, then rename (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def finished(m: Member) -> dict | None:
    """The member's done.json if it has finished what is asked now, else None. A member
    stopped by --max-steps counts as finished only for the same or a smaller
    --max-steps: with a larger one, or none, it resumes."""
    try:
        done = json.loads((Path(m.run_dir) / "done.json").read_text())
    except FileNotFoundError:
        return None
    if done["status"] == "done":
        return done
    asked, reached = m.max_steps, done.get("max_steps")
    return done if asked is not None and reached is not None and asked <= reached else None


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
    done = finished(m)
    if done:
        return done
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
        write_json(run_dir / "done.json", dict(summary, max_steps=m.max_steps))
    return summary


# ---------------------------------------------------------------- what the files say

def read_jsonl(path: Path) -> list[dict]:
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
        self.before = {m.name: len(read_jsonl(Path(m.run_dir) / "attempts.jsonl"))
                       for m in members}
        self.failed: dict[str, str] = {}
        self.last: dict[str, str] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def state(self, m: Member) -> tuple[str, int, float | None]:
        """(state, epochs finished, last valid ppl) of member ``m``."""
        run = Path(m.run_dir)
        valid = [r["valid_ppl"] for r in read_jsonl(run / "metrics.jsonl") if "valid_ppl" in r]
        last = valid[-1] if valid else None
        if m.name in self.failed:
            return "failed", len(valid), last
        if finished(m):
            return "done", len(valid), last
        attempts = len(read_jsonl(run / "attempts.jsonl")) - self.before[m.name]
        return ("queued" if attempts == 0 else "running" if attempts == 1
                else "retried"), len(valid), last

    def line(self, m: Member, state: str, epochs: int, valid: float | None) -> str:
        max_epoch = m.config["max_epoch"]
        epoch = epochs if state == "done" else min(epochs + 1, max_epoch)
        text = f"{m.name:<{self.width}}  {state:<8}  epoch {epoch}/{max_epoch}"
        text += f"  valid ppl {valid:.2f}" if valid is not None else "  valid ppl -"
        if state == "retried":
            starts = [s for s in read_jsonl(Path(m.run_dir) / "segments.jsonl")
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


def _run_subprocesses(members: Sequence[Member], report: Reporter,
                      parallel: int) -> str | None:
    """Up to ``parallel`` members side by side, each in its own process
    (``python -m zaremba_ref.launch MEMBER_JSON``). With --device gpu, slot k gets
    the k-th visible device (CUDA_VISIBLE_DEVICES, else 0..parallel-1)."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    visible = visible or [str(k) for k in range(parallel)]
    queue, running, interrupted = list(members), {}, False
    signals: list[int] = []

    def forward(signum: int, frame: Any) -> None:      # each child saves and stops
        signals.append(signum)
        for _, p, _ in running.values():
            p.send_signal(signum)

    with _signals_call(forward, signal.SIGINT, signal.SIGTERM):
        while queue or running:
            interrupted = interrupted or bool(signals)
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
                if signals:                         # one that came during Popen
                    p.send_signal(signals[-1])
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
    return "interrupted" if interrupted or signals else None


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
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"     # and nothing reported outside
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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def _signals_call(handler: Any, *signums: int) -> Iterator[None]:
    """Call ``handler`` on these signals for the duration (in the main thread only:
    Python delivers signals there; elsewhere, as in a test's thread, do nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_ray(members: Sequence[Member], report: Reporter, address: str | None,
             cpus_per_member: float, gpus_per_member: float, max_retries: int) -> str | None:
    """Each member a Ray task with ``num_cpus``/``num_gpus`` and ``max_retries``: Ray
    reruns a task whose worker or node died (or whose worker got SIGTERM and saved),
    and the rerun resumes from the member's checkpoint. Uses the Ray instance this
    process already holds, else connects to ``address``, else starts one on this
    machine, on 127.0.0.1 only."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray_init(address)
    pending: list = []
    try:
        with _signals_call(_interrupt, signal.SIGTERM):   # SIGTERM as Ctrl-C: stop cleanly
            task = ray.remote(_ray_task)
            refs = {task.options(num_cpus=cpus_per_member, num_gpus=gpus_per_member,
                                 max_retries=max_retries, retry_exceptions=[MemberInterrupted],
                                 name=m.name).remote(m.to_dict()): m for m in members}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    try:
                        ray.get(ref)
                    except Exception as e:       # the task's error, or retries used up
                        cause = getattr(e, "cause", None) or e
                        report.fail(refs[ref].name,
                                    f"{type(cause).__name__}: {cause}".splitlines()[0])
        return None
    except KeyboardInterrupt:      # the members keep their last periodic checkpoints
        for ref in pending:
            ray.cancel(ref, force=True)
        return "interrupted"
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
        write_json(spec, m.to_dict())


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
    todo = [m for m in members if not finished(m)]
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
    if stop:            # those stopped mid-way; one never started is still queued
        states = {k: (v if v in ("done", "failed", "queued") else stop)
                  for k, v in states.items()}
    return {m.name: states.get(m.name, "done") for m in members}


def _member_main(argv: Sequence[str]) -> int:
    """``python -m zaremba_ref.launch DIR/member.json``: train that member (the local
    engine's subprocess); exit code 0, or 130/143 if stopped by SIGINT/SIGTERM."""
    from .cli import exit_code
    summary = run_member(json.loads(Path(argv[0]).read_text()))
    return exit_code(summary)


if __name__ == "__main__":  # pragma: no cover
    from .cli import run_cli
    sys.exit(run_cli(lambda: _member_main(sys.argv[1:])))
