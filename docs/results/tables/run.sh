#!/usr/bin/env bash
# Reproduce the paper's Table 1 (MNIST) or 2 (cluttered MNIST): every row's recipe (the paper's Adam 3e-4, batch
# 128, the epoch with the best validation accuracy on the 6,000 held-out training images, early stopping after 10
# epochs without a new best), each seed, then the table beside the paper's errors.
# usage: docs/results/tables/run.sh TABLE "SEEDS" [PRESET]      e.g. docs/results/tables/run.sh 1 "0 1"
# Runs land in runs/<recipe>/seed<S>[-<preset>]; an interrupted run resumes; a finished one is skipped.
set -euo pipefail
table=$1 seeds=$2 preset=${3:-}
case $table in
  1) prefix="mnist-" ;;
  2) prefix="cluttered-mnist-" ;;
  *) echo "table must be 1 or 2" >&2; exit 2 ;;
esac
for name in $(robust-uatt zoo --names | grep "^$prefix"); do
  for seed in $seeds; do
    out="runs/$name/seed$seed${preset:+-$preset}"
    if [ -f "$out/model.safetensors" ]; then continue; fi
    if [ -f "$out/checkpoint.safetensors" ]; then
      robust-uatt train --resume "$out" --no-download
    else
      robust-uatt train "$name" ${preset:+--preset $preset} --seed "$seed" --out "$out" --no-download
    fi
  done
done
robust-uatt paper-table "$table" ${preset:+--preset $preset} --out docs/results/tables
