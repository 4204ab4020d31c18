#!/bin/sh
# Binarized-MNIST density benchmark: wake-sleep and rws on the same Helmholtz
# machine (784-200-200, a learned factorial prior on the top 200 units), both
# with Adam at lr 1e-3 and batch 100. Writes OUT/report.md, OUT/summary.json,
# the validation log-likelihood curve and each run's sample grids.
#
#   benchmarks/density_mnist.sh [OUT] [EPOCHS]
#
# Needs the MNIST IDX files where creditlab looks for them (--data-dir,
# $CREDITLAB_DATA, ~/.cache/creditlab/mnist). The final test log-likelihood
# uses K = 1000 importance samples per image. The update angle is measured
# every 100 steps: its 100-sample reference gradient costs about as much as
# 100 wake-sleep steps.
set -eu
OUT=${1:-runs/bench-density-mnist}
EPOCHS=${2:-40}
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PYTHON" -m creditlab compare --task density --data mnist --net helmholtz:784-200-200 \
    --rules wake-sleep,rws --epochs "$EPOCHS" --batch-size 100 --seeds 0 --angle-every 100 \
    --task-option eval_samples=25 --task-option test_samples=1000 \
    --out "$OUT" --no-progress
