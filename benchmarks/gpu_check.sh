#!/usr/bin/env bash
# One prepared command for a CUDA machine: everything a short GPU window should check.
#
#   bash benchmarks/gpu_check.sh --data-dir DIR [--out DIR] [--dry-run]
#
# DIR holds ptb.{train,valid,test}.txt (copy them beside the code: a GPU machine may have
# no network). Needs what such a machine usually has: Python with numpy, PyTorch (for the
# cuDNN comparison; without it those columns stay empty) and a CuPy wheel (cupy-cuda12x
# or cupy-cuda13x) and pytest; the package is used from this working tree, not installed.
# The Python is $PYTHON, else python3. In order:
#
#   1. pytest -m gpu                       CuPy against NumPy on a device (tests/);
#                                          a DeprecationWarning fails it
#   2. bench.py --device gpu, small        ours vs PyTorch (cuDNN), interleaved in one run
#   3. bench.py --device gpu, medium
#   4. bench.py --device gpu, large
#   5. sequential_path.py --device gpu     a training step against its sequential part
#                                          (small, medium, large; T = 5..280)
#   6. examples/ptb_small.py --device gpu  the small preset to the end: 13 epochs + test
#
# Each part runs under its own time limit (LIMIT_* below; a part that overruns is stopped
# and the next one starts), everything is logged under --out (default
# runs/gpu_check-<UTC time>), and a summary table ends the output (also in summary.md).
# The limits add up to 9 min 40 s, under the 10 minutes one call on an H100/H200 may run
# (the small run to the end took 5 min 37 s on an H200). If the small run is stopped by
# its limit, its checkpoint is in OUT/small_run:
# `python examples/ptb_small.py --device gpu --data-dir DIR --out OUT/small_run --resume`
# finishes it.
#
# --dry-run: every part on the CPU with tiny sizes (pytest -m gpu only collects, having no
# device; bench.py leaves PyTorch out; the corpus is not checked against PTB's digests),
# so that CI can smoke-test this script in under a minute.
#
# Exit code: 0 if every part passed, 1 if one did not, 2 on bad usage.
set -uo pipefail

# Each limit is about 1.5x what the part took on an H200 (docs/results/gpu_h200/), the
# small run's about 1.07x: it is the part that must not be cut short.
LIMIT_SETUP=20         # seconds: the environment report (imports torch and cupy); took 10
LIMIT_PYTEST=40        # 13 tests; NVRTC compiles each kernel once per dtype; took 16
LIMIT_BENCH=40         # per preset: torch + CuPy start-up, warm-up, 5 rounds x 10 steps; 22-29
LIMIT_SEQ=40           # 21 rows (3 presets x 7 T) x (1 warm-up + 5 rounds) x 2 timings; 22
LIMIT_SMALL=360        # 13 epochs of PTB (929,589 words each) + validation + test pass; 337
# In all 580 s (9 min 40 s); a part that ignores `timeout`'s TERM is killed 5 s later,
# so 615 s at the very worst.

usage() {
    echo "usage: bash benchmarks/gpu_check.sh --data-dir DIR [--out DIR] [--dry-run]" >&2
    exit 2
}
DATA="" OUT="" DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data-dir) [ $# -ge 2 ] || usage; DATA="$2"; shift 2 ;;
        --out) [ $# -ge 2 ] || usage; OUT="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$DATA" ] || usage
[ -f "$DATA/ptb.train.txt" ] || { echo "gpu_check.sh: no ptb.train.txt in $DATA" >&2; exit 2; }
DATA="$(cd "$DATA" && pwd)"
OUT="${OUT:-runs/gpu_check-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"   # $PYTHON, else python3

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    LIMIT_SMALL=900    # one epoch of PTB on the CPU even at H = 8: ~4 min on 2 busy cores
    BENCH_SIZE=(--hidden-size 16 --num-steps 5 --batch-size 4 --steps 2 --repeats 1 --warmup 1
                --threads 1 --settle 0 --no-torch)   # torch on the CPU: tests/test_bench.py
    SEQ_SIZE=(--quick --repeats 1 --threads 1)
    SMALL_SIZE=(--num-layers 1 --hidden-size 8 --num-steps 10 --batch-size 64 --max-epoch 1
                --test-batch-size 64 --no-verify-data)
else
    DEVICE=gpu
    BENCH_SIZE=(--steps 10 --repeats 5 --warmup 3)
    SEQ_SIZE=(--repeats 5 --settle 0)     # no BLAS threads to let settle on a GPU
    SMALL_SIZE=()
fi
echo "gpu_check: device $DEVICE, data $DATA, output $OUT"
: > "$OUT/parts.tsv"

# run NAME LIMIT COMMAND...: run under `timeout`, log to OUT/NAME.log, record rc and time
run() {
    local name="$1" limit="$2"; shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$OUT/parts.tsv"
    tail -n 3 "$OUT/$name.log" | tr '\r' '\n' | grep -v '^$' | tail -n 2 | sed 's/^/   /'
}

run 0_environment "$LIMIT_SETUP" "$PY" - <<'EOF'
import importlib, platform, subprocess
print("python", platform.python_version(), platform.platform())
for name in ("numpy", "cupy", "torch"):
    try:
        m = importlib.import_module(name)
        print(name, m.__version__)
    except Exception as e:
        print(name, "unavailable:", " ".join(str(e).split())[:200])
try:
    import cupy
    print("cupy devices", cupy.cuda.runtime.getDeviceCount(), "cuda runtime",
          cupy.cuda.runtime.runtimeGetVersion())
    print("device 0", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
except Exception as e:
    print("cupy: no device:", " ".join(str(e).split())[:200])
try:
    import torch
    print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
except Exception as e:
    print("torch: unavailable:", " ".join(str(e).split())[:200])
try:
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                         timeout=5).stdout.strip())
except Exception as e:
    print("nvidia-smi:", e)
