#!/usr/bin/env bash
# The matched study's remaining runs, in the order they decide things (issue 11), one at a time with 2 threads
# (faster here than two 1-thread runs side by side). Per job: train (resuming an interrupted run), then record it in
# docs/results/matched/<record>/ (config, metrics, model card), ship the weights of `matched` runs to zoo/weights
# (fp16 + card; seed 0 under the zoo name, seed S as <model>-seedS), and evaluate with evaluate.sh at 1/255, 2/255
# and 8/255. A job whose record already holds its evaluations is skipped, so the queue survives a lost machine as
# far as its committed records go.
# usage: [TRAIN_CODE=DIR] docs/results/matched/queue.sh RUNS_DIR   (RUNS_DIR e.g. ~/uatt-runs, outside the repository;
#        run from the repository root). TRAIN_CODE: a checkout whose code trains (the study's runs so far: a worktree
#        of commit ba08a01, `git worktree add DIR ba08a01`), so that every seed trains on the same code; export and
#        evaluation use this checkout.
set -uo pipefail
runs=${1:?usage: queue.sh RUNS_DIR}
train() {
  if [ -n "${TRAIN_CODE:-}" ]; then
    (cd "$TRAIN_CODE" && PYTHONPATH="$TRAIN_CODE" python -m robust_uatt train "$@")
  else
    robust-uatt train "$@"
  fi
}
here=docs/results/matched
for job in "cifar10-vgg matched 0" "cifar10-vgg-attn matched 0" "cifar10-vgg matched 1" \
           "cifar10-vgg-attn matched 1" "cifar10-vgg matched-sgd 0" "cifar10-vgg-attn matched-sgd 0" \
           "cifar10-vgg-attn matched-random 0" "cifar10-vgg-attn matched-center 0"; do
  set -- $job
  model=$1 preset=$2 seed=$3
  record="$here/$model-seed$seed"; [ "$preset" = matched ] || record="$here/$model-$preset-seed$seed"
  [ -f "$record/eps-8_255/results.json" ] && [ -f "$record/eps-1_255/results.json" ] && \
    [ -f "$record/eps-2_255/results.json" ] && continue
  out="$runs/$model/$preset-seed$seed"
  if [ ! -f "$out/model.safetensors" ]; then
    if [ -f "$out/checkpoint.safetensors" ]; then
      train --resume "$out" --no-download
    else
      train "$model" --preset "$preset" --seed "$seed" --out "$out" --no-download
    fi
    rc=$?; [ $rc -eq 130 ] || [ $rc -eq 143 ] && exit $rc   # Ctrl-C / SIGTERM: stop the queue too
    [ -f "$out/model.safetensors" ] || continue
  fi
  mkdir -p "$record" && cp "$out/config.json" "$out/metrics.jsonl" "$out/model_card.json" "$record/"
  weights="$out/model.safetensors"
  if [ "$preset" = matched ]; then
    name=$model; [ "$seed" = 0 ] || name="$model-seed$seed"
    [ -f "zoo/weights/$name.safetensors" ] || python -m robust_uatt.training.export "$out" --name "$name" || continue
    weights="zoo/weights/$name.safetensors"
  fi
  # the random-location control samples its locations: it is attacked with the sampled policy (README)
  extra=(); [ "$preset" = matched-random ] && extra=(--policy sample)
  EPS="8/255 1/255 2/255" $here/evaluate.sh "$weights" "$record" "${extra[@]}"
done
