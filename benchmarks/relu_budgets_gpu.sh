#!/usr/bin/env bash
# ReLU budgets on resnet20 / CIFAR-10, every strategy against chance, on one GPU (BENCHMARKS.md, "ReLU budgets:
# learned placements against chance"):
#   1. learned, channel granularity: SNL's gates from each seed's base model, binarised to 50%, 25% and 10% of the
#      ReLUs, each placement trained by the recipe at its seed, beside a random channel placement at each budget;
#   2. the same at layer granularity (whole slots);
#   3. budget: the slots of lowest sign entropy (EASIER's statistic) switched off first, 14, 9 and 4 slots kept;
#   4. folding latency on the GPU (benchmarks/fold_latency.py).
# The store may already hold the easier-resnet20 oracle (benchmarks/easier_gpu.sh): its base runs are reused, and
# where their weights were not copied with it, the learned strategy trains a copy of each base to start from.
# Usage (repository root): bash benchmarks/relu_budgets_gpu.sh CIFAR_ARCHIVE STORE OUT_DIR
set -uo pipefail
cifar=$1
store=$2
out=$3
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
common=(--probe-set per-class:100 --data-path "$cifar" --store "$store" --no-report)
for granularity in channel layer; do
    time timeout "${BUDGETS_LIMIT:-170}" python -m relulab search easier-resnet20 --strategy learned \
        --granularity "$granularity" --budgets 0.5,0.25,0.1 "${common[@]}"
    cp "$store" "$out/"
done
time timeout "${BUDGETS_LIMIT:-170}" python -m relulab search easier-resnet20 --strategy budget --keep 14,9,4 \
    --stat sign_entropy --order lowest "${common[@]}"
cp "$store" "$out/"
time timeout 60 python benchmarks/fold_latency.py --device cuda --min-run-time 1 --out "$out/fold-latency"
