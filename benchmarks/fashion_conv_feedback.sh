#!/usr/bin/env bash
# The feedback family against bp on Fashion-MNIST with a small conv net, three seeds.
# Usage: benchmarks/fashion_conv_feedback.sh [OUT] [EPOCHS]
set -euo pipefail
out=${1:-runs/bench-fashion-conv-feedback}
epochs=${2:-5}
creditlab compare --data fashion-mnist --net conv:1x28x28-c16k5p-c32k5p-128-10 --activation tanh \
  --rules bp,fa,dfa,sign-symmetry,kp,weight-mirror --seeds 0,1,2 --epochs "$epochs" \
  --batch-size 128 --weight-decay 5e-4 --no-progress --out "$out" ${CREDITLAB_ARGS:-}
