#!/bin/sh
# MNIST as a contextual bandit: bp, fa and dfa learn from a reward of 1 (right
# class) or 0, through REINFORCE with a running-mean baseline. Supervised bp
# on the same net is the reference. Writes OUT/report.md and the test error
# against the number of rewards seen.
#
#   benchmarks/bandit_mnist.sh [OUT] [EPOCHS] [RULES]
#
# Needs the MNIST IDX files where creditlab looks for them.
set -eu
OUT=${1:-runs/bench-bandit-mnist}
EPOCHS=${2:-20}
RULES=${3:-bp,fa,dfa}
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PYTHON" -m creditlab compare --task bandit --data mnist --net mlp:784-256-256-10 \
    --rules "$RULES" --epochs "$EPOCHS" --batch-size 64 --seeds 0 --optimizer adam --lr 1e-3 \
    --out "$OUT" --no-progress
