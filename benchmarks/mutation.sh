#!/usr/bin/env bash
# Mutation score of the math and of the trainer's resume/evaluate parts (opt-in, not CI).
#
#   pip install "mutmut>=3,<4"
#   bash benchmarks/mutation.sh                     # every listed part (~45 min, 2 free cores)
#   bash benchmarks/mutation.sh 'zaremba_ref.optim.*' 'zaremba_ref.loss.*'   # some parts
#   MUTATION_JOBS=1 bash benchmarks/mutation.sh ...  # fewer workers on a busy machine
#
# mutmut (configured in pyproject.toml, [tool.mutmut]) copies the project into mutants/,
# makes one-line bugs ("mutants") in the files of only_mutate, runs the selected test
# files once to learn which tests reach which function, then for each mutant runs only
# those tests: killed = some test failed. Arguments are mutant-name globs
# (module.x_function__mutmut_N, methods module.xǁClassǁmethod__mutmut_N); without any,
# the parts the README's "Tests" section lists. At the end a table of killed / total
# by file (benchmarks/mutation_score.py); `mutmut show NAME` prints one mutant's diff.
# mutmut 3 does not mutate decorated functions, so config.py's loss_scale (a property)
# is not among them: its mutants were applied by hand (README, "Mutation score").
# Runs niced (nice -n 10): it must not slow a training run sharing the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python -c "import mutmut" 2>/dev/null; then
    echo "error: mutmut is not installed; pip install 'mutmut>=3,<4'" >&2
    exit 2
fi
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
# the CuPy double's kernels, compiled once for every mutant rather than once per mutant
export ZAREMBA_REF_KERNEL_CACHE="$PWD/mutants/.cpu_kernels"
if [ -z "${ZAREMBA_REF_DATA:-}" ] && [ -d ../shared/data/ptb ]; then
    ZAREMBA_REF_DATA="$(cd ../shared/data/ptb && pwd)"
    export ZAREMBA_REF_DATA
fi

if [ "$#" -eq 0 ]; then
    set -- \
        'zaremba_ref.lstm.*' 'zaremba_ref.kernels.*' 'zaremba_ref.model.*' \
        'zaremba_ref.loss.*' 'zaremba_ref.optim.*' 'zaremba_ref.dropout.*' \
        'zaremba_ref.train.x_evaluation_nll__*' 'zaremba_ref.train.x_evaluate__*' \
        'zaremba_ref.train.x_torch7_perplexity__*' 'zaremba_ref.train.x_train_step__*' \
        'zaremba_ref.train.x__resume__*' 'zaremba_ref.train.x__save__*' \
        'zaremba_ref.train.x__check_resumable__*' 'zaremba_ref.train.x__trim_metrics__*' \
        'zaremba_ref.train.x__rng_state__*' \
        'zaremba_ref.data.x_batchify__*' 'zaremba_ref.data.x_num_windows__*' \
        'zaremba_ref.data.x_windows__*' 'zaremba_ref.data.x_evaluation_windows__*' \
        'zaremba_ref.data.x_num_evaluation_windows__*' 'zaremba_ref.data.x__positive__*'
fi

nice -n 10 mutmut run --max-children "${MUTATION_JOBS:-2}" "$@" || true
python benchmarks/mutation_score.py "$@"
