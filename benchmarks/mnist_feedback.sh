#!/usr/bin/env bash
# The feedback family against bp on full MNIST with the 5x256 tanh MLP, three seeds.
# Usage: benchmarks/mnist_feedback.sh [OUT] [EPOCHS]; set CREDITLAB_DATA or pass
# --data-dir through CREDITLAB_ARGS if MNIST is not in a standard place.
set -euo pipefail
out=${1:-runs/bench-mnist-feedback}
epochs=${2:-60}
creditlab compare --data mnist --net mlp:784-256-256-256-256-256-10 --activation tanh \
  --rules bp,fa,dfa,sign-symmetry,kp,weight-mirror --seeds 0,1,2 --epochs "$epochs" \
  --batch-size 128 --weight-decay 5e-4 --no-progress --out "$out" ${CREDITLAB_ARGS:-}
