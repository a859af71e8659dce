#!/usr/bin/env bash
# tools/busy_machine_bench.sh [slowdown]: the training step's speed on an idle machine and with one other
# process busy on one core, for 2 threads, 1 thread and auto (no --threads): the table of
# docs/benchmarks.md, "Threads on a busy machine", as markdown rows on stdout (logs in OUT, default
# runs/busy_machine_bench). Run it on a machine where nothing else runs; it says how busy the cores were
# before it starts. Each row: `python 06_train.py --data_path WORLD --profile STEPS [--threads N]`.
# With the argument `slowdown`: also a training that starts on the idle machine and meets a busy process
# after SLOWDOWN_AFTER seconds, and prints the run's "threads:" and "the machine got busy" lines.
# Environment: PYTHON (default python), WORLD (default data/synthetic), STEPS (default 30), ROUNDS
# (default 1: the six rows again, in turn), SLOWDOWN_AFTER (default 60), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORLD=${WORLD:-data/synthetic}
STEPS=${STEPS:-30}
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-runs/busy_machine_bench}
SPINNER=""

if [ ! -d "$WORLD" ]; then   # the default world of 06_train.py (about a minute on 2 cores)
    echo "busy_machine_bench: no world at $WORLD: rendering the default one there" >&2
    "$PY" -m helpers.synthetic_world --make "$WORLD"
fi
stop_spinner() {   # the one busy process this script started, by its own pid
    if [ -n "$SPINNER" ]; then kill "$SPINNER" 2> /dev/null || true; wait "$SPINNER" 2> /dev/null || true; fi
    SPINNER=""
}
trap stop_spinner EXIT
start_spinner() { "$PY" -c "while True: pass" & SPINNER=$!; sleep 2; }   # 2 s: it is running when we measure
mkdir -p "$OUT"

busy=$("$PY" -c "from helpers import cpu_threads as c; print(f'{c.busy_cores(2.0):.2f}')")
echo "busy_machine_bench: $(nproc) cores, $busy cores busy with other work before the start (want ~0)," \
     "commit $(git rev-parse --short HEAD 2> /dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ)" >&2
if "$PY" -c "import sys; sys.exit(0 if float('$busy') > 0.3 else 1)"; then
    echo "busy_machine_bench: WARNING: the machine is not idle: the 'idle' rows will be wrong" >&2
fi

row() {   # row MACHINE LABEL FLAGS...: one profile, one markdown row
    local machine=$1 label=$2; shift 2
    local log="$OUT/${machine// /_}_${label//[^a-z0-9]/_}_r$round.log"
    local rate="failed, see $log" chosen="?"
    if env -u OMP_NUM_THREADS "$PY" 06_train.py --data_path "$WORLD" --profile "$STEPS" "$@" > "$log" 2>&1; then
        rate=$(grep -oE 'throughput +[0-9.]+' "$log" | awk '{print $2}' || true)
        chosen=$(grep -m1 '^threads: ' "$log" || true)
    fi
    echo "| $machine | $label | $rate | \`$chosen\` |"
}

echo "| machine | threads | img/s | the run's start line |"
echo "|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
    row idle "2" --threads 2
    row idle "1" --threads 1
    row idle "auto (no flag)"
    start_spinner
    row "one other process busy on one core" "2" --threads 2
    row "one other process busy on one core" "1" --threads 1
    row "one other process busy on one core" "auto (no flag)"
    stop_spinner
done

if [ "${1:-}" = "slowdown" ]; then   # the watch: a run that starts idle and meets a busy process later
    rm -rf "$OUT/slowdown"
    log="$OUT/slowdown.log"
    env -u OMP_NUM_THREADS "$PY" 06_train.py --data_path "$WORLD" --run_dir "$OUT/slowdown" --max_steps 300 \
        --no_eval > "$log" 2>&1 &
    train=$!
    sleep "${SLOWDOWN_AFTER:-60}"
    start_spinner
    wait "$train" || echo "busy_machine_bench: the slowdown run failed, see $log" >&2
    stop_spinner
    echo
    echo "slowdown run ($log):"
    grep -E '^threads: |machine got busy' "$log" || echo "(no 'machine got busy' line)"
    "$PY" -c "import torch; print('threads_used:', torch.load('$OUT/slowdown/ckpt.pt', weights_only=True)['config']['threads_used'])"
fi
