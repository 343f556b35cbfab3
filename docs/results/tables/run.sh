#!/usr/bin/env bash
# Reproduce the paper's Table 1 (MNIST), 2 (cluttered MNIST) or 3 (generated multi-digit MNIST): every row's
# recipe (Tables 1-2: the paper's Adam 3e-4, batch 128, the epoch with the best validation accuracy on the 6,000
# held-out training images, early stopping after 10 epochs without a new best; Table 3: its preset's fixed epochs,
# e.g. `cpu`: 10 epochs of 20,000 images), each seed, then the table beside the paper's errors.
# usage: docs/results/tables/run.sh TABLE "SEEDS" [PRESET]      e.g. docs/results/tables/run.sh 1 "0 1"
#                                                                    docs/results/tables/run.sh 3 "0" cpu
# Runs land in runs/<recipe>/seed<S>[-<preset>]; an interrupted run resumes; a finished one is skipped.
set -euo pipefail
table=$1 seeds=$2 preset=${3:-}
case $table in
  1) prefix="mnist-" ;;
  2) prefix="cluttered-mnist-" ;;
  3) prefix="multidigit-mnist-" ;;
  *) echo "table must be 1, 2 or 3" >&2; exit 2 ;;
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