EOF

if [ "$DRY" = 1 ]; then   # no device: the GPU tests are collected (they import), not run
    run 1_pytest_gpu "$LIMIT_PYTEST" env -u CI "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        --collect-only
else
    run 1_pytest_gpu "$LIMIT_PYTEST" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        -W error::DeprecationWarning           # a deprecated CuPy call fails the check
fi
for preset in small medium large; do
    run "2_bench_$preset" "$LIMIT_BENCH" "$PY" benchmarks/bench.py --config "$preset" \
        --device "$DEVICE" "${BENCH_SIZE[@]}"
done
run 2_sequential_path "$LIMIT_SEQ" "$PY" benchmarks/sequential_path.py --device "$DEVICE" \
    --out-json "$OUT/sequential_path.json" --out-png "$OUT/sequential_path.png" "${SEQ_SIZE[@]}"
run 3_small_run "$LIMIT_SMALL" "$PY" examples/ptb_small.py --device "$DEVICE" \
    --data-dir "$DATA" --out "$OUT/small_run" --save-every 0 "${SMALL_SIZE[@]}"

"$PY" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
"""The summary table: one row per part, from OUT/parts.tsv and each part's log."""
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows, failed = [], False


def last_json(log):
    for line in reversed(log.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


for line in (out / "parts.tsv").read_text().splitlines():
    name, rc, seconds, limit = line.split("\t")
    rc = int(rc)
    log = (out / f"{name}.log").read_text(errors="replace")
    status = "ok" if rc == 0 else "TIMEOUT" if rc in (124, 137) else f"FAILED (rc {rc})"
    result = ""
    if name.startswith("1_pytest"):
        tail = [l for l in log.splitlines() if " in " in l and ("passed" in l or "skipped"
                in l or "failed" in l or "error" in l or "collected" in l)]
        result = tail[-1].strip("= ") if tail else ""
    elif name.startswith("2_bench"):
        r = last_json(log) if rc == 0 else None
        if r:
            f = lambda v, spec=",.0f": format(v, spec) if v else "-"        # noqa: E731
            result = (f"ours {f(r['words_per_sec'])} w/s, torch {f(r['torch_words_per_sec'])}"
                      f" w/s, ours/torch {f(r['ratio_vs_torch'], '.2f')}, ours/GEMM floor "
                      f"{f(r['ratio_vs_floor'], '.2f')}, eval {f(r['eval_words_per_sec'])} w/s")
            if r.get("torch_skipped"):
                result += f" (torch: {r['torch_skipped']})"
    elif name.startswith("2_sequential"):
        path = out / "sequential_path.json"
        spans = {}                         # config -> its rows, T ascending
        for r in json.loads(path.read_text())["rows"] if rc == 0 and path.exists() else []:
            spans.setdefault(r["config"], []).append(r)
        result = "; ".join(f"{c} s {rs[0]['sequential_fraction']:.2f} (T={rs[0]['num_steps']})"
                           f" to {rs[-1]['sequential_fraction']:.2f} (T={rs[-1]['num_steps']})"
                           for c, rs in spans.items())
    elif name.startswith("3_small"):
        metrics = out / "small_run" / "metrics.jsonl"
        recs = [json.loads(l) for l in metrics.read_text().splitlines()] if metrics.exists() else []
        epochs = [r for r in recs if "valid_ppl" in r]
        test = [r["test_ppl"] for r in recs if "test_ppl" in r]
        if epochs:
            wps = sum(r["words_per_sec"] for r in epochs) / len(epochs)
            result = (f"{len(epochs)} epochs, valid {epochs[-1]['valid_ppl']:.2f}, "
                      f"test {test[-1]:.2f}, " if test else
                      f"{len(epochs)} epochs, valid {epochs[-1]['valid_ppl']:.2f}, no test, ")
            # the part's wall time covers every step run, a stopped epoch's too: divide by
            # the epochs' worth of steps (recs[-1] is the last row: test or interrupted)
            run_epochs = recs[-1]["step"] / epochs[0]["step"]
            result += (f"{wps:,.0f} train w/s, wall {int(seconds) / run_epochs:.1f} s per "
                       f"epoch over {run_epochs:.2f} epochs (with validation and the test pass)")
    failed |= rc != 0
    rows.append(f"| {name} | {status} | {seconds} | {limit} | {result} |")
print("\n## gpu_check summary\n")
print("| part | status | seconds | limit | result |")
print("|---|---|--:|--:|---|")
print("\n".join(rows))
print(f"\nlogs: {out}")
sys.exit(1 if failed else 0)
EOF
exit "${PIPESTATUS[0]}"
