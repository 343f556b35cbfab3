#!/usr/bin/env bash
# The defended zoo's runs (issue 12), in the order they decide things, one at a time with all threads: fast
# adversarial training (fgsm-rs 8/255, the matched recipe of zoo/cifar10-vgg-at.toml and cifar10-vgg-attn-at.toml)
# of VGG16 and VGG16+attention, seed 0 then seed 1. Per job: train (resuming an interrupted run), record the run in
# docs/results/defended/<recipe>-seed<S>/ (config, metrics with the guard's PGD accuracy per epoch, model card),
# ship the weights (fp16 + card; seed 0 under the recipe's name, seed S as <recipe>-seedS), then evaluate the shipped
# file at 8/255 on the 1,000 lossless test images with the `standard` suite (reference AutoAttack) and `adaptive`.
# A job whose record holds both evaluations is skipped, so the queue survives a lost machine as far as its committed
# records go.
# usage: docs/results/defended/queue.sh RUNS_DIR   (RUNS_DIR e.g. ~/uatt-runs, outside the repository; run from the
#        repository root with ROBUST_UATT_DATA pointing at the data)
#        A trial of the whole chain in minutes: PRESET=smoke RECORDS=/tmp/def WEIGHTS=/tmp/def-weights N=50 queue.sh DIR
set -uo pipefail
runs=${1:?usage: queue.sh RUNS_DIR}
here=${RECORDS:-docs/results/defended} weights=${WEIGHTS:-zoo/weights} n=${N:-1000} preset=${PRESET:-}
for job in "cifar10-vgg-at 0" "cifar10-vgg-attn-at 0" "cifar10-vgg-at 1" "cifar10-vgg-attn-at 1"; do
  set -- $job
  recipe=$1 seed=$2
  record="$here/$recipe-seed$seed"
  [ -f "$record/standard-8_255/results.json" ] && [ -f "$record/adaptive-8_255/results.json" ] && continue
  out="$runs/$recipe/seed$seed"
  if [ ! -f "$out/model.safetensors" ]; then
    if [ -f "$out/checkpoint.safetensors" ]; then
      robust-uatt train --resume "$out" --no-download
    else
      robust-uatt train "$recipe" ${preset:+--preset "$preset"} --seed "$seed" --out "$out" --no-download
    fi
    rc=$?; [ $rc -eq 130 ] || [ $rc -eq 143 ] && exit $rc   # Ctrl-C / SIGTERM: stop the queue too
    [ -f "$out/model.safetensors" ] || continue
  fi
  mkdir -p "$record" && cp "$out/config.json" "$out/metrics.jsonl" "$out/model_card.json" "$record/"
  name=$recipe; [ "$seed" = 0 ] || name="$recipe-seed$seed"
  [ -f "$weights/$name.safetensors" ] || \
    python -m robust_uatt.training.export "$out" --name "$name" --dest "$weights" || continue
  for suite in standard adaptive; do
    dir="$record/$suite-8_255"
    [ -f "$dir/results.json" ] && continue
    robust-uatt attack --model "$weights/$name.safetensors" --suite "$suite" --eps 8/255 --n "$n" --seed 0 \
      --out "$dir" --no-download || [ $? -eq 4 ]  # exit 4 = INVALID verdict: written and reported as such
  done
done
