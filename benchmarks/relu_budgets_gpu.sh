#!/usr/bin/env bash
# ReLU budgets, every strategy against chance, on one GPU (BENCHMARKS.md, "ReLU budgets: learned placements
# against chance"). Each step is a search on a store; a step cut short by its time limit resumes from its store
# when the script runs again (found placements and finished runs are stored as they come).
#   resnet20 (easier-resnet20: 4 epochs, 3 seeds):
#     1. learned at channel granularity: SNL's gates from each seed's base model, binarised to 50%, 25% and 10%
#        of the ReLUs, each placement trained by the recipe at its seed, beside a random placement per budget;
#     2. the same at layer granularity (whole slots);
#     3. budget: the slots of lowest sign entropy (EASIER's statistic) switched off first, 14, 9, 4 kept;
#     3b. greedy by lowest sign entropy, every step accepted, 17 slots off at most (the same budgets on its path).
#   seed-cnn (greedy-relu-cifar10 at 5 epochs, 3 seeds, tf32 products):
#     4. learned at channel granularity, 5. at layer granularity, both with chance beside them;
#     6. budget by lowest sign entropy, 7, 4, 2 slots kept; 6b. greedy by it, 8 slots off at most;
#     7. the oracle (every single slot off).
#   8. a report of each store (the Pareto section compares every strategy at each budget).
# The resnet20 store may already hold the easier-resnet20 oracle (benchmarks/easier_gpu.sh): its base runs are
# reused, and where their weights were not copied with it the learned strategy trains a copy of each to start from.
# Usage (repository root): bash benchmarks/relu_budgets_gpu.sh CIFAR_ARCHIVE RESNET20_STORE SEEDCNN_STORE OUT_DIR
# Limits per step (seconds): R20_LIMIT, CNN_LIMIT, SMALL_LIMIT, GREEDY_LIMIT, ORACLE_LIMIT (0: no oracle); SKIP_R20=1 skips
# the resnet20 steps. STEPS (default "learned-channel learned-layer budget greedy oracle") names the steps to run: a
# finished step resumed still loads the data and plans (about 13 s), which a call short of time can skip.
set -uo pipefail
steps=" ${STEPS:-learned-channel learned-layer budget greedy oracle} "
want() { [[ "$steps" == *" $1 "* ]]; }
cifar=$1
r20=$2
cnn=$3
out=$4
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
probes=(--probe-set per-class:100 --data-path "$cifar" --no-report)
search() {  # search LIMIT ARGS...: one search, timed, cut at LIMIT seconds
    local limit=$1
    shift
    echo "== relulab search $*"
    time timeout "$limit" python -m relulab search "$@" "${probes[@]}"
}
learned=(--strategy learned --budgets 0.5,0.25,0.1)
greedy=(--strategy greedy --stat sign_entropy --order lowest --accept-all)
cnn_recipe=(greedy-relu-cifar10 --epochs 5 --set train.precision=tf32)
if [ -z "${SKIP_R20:-}" ]; then
    want learned-channel && search "${R20_LIMIT:-170}" easier-resnet20 "${learned[@]}" --granularity channel --store "$r20"
    want learned-layer && search "${SMALL_LIMIT:-40}" easier-resnet20 "${learned[@]}" --granularity layer --store "$r20"
    want budget && search "${SMALL_LIMIT:-40}" easier-resnet20 --strategy budget --keep 14,9,4 --stat sign_entropy \
        --order lowest --store "$r20"
    # EASIER's greedy path by sign entropy, every proposal accepted, down past a tenth of the ReLUs
    want greedy && search "${GREEDY_LIMIT:-200}" easier-resnet20 "${greedy[@]}" --budget 17 --store "$r20"
fi
want learned-channel && search "${CNN_LIMIT:-110}" "${cnn_recipe[@]}" "${learned[@]}" --granularity channel --store "$cnn"
want learned-layer && search "${CNN_LIMIT:-110}" "${cnn_recipe[@]}" "${learned[@]}" --granularity layer --store "$cnn"
want budget && search "${SMALL_LIMIT:-40}" "${cnn_recipe[@]}" --strategy budget --keep 7,4,2 --stat sign_entropy --order lowest \
    --store "$cnn"
want greedy && search "${GREEDY_LIMIT:-200}" "${cnn_recipe[@]}" "${greedy[@]}" --budget 8 --store "$cnn"
want oracle && [ "${ORACLE_LIMIT:-110}" -gt 0 ] && search "${ORACLE_LIMIT:-110}" "${cnn_recipe[@]}" --strategy oracle --store "$cnn"
stores=("$cnn")
[ -z "${SKIP_R20:-}" ] && stores=("$r20" "$cnn")
for store in "${stores[@]}"; do
    python - "$store" <<'PY'
import sqlite3, sys
sqlite3.connect(sys.argv[1]).execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a killed search leaves rows in the WAL
PY
    name=$(basename "$store" .sqlite)
    gzip -c "$store" > "$out/$name.sqlite.gz"
    # a pack cut short saved its state here (every minute): carried back, a later call resumes it
    [ -d "${store%.sqlite}.progress" ] && tar czf "$out/$name.progress.tar.gz" -C "$(dirname "$store")" "$name.progress"
    time timeout 60 python -m relulab report "$store" --out "$out/report-$name"
done
