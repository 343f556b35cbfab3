#!/usr/bin/env bash
# Table 1 at patience 30 (issue 11), from the finished patience-10 runs: each run of each row and seed is extended
# (`robust-uatt train --extend`, preset patience30: early stopping after 30 epochs without a new best, at most 200
# epochs), which trains only the epochs after the one where patience 10 stopped and gives, bit for bit, the run
# patience 30 trains from scratch (tests/test_extend.py). Records in docs/results/tables/runs/<recipe>-seed<S>-patience30/,
# the table in docs/results/tables/patience30/table1.{json,md}. A finished extension is skipped; an interrupted
# one resumes. Where the patience-10 source run is gone (a lost machine: only its record is committed), the row is
# trained from scratch under the preset instead, which by the same equivalence gives the same run at full cost.
# usage: docs/results/tables/extend.sh RUNS_DIR "SEEDS"   (RUNS_DIR holds <recipe>/seed<S>, e.g. ~/uatt-runs/tables)
set -uo pipefail
runs=${1:?usage: extend.sh RUNS_DIR SEEDS} seeds=${2:-"0 1"}
here=docs/results/tables
for seed in $seeds; do
  for name in mnist-fc mnist-cnn mnist-ram mnist-ram7 mnist-uatt mnist-uatt-entropy; do
    src="$runs/$name/seed$seed" out="$runs/$name/seed$seed-patience30"
    if [ ! -f "$out/model.safetensors" ]; then
      if [ -f "$out/checkpoint.safetensors" ]; then
        robust-uatt train --resume "$out" --no-download
      elif [ -f "$src/model.safetensors" ]; then
        robust-uatt train --extend "$src" --preset patience30 --out "$out" --no-download
      else  # source lost: the same run from scratch
        robust-uatt train "$name" --preset patience30 --seed "$seed" --out "$out" --no-download
      fi
      rc=$?; { [ $rc -eq 130 ] || [ $rc -eq 143 ]; } && exit $rc
      [ -f "$out/model.safetensors" ] || continue
    fi
    rec="$here/runs/$name-seed$seed-patience30"
    mkdir -p "$rec" && cp "$out/config.json" "$out/metrics.jsonl" "$out/model_card.json" "$rec/"
  done
done
robust-uatt paper-table 1 --preset patience30 --records "$here/runs" --out "$here/patience30"
