#!/usr/bin/env bash
# Reproduce the paper's Table 1 (MNIST), 2 (cluttered MNIST) or 3 (generated multi-digit MNIST): every row's
# recipe (Tables 1-2: the paper's Adam 3e-4, batch 128, the epoch with the best validation accuracy on the 6,000
# held-out training images, early stopping after 10 epochs without a new best; Table 3: its preset's fixed epochs,
# e.g. `cpu`: 10 epochs of 20,000 images), each seed, then the table beside the paper's errors.
# usage: [RUNS=DIR] [NAMES="recipe ..."] docs/results/tables/run.sh TABLE "SEEDS" [PRESET]
#        e.g. docs/results/tables/run.sh 1 "0 1"      docs/results/tables/run.sh 3 "0" cpu
# NAMES picks the rows and their order (default: every recipe of the table, alphabetically; e.g. the cheapest
# first, so that a session cut short leaves finished rows). Runs land in RUNS/<recipe>/seed<S>[-<preset>] (RUNS
# defaults to runs/); an interrupted run resumes, a finished one is skipped. Each finished run's config, metrics and
# card are recorded in docs/results/tables/runs/<recipe>-seed<S>[-<preset>]/ (committed: the run folder is not), and
# the table, built from those records (so rows whose run folders are gone still count), is written to
# docs/results/tables/ (without a preset) or docs/results/tables/<preset>/.
set -uo pipefail
table=$1 seeds=$2 preset=${3:-} runs=${RUNS:-runs} here=docs/results/tables
case $table in
  1) prefix="mnist-" ;;
  2) prefix="cluttered-mnist-" ;;
  3) prefix="multidigit-mnist-" ;;
  *) echo "table must be 1, 2 or 3" >&2; exit 2 ;;
esac
names=${NAMES:-$(robust-uatt zoo --names | grep "^$prefix")}
for name in $names; do
  case $name in "$prefix"*) ;; *) echo "$name is not a Table $table recipe" >&2; exit 2 ;; esac
  for seed in $seeds; do
    out="$runs/$name/seed$seed${preset:+-$preset}"
    if [ ! -f "$out/model.safetensors" ]; then
      if [ -f "$out/checkpoint.safetensors" ]; then
        robust-uatt train --resume "$out" --no-download
      else
        robust-uatt train "$name" ${preset:+--preset $preset} --seed "$seed" --out "$out" --no-download
      fi
      rc=$?; { [ $rc -eq 130 ] || [ $rc -eq 143 ]; } && exit $rc   # Ctrl-C / SIGTERM: stop here too
      [ -f "$out/model.safetensors" ] || continue
    fi
    rec="$here/runs/$name-seed$seed${preset:+-$preset}"
    mkdir -p "$rec" && cp "$out/config.json" "$out/metrics.jsonl" "$out/model_card.json" "$rec/"
  done
done
robust-uatt paper-table "$table" --preset "${preset:-none}" --records "$here/runs" --out "$here${preset:+/$preset}"
