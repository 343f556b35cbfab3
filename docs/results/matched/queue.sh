#!/usr/bin/env bash
# The matched study's remaining runs, in the order they decide things (issue 11), one at a time with 2 threads
# (faster here than two 1-thread runs side by side). Each run resumes if interrupted and is skipped once finished.
# usage: docs/results/matched/queue.sh RUNS_DIR      (e.g. ~/uatt-runs, outside the repository)
set -uo pipefail
runs=${1:?usage: queue.sh RUNS_DIR}
for job in "cifar10-vgg matched 1" "cifar10-vgg-attn matched 1" \
           "cifar10-vgg matched-sgd 0" "cifar10-vgg-attn matched-sgd 0" \
           "cifar10-vgg-attn matched-random 0" "cifar10-vgg-attn matched-center 0"; do
  set -- $job
  out="$runs/$1/$2-seed$3"
  [ -f "$out/model.safetensors" ] && continue
  if [ -f "$out/checkpoint.safetensors" ]; then
    robust-uatt train --resume "$out" --no-download
  else
    robust-uatt train "$1" --preset "$2" --seed "$3" --out "$out" --no-download
  fi
  rc=$?; [ $rc -eq 130 ] || [ $rc -eq 143 ] && exit $rc   # Ctrl-C / SIGTERM: stop the queue too
done
