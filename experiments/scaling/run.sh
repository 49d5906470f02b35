#!/usr/bin/env bash
# The scaling study: a model-size sweep (L(N), L(C)) and an IsoFLOP sweep (N_opt(C), D_opt(C)),
# then their fits and plots, and L(N, D) over both. Relaunching skips finished points and
# resumes interrupted ones.
#
#   bash experiments/scaling/run.sh [cpu|gpu] [OUT]    # cpu: about 50 minutes on 2 idle cores
set -uo pipefail
scale=${1:-cpu}
out=${2:-runs/scaling-$scale}
status=0
python -m transformer.sweep --config=configs/sweeps/model_size.py:$scale \
  --workdir=$out/model_size || status=$?
python -m transformer.sweep --config=configs/sweeps/isoflop.py:$scale \
  --workdir=$out/isoflop || status=$?
# Fit whatever finished (a failed point is listed in results.csv with its error).
python -m transformer.scaling $out/model_size || status=$?
python -m transformer.scaling $out/isoflop || status=$?
# L(N, D) over both sweeps together (Hoffmann et al.'s approach 3).
python -m transformer.scaling $out/model_size $out/isoflop --out=$out/joint || status=$?
exit $status
