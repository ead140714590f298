#!/usr/bin/env bash
# ReLU budgets, every strategy against chance, on one GPU (BENCHMARKS.md, "ReLU budgets: learned placements
# against chance"):
#   1. resnet20 (easier-resnet20: 4 epochs, 3 seeds), learned at channel granularity: SNL's gates from each seed's
#      base model, binarised to 50%, 25% and 10% of the ReLUs, each placement trained by the recipe at its seed,
#      beside a random channel placement at each budget;
#   2. the same at layer granularity (whole slots);
#   3. resnet20, budget: the slots of lowest sign entropy (EASIER's statistic) switched off first, 14, 9, 4 kept;
#   4. seed-cnn (greedy-relu-cifar10 at 5 epochs, 3 seeds, tf32: its bf16 stacks' Triton kernels would spend a
#      minute tuning on a fresh machine), learned at channel granularity with chance beside it;
#   5. folding latency on the GPU (benchmarks/fold_latency.py).
# The resnet20 store may already hold the easier-resnet20 oracle (benchmarks/easier_gpu.sh): its base runs are
# reused, and where their weights were not copied with it the learned strategy trains a copy of each to start from.
# Each step has its own time limit; a search cut short resumes from its store when run again.
# Usage (repository root): bash benchmarks/relu_budgets_gpu.sh CIFAR_ARCHIVE RESNET20_STORE SEEDCNN_STORE OUT_DIR
set -uo pipefail
cifar=$1
r20=$2
cnn=$3
out=$4
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
probes=(--probe-set per-class:100 --data-path "$cifar" --no-report)
for granularity in channel layer; do
    time timeout "${R20_LIMIT:-150}" python -m relulab search easier-resnet20 --strategy learned \
        --granularity "$granularity" --budgets 0.5,0.25,0.1 --store "$r20" "${probes[@]}"
done
time timeout "${BUDGET_LIMIT:-60}" python -m relulab search easier-resnet20 --strategy budget --keep 14,9,4 \
    --stat sign_entropy --order lowest --store "$r20" "${probes[@]}"
gzip -c "$r20" > "$out/$(basename "$r20").gz"
time timeout "${CNN_LIMIT:-150}" python -m relulab search greedy-relu-cifar10 --epochs 5 --strategy learned \
    --set train.precision=tf32 --granularity channel --budgets 0.5,0.25,0.1 --store "$cnn" "${probes[@]}"
gzip -c "$cnn" > "$out/$(basename "$cnn").gz"
time timeout 50 python benchmarks/fold_latency.py --device cuda --min-run-time 1 --out "$out/fold-latency"
