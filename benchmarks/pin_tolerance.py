#!/usr/bin/env python
"""How far rounding alone moves a pinned run, and how far a real change of path moves it:
the measurements behind tests/test_pin.py's TOLERANCE.

Each case of tests/test_pin.py runs in a fresh process, first as recorded (one BLAS
thread, this machine's environment), then under rounding-only variants, each of which
runs the same path with other instructions or in another order:

  threads=2       two BLAS threads (a product's sums split and added in another order)
  kernel=NAME     OpenBLAS forced onto another kernel (OPENBLAS_CORETYPE, for that child
                  process only), as another CPU generation would pick
  numpy=V3 / V2   NumPy's SIMD loops held to AVX2 / SSE4 (NPY_DISABLE_CPU_FEATURES),
                  as an older CPU would run them

and under the real changes of test_pin.CHANGES (lr x (1 + 1e-4), one mask drawn in
another order, the forget-gate bias off by 1e-6). For each it prints the largest
deviation from the recorded run in test_pin's three measures (loss, sum, sumsq), per
dtype, then the JSON of every row as the last line.

    python benchmarks/pin_tolerance.py --data-dir ../shared/data/ptb
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import test_pin  # noqa: E402  (tests/test_pin.py: the cases, the runner, the measures)
from conftest import write_toy_corpus  # noqa: E402

ROUNDING = {
    "threads=2": {"OPENBLAS_NUM_THREADS": "2"},
    "kernel=SkylakeX": {"OPENBLAS_CORETYPE": "SkylakeX"},
    "kernel=Haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "kernel=Zen": {"OPENBLAS_CORETYPE": "Zen"},
    "kernel=Sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge"},
    "numpy=V3": {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
    "numpy=V2": {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"},
}


def run(which, data_dir, name, dtype, change=None, env=None) -> dict:
    e = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
         "PYTHONPATH": str(REPO), **(env or {})}
    args = [sys.executable, test_pin.__file__, "run", which, str(data_dir), name, dtype]
    out = subprocess.run(args + ([change] if change else []), capture_output=True, text=True,
                         env=e, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="the real PTB (its cases are skipped without it)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        toy = write_toy_corpus(Path(tmp) / "toy", words_per_split=test_pin.TOY_WORDS)
        for which, name, dtype in test_pin.CASES:
            if which == "ptb" and not args.data_dir:
                continue
            data = toy if which == "toy" else args.data_dir
            base = run(which, data, name, dtype)
            variants = [(v, None, env) for v, env in ROUNDING.items()]
            if name == "medium_200":
                variants += [(f"change={c}", c, None) for c in test_pin.CHANGES]
            for label, change, env in variants:
                got = run(which, data, name, dtype, change, env)
                dev = test_pin.deviation(got, base)
                row = {"case": f"{which}/{name}/{dtype}", "variant": label,
                       "kernel": got["platform"]["blas_kernel"],
                       "numpy_simd": got["platform"]["numpy_simd"][-1],
                       "identical": not test_pin.bit_failures(got, base), **dev}
                rows.append(row)
                print(f"{row['case']:26s} {label:20s} loss {dev['loss']:9.2e}  "
                      f"sum {dev['sum']:9.2e}  sumsq {dev['sumsq']:9.2e}"
                      f"{'  (identical)' if row['identical'] else ''}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
