#!/usr/bin/env bash
# EASIER's question with seeds, on one GPU (BENCHMARKS.md, "EASIER with seeds"):
#   1. resnet20 / CIFAR-10: the oracle over its 19 single-slot removals, 3 seeds each (60 runs), judging every probe
#      statistic against the real changes and against a slot chosen at random;
#   2. resnet18-cifar: EASIER's greedy path, the slot of lowest sign entropy switched off and the network retrained,
#      3 steps, 2 seeds.
# Usage (repository root): bash benchmarks/easier_gpu.sh CIFAR_ARCHIVE OUT_DIR
# The stores (runs, searches, probe statistics) are copied to OUT_DIR after each search; `relulab report STORE`
# builds the reports from them anywhere.
set -uo pipefail
cifar=$1
out=$2
work=${EASIER_WORK:-/tmp/easier}
mkdir -p "$work" "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
probe_set=per-class:100  # 1,000 training images for the statistics (sign entropy over more than one batch)

time timeout "${EASIER_R20_LIMIT:-400}" python -m relulab search easier-resnet20 --strategy oracle --budget 1 \
    --probe-set "$probe_set" --data-path "$cifar" --store "$work/easier-resnet20.sqlite" --no-report
cp "$work/easier-resnet20.sqlite" "$out/"
time timeout "${EASIER_R18_LIMIT:-170}" python -m relulab search easier-resnet18 --strategy greedy \
    --stat sign_entropy --order lowest --accept-all --budget 3 --probe-set "$probe_set" --data-path "$cifar" \
    --store "$work/easier-resnet18.sqlite" --no-report
cp "$work/easier-resnet18.sqlite" "$out/"
