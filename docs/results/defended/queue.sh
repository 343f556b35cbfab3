#!/usr/bin/env bash
# The defended zoo's runs (issue 12), in the order they decide things, one at a time with all threads: fast
# adversarial training (fgsm-rs 8/255, the matched recipe of zoo/cifar10-vgg-at.toml and cifar10-vgg-attn-at.toml)
# of VGG16 and VGG16+attention. For seed 0 then seed 1: first both trainings, each trained (resuming an interrupted
# run), recorded in docs/results/defended/<recipe>-seed<S>/ (config, metrics with the guard's PGD accuracy per epoch,
# model card) and shipped (fp16 + card; seed 0 under the recipe's name, seed S as <recipe>-seedS); then the
# evaluation of each shipped file at 8/255 on the 1,000 lossless test images with the `defended` suite: the reference
# AutoAttack (standard) first on every clean-correct point, its row being the AutoAttack number, then the paper's
# protocol and the adaptive attacks AutoAttack does not run, on its survivors (the worst case). Trainings come before evaluations because a shipped weight file is committed and an
# evaluation can be redone from it on any machine, while an unfinished training lives only in RUNS_DIR.
# Every step whose output exists is skipped, so the queue survives a lost machine as far as its committed files go.
# usage: [TRAIN_CODE=DIR] docs/results/defended/queue.sh RUNS_DIR   (RUNS_DIR e.g. ~/uatt-runs, outside the
#        repository; run from the repository root with ROBUST_UATT_DATA pointing at the data). TRAIN_CODE: a
#        checkout whose code trains (`git worktree add DIR COMMIT`), so that every run of the study trains on the same
#        code (this study: commit 05d3f32); export and evaluation use this checkout.
#        A trial of the whole chain in minutes: PRESET=smoke RECORDS=/tmp/def WEIGHTS=/tmp/def-weights N=50 queue.sh DIR
set -uo pipefail
runs=${1:?usage: queue.sh RUNS_DIR}
mkdir -p "$runs" && runs=$(cd "$runs" && pwd)  # absolute: training may run from TRAIN_CODE
here=${RECORDS:-docs/results/defended} weights=${WEIGHTS:-zoo/weights} n=${N:-1000} preset=${PRESET:-}
recipes="cifar10-vgg-attn-at cifar10-vgg-at"  # the attention model first: its training is the riskier one

train() {
  if [ -n "${TRAIN_CODE:-}" ]; then
    (cd "$TRAIN_CODE" && PYTHONPATH="$TRAIN_CODE" python -m robust_uatt train "$@")
  else
    robust-uatt train "$@"
  fi
}

shipped_name() { if [ "$2" = 0 ]; then echo "$1"; else echo "$1-seed$2"; fi; }

train_and_ship() {  # recipe seed
  local recipe=$1 seed=$2 out="$runs/$1/seed$2" record="$here/$1-seed$2" name
  name=$(shipped_name "$recipe" "$seed")
  [ -f "$weights/$name.safetensors" ] && [ -f "$record/model_card.json" ] && return 0
  if [ ! -f "$out/model.safetensors" ]; then
    if [ -f "$out/checkpoint.safetensors" ]; then
      train --resume "$out" --no-download
    else
      train "$recipe" ${preset:+--preset "$preset"} --seed "$seed" --out "$out" --no-download
    fi
    local rc=$?; { [ $rc -eq 130 ] || [ $rc -eq 143 ]; } && exit $rc   # Ctrl-C / SIGTERM: stop the queue too
    [ -f "$out/model.safetensors" ] || return 1
  fi
  mkdir -p "$record" && cp "$out/config.json" "$out/metrics.jsonl" "$out/model_card.json" "$record/"
  [ -f "$weights/$name.safetensors" ] || \
    python -m robust_uatt.training.export "$out" --name "$name" --dest "$weights"
}

evaluate() {  # recipe seed
  local record="$here/$1-seed$2" name dir
  name=$(shipped_name "$1" "$2")
  [ -f "$weights/$name.safetensors" ] || return 1
  dir="$record/defended-8_255"
  [ -f "$dir/results.json" ] && return 0
  robust-uatt attack --model "$weights/$name.safetensors" --suite defended --eps 8/255 --n "$n" --seed 0 \
    --out "$dir" --no-download || [ $? -eq 4 ]  # exit 4 = INVALID verdict: written and reported as such
}

for seed in 0 1; do
  for recipe in $recipes; do train_and_ship "$recipe" "$seed"; done
  for recipe in $recipes; do evaluate "$recipe" "$seed"; done
done
