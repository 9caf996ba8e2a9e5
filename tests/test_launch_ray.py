"""The Ray engine with a real Ray instance on 127.0.0.1 (skipped where ray is not
installed; CI installs it): members as tasks, and a worker killed mid-member (SIGKILL,
SIGTERM) that Ray retries and that resumes from its checkpoint to the same parameters,
bit for bit, as a member nobody killed. Every socket of Ray's processes is checked to
be on loopback, and no process Ray started outlives the tests."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from zaremba_ref.checkpoint import load_checkpoint
from zaremba_ref.cli import main
from zaremba_ref.config import Config
from zaremba_ref.launch import Member, launch, ray_init

from conftest import import_module_or_skip, write_toy_corpus

# read when ray is imported: a one-machine Ray on 127.0.0.1, never the machine's address
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ray = import_module_or_skip("ray", "ray is not installed: pip install -e \".[ray]\"")


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
ANY = {"00000000", "00000000000000000000000000000000"}


def _sockets(pids: set[int]) -> list[tuple[str, str, str, str]]:
    """(protocol, local address, remote address, state) of every TCP/UDP socket that
    the processes ``pids`` hold, addresses as /proc/net writes them (hex)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:       # gone, or a descriptor closed meanwhile
            continue
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                out.append((proto, f[1].split(":")[0], f[2].split(":")[0], f[3]))
    return out


def _off_loopback(pids: set[int]) -> list:
    """The sockets of these processes bound, or connected, to anything but loopback (a
    listening or unconnected socket has no remote address). None at all would mean
    that the check does not see Ray's: that is reported too."""
    socks = _sockets(pids)
    if not socks:
        return ["no socket seen"]
    return [s for s in socks if s[1] not in LOOPBACK or s[2] not in LOOPBACK | ANY]


@pytest.fixture(scope="module")
def local_ray():
    """Ray on this machine, 2 CPUs, bound to 127.0.0.1; shut down afterwards, and no
    process it started is left behind."""
    if not hasattr(os, "getpgid") or not Path("/proc").is_dir():
        pytest.skip("needs Linux's /proc to check what Ray leaves behind")
    old = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}
    os.environ["OPENBLAS_NUM_THREADS"] = "1"            # the workers inherit it
    before = _descendants(os.getpid())
    ray_init(num_cpus=2)
    try:
        nodes = ray.nodes()
        assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]   # loopback only
        assert _off_loopback(_descendants(os.getpid()) - before) == []
        yield ray
    finally:
        started = _descendants(os.getpid()) - before
        off_loopback = _off_loopback(started)     # the workers too, after the tests ran
        ray.shutdown()
        deadline = time.time() + 20
        while any(_alive(p) for p in started) and time.time() < deadline:
            time.sleep(0.2)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert not [p for p in started if _alive(p)], "Ray left processes behind"
        assert off_loopback == []


TINY = ["--no-verify-data", "--hidden-size", "12", "--batch-size", "4", "--num-steps", "5",
        "--max-epoch", "2", "--decay-start", "1", "--dropout", "0.3", "--init-scale", "0.3",
        "--save-every", "25"]


def test_two_members_as_ray_tasks_then_their_average(local_ray, toy_data, tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(["ensemble", "train", "--engine", "ray", "--members", "2", "--data-dir",
                 str(toy_data), "--out", str(out), *TINY]) == 0
    stdout = capsys.readouterr().out
    result = json.loads((out / "ensemble.json").read_text())
    assert [m["name"] for m in result["members"]] == ["member-0", "member-1"]
    assert result["ensemble"]["test_ppl"] < min(m["test_ppl"] for m in result["members"])
    assert "member-1  done      epoch 2/2" in stdout and "average of 2" in stdout
    for s in (0, 1):                  # each trained by a Ray worker, not by this process
        pids = [a["pid"] for a in map(json.loads, (out / f"member-{s}/attempts.jsonl")
                                      .read_text().splitlines())]
        assert len(pids) == 1 and pids[0] != os.getpid()
    # the same member as the local engine trains it, bit for bit: with one BLAS thread,
    # as the Ray workers (OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1) use
    with threadpool_limits(1, user_api="blas"):
        assert main(["ensemble", "train", "--seeds", "1", "--data-dir", str(toy_data),
                     "--out", str(tmp_path / "local"), *TINY]) == 0
    a, b = (load_checkpoint(d / "member-1")[0] for d in (out, tmp_path / "local"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_worker_killed_mid_member_is_retried_and_resumes_bit_for_bit(local_ray, tmp_path,
                                                                       sig):
    """Two identical members side by side; SIGKILL (a lost worker) or SIGTERM (a node
    drained: the trainer saves, the task fails so that Ray retries it) to the worker
    process training one of them, after its first checkpoint. Ray reruns the task; the
    rerun resumes from the checkpoint, not from step 0, and ends with the other
    member's parameters."""
    data = write_toy_corpus(tmp_path / "big", words_per_split=(30_000, 2_000, 2_000))
    config = Config(hidden_size=12, batch_size=4, num_steps=5, max_epoch=2, decay_start=1,
                    dropout=0.3, init_scale=0.3, vocab_size=40)
    members = [Member(name=name, run_dir=str(tmp_path / name), config=config.to_dict(), seed=3,
                      setting={}, data_dir=str(data), verify_data=False, save_every=25)
               for name in ("victim", "witness")]
    log = tmp_path / "progress.txt"
    states: dict = {}

    def run() -> None:
        with open(log, "w") as f:
            states.update(launch(members, "ray", max_retries=2, out=f, interval=0.2))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        victim = tmp_path / "victim"
        deadline = time.time() + 120
        while not (victim / "checkpoint.npz").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        pid = json.loads((victim / "attempts.jsonl").read_text().splitlines()[0])["pid"]
        # only a process this test started: a Ray worker below this process
        assert pid != os.getpid() and pid in _descendants(os.getpid())
        killed_at = load_checkpoint(victim)[2]["global_step"]
        os.kill(pid, sig)
    finally:
        thread.join(timeout=240)
    assert not thread.is_alive() and states == {"victim": "done", "witness": "done"}
    attempts = [json.loads(x) for x in (victim / "attempts.jsonl").read_text().splitlines()]
    assert [a["resume"] for a in attempts] == [False, True]
    assert attempts[1]["pid"] != pid or sig == signal.SIGTERM    # that worker survives it
    segments = [json.loads(x) for x in (victim / "segments.jsonl").read_text().splitlines()]
    starts = [s for s in segments if s["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resume"]
    assert starts[1]["global_step"] >= killed_at > 0          # did not restart from step 0
    assert segments[-1]["status"] == "done"
    retried = [line.split() for line in log.read_text().splitlines() if "retried" in line]
    assert retried and all(r[:2] == ["victim", "retried"] for r in retried)
    assert f"(resumed at step {starts[1]['global_step']})" in log.read_text()
    a, b = (load_checkpoint(tmp_path / n)[0] for n in ("victim", "witness"))
    assert all(np.array_equal(a[k], b[k]) for k in a)         # bit for bit
    # the command run again: both finished, nothing is trained
    with open(log, "w") as f:
        assert launch(members, "ray", out=f) == {"victim": "done", "witness": "done"}
    assert "victim  done earlier: skipped" in log.read_text()
    assert len((victim / "attempts.jsonl").read_text().splitlines()) == 2
