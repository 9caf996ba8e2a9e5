"""Print the mutation score by file from mutmut's results in mutants/ (after
``bash benchmarks/mutation.sh``): killed / total, the survivors by name.

    python benchmarks/mutation_score.py ['zaremba_ref.optim.*' ...]   # only these mutants

killed counts pytest failures and timeouts (a mutant that hangs the code is caught);
"no tests" means no selected test reaches the function, and counts as a survivor.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import defaultdict
from pathlib import Path

KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout",
          152: "timeout", 255: "timeout", 37: "type check"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}


def main(patterns: list[str]) -> int:
    root = Path("mutants")
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print("no results: run benchmarks/mutation.sh first", file=sys.stderr)
        return 2
    rows, survivors = defaultdict(lambda: [0, 0, 0]), []
    for meta in metas:
        name = str(meta.relative_to(root))[: -len(".meta")]
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if patterns and not any(fnmatch.fnmatch(key, p) for p in patterns):
                continue
            row = rows[name]
            if code is None:
                row[2] += 1                      # not run (yet)
                continue
            row[1] += 1
            if code in KILLED:
                row[0] += 1
            else:
                survivors.append(f"{key}: {SURVIVED.get(code, f'exit {code}')}")
    print(f"{'file':32s} {'killed':>7s} {'run':>5s} {'score':>7s} {'not run':>8s}")
    all_killed = all_run = 0
    for name, (killed, run, not_run) in sorted(rows.items()):
        score = f"{100 * killed / run:.1f}%" if run else "-"
        print(f"{name:32s} {killed:7d} {run:5d} {score:>7s} {not_run:8d}")
        all_killed, all_run = all_killed + killed, all_run + run
    if all_run:
        print(f"{'all':32s} {all_killed:7d} {all_run:5d} {100 * all_killed / all_run:6.1f}%")
    if survivors:
        print("\nsurvivors (mutmut show NAME prints the diff):")
        print("\n".join("  " + s for s in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
