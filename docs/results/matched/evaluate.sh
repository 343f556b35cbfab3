#!/usr/bin/env bash
# Evaluate one finished run of the matched study (issue 11) on the 1,000 lossless CIFAR-10 test images:
# the `study` suite (paper protocol beside full-gradient PGD-CE/CW/BPDA-50) at 8/255, 1/255 and 2/255, then the
# three readings of the paper's "eps 0.3" (issue 11 item 4): 0.3/255 ([0,255] units), 0.073 (0.3 x the smallest
# channel std, i.e. 0.3 in normalized-input units) and 0.3 ([0,1] pixel units).
# usage: [EPS="8/255 1/255"] docs/results/matched/evaluate.sh MODEL OUT_DIR [ATTACK OPTIONS...]
#        (MODEL: shipped .safetensors, run directory or zoo name; attack seed 0, fast checks; an evaluation whose
#        results.json exists is skipped)
set -euo pipefail
run=$1 out=$2; shift 2
for eps in ${EPS:-8/255 1/255 2/255 0.3/255 0.073 0.3}; do
  dir="$out/eps-${eps//\//_}"
  if [ -f "$dir/results.json" ]; then continue; fi
  robust-uatt attack --model "$run" --suite study --eps "$eps" --n 1000 --seed 0 --out "$dir" --no-download "$@" || \
    [ $? -eq 4 ]  # exit 4 = INVALID verdict: the result is written and reported as such
done
