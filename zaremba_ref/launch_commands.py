"""The commands ``ensemble train`` and ``sweep``: their arguments, the members they make,
and what they write at the end (``DIR/ensemble.json``, ``DIR/sweep.json``, the tables
and the plot). Training the members is :func:`zaremba_ref.launch.launch`'s job.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import PRESETS, Config, add_config_options
from .launch import (ENGINES, LaunchError, Member, check_ray_installed, launch, read_jsonl,
                     write_json)
from .rules import SEED, TEXT, add_option, count, one_of, real


def _unfinished(states: dict[str, str]) -> int:
    """0 if every member is done; else one line on stderr and 130 (interrupted or not yet
    reached: running again finishes them) or 1 (only failures)."""
    bad = {k: v for k, v in states.items() if v != "done"}
    if not bad:
        return 0
    listed = ", ".join(f"{k}: {v}" for k, v in bad.items())
    fix = ("fix the cause on the failed lines above, then run the same command again"
           if "failed" in bad.values() else "run the same command again to resume them")
    print(f"error: {len(bad)} member(s) not done ({listed}); {fix}", file=sys.stderr,
          flush=True)
    return 130 if {"interrupted", "queued"} & set(bad.values()) else 1   # queued: not reached


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
            records = read_jsonl(Path(m.run_dir) / "metrics.jsonl")
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
    """The options of both commands, each with its rule (zaremba_ref.rules)."""
    add_option(p, "--config", one_of(*sorted(PRESETS)), default="small",
               help="the paper's section 4.1 preset to start from (default: small)")
    add_option(p, "--seeds", SEED, nargs="+", metavar="S",
               help="one member per seed (ensemble default: 0 .. N-1; sweep: 0)")
    add_option(p, "--out", TEXT, metavar="DIR", required=True,
               help="the members' run directories go under DIR; with Ray on several "
                    "machines DIR must be on a filesystem every node sees")
    add_option(p, "--engine", one_of(*ENGINES), default="local", metavar="local|ray",
               help="local: in this process one after another, or --parallel K "
                    "subprocesses; ray: each member a Ray task (default: local)")
    add_option(p, "--parallel", count(1), default=1, metavar="K",
               help="local engine: K members side by side as subprocesses (with "
                    "--device gpu, one per visible device; default: 1)")
    add_option(p, "--address", TEXT, metavar="ADDR",
               help="ray engine: the cluster to connect to (e.g. ray://HEAD:10001 or "
                    "auto); default: start Ray on this machine, on 127.0.0.1")
    add_option(p, "--cpus-per-member", real(0, lo_open=True), default=1, metavar="C",
               help="ray engine: num_cpus of each member's task (default: 1)")
    add_option(p, "--gpus-per-member", real(0), default=0, metavar="G",
               help="ray engine: num_gpus of each member's task, with --device gpu "
                    "(default: 0 on the CPU, 1 with --device gpu)")
    add_option(p, "--max-retries", count(0), default=3, metavar="R",
               help="ray engine: rerun a member whose worker died up to R times; the "
                    "rerun resumes from its checkpoint (default: 3)")
    add_data_args(p)   # --device: where members train and where the final evaluation runs
    add_option(p, "--dtype", one_of("float32", "float64"), default="float32")
    add_option(p, "--max-steps", count(1), metavar="N",
               help="stop each member after N steps (smoke runs)")
    add_option(p, "--save-every", count(0), default=1000, metavar="N",
               help="each member also checkpoints every N steps (default: 1000)")
    add_option(p, "--train-fraction", real(0, 1, lo_open=True), default=1.0, metavar="F",
               help="train on the first fraction F of each of the batch-size streams "
                    "of PTB train (the placement study's budget: 0.25; default: 1)")
    g = p.add_argument_group("overrides of the preset, for every member")
    add_config_options(g)


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
    add_option(t, "--members", count(1), metavar="N",
               help="how many members (default: as many as --seeds)")
    _add_common(t, add_data_args)
    v = esub.add_parser(
        "evaluate", help="evaluate finished members of DIR and their average (a subset: "
                         "--members N)",
        description="Evaluate the finished members DIR/member-SEED that ensemble train "
                    "made (the first N by seed with --members N, or --seeds S ...), each "
                    "alone and the average of their probabilities, on valid and test: the "
                    "same JSON as ensemble train's DIR/ensemble.json, written to --write "
                    "(default DIR/ensemble-N.json), and the table. Trains nothing.")
    add_option(v, "dir", TEXT, metavar="DIR", help="the --out of ensemble train")
    add_option(v, "--members", count(1), metavar="N",
               help="the first N members by seed (default: every finished member)")
    add_option(v, "--seeds", SEED, nargs="+", metavar="S", help="these members instead")
    add_option(v, "--write", TEXT, metavar="FILE.json",
               help="where to write the JSON (default: DIR/ensemble-N.json)")
    add_data_args(v)

    s = sub.add_parser(
        "sweep", help="train a grid of settings (x seeds) and tabulate validation perplexity",
        description="Train one run per combination of the --set values and seed, each in "
                    "DIR/FIELD=VALUE,.../seed-SEED, then write DIR/sweep.json and a table "
                    "of validation perplexity per epoch (mean ± std over seeds) and test "
                    "perplexity. Run again to skip finished runs and resume the others.")
    add_option(s, "--set", TEXT, action="append", default=[], metavar="FIELD=V1,V2",
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


def finished_members(out: Path, seeds: Sequence[int] | None, n: int | None,
                     data_dir: str | None, verify_data: bool) -> list[Member]:
    """The members of ``out`` to evaluate: ``seeds``, or the first ``n`` finished ones by
    seed (all if None); finished = a done.json. Raises LaunchError if one is missing."""
    from .checkpoint import load_checkpoint
    runs = {int(d.name.split("-", 1)[1]): d for d in out.glob("member-*")
            if d.name.split("-", 1)[1].isdigit()}
    done = sorted(s for s, d in runs.items() if (d / "done.json").exists())
    wanted = list(seeds) if seeds is not None else done[:n]
    lacking = [s for s in wanted if s not in done]
    if lacking or not wanted or (n is not None and len(wanted) < n):
        what = f"member(s) {lacking} not finished" if lacking else f"{n or 1} wanted"
        raise LaunchError(f"{out}: {len(done)} finished member(s) (seeds {done}), {what}; "
                          "run ensemble train with this --out to train them")
    return [Member(name=f"member-{s}", run_dir=str(runs[s]), seed=s, setting={},
                   config=load_checkpoint(runs[s])[2]["config"], data_dir=data_dir,
                   verify_data=verify_data) for s in wanted]


def cmd_ensemble_evaluate(args: argparse.Namespace) -> int:
    """``ensemble evaluate``: a subset of finished members and their average."""
    out = Path(args.dir).resolve()
    members = finished_members(out, args.seeds, args.members,
                               str(Path(args.data_dir).resolve()) if args.data_dir else None,
                               not args.no_verify_data)
    result = evaluate_members(members, args.device)
    path = Path(args.write) if args.write else out / f"ensemble-{len(members)}.json"
    write_json(path, result)
    print(ensemble_table(result))
    print(f"written: {path}", flush=True)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    """``ensemble train``: train the members, then DIR/ensemble.json and the table."""
    if args.ensemble_command == "evaluate":
        return cmd_ensemble_evaluate(args)
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
    write_json(out / "ensemble.json", result)
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
    write_json(out / "sweep.json", summary)
    print(sweep_table(summary))
    if sweep_plot(summary, out / "sweep.png"):
        print(f"plot: {out / 'sweep.png'}")
    print(f"written: {out / 'sweep.json'}", flush=True)
    return 0
