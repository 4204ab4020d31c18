#!/usr/bin/env bash
# Benchmarks of the target-propagation family against bp (docs/benchmarks.md, "Target propagation").
#
# Usage: benchmarks/target_propagation.sh OUT [mnist|fashion-mnist|cifar10-mlp|cifar10-conv ...]
# Each task runs `creditlab compare` into OUT/TASK (report.md, summary.json, plots, one folder per run).
# A finished run is skipped and an interrupted one resumes, so the script can be started again.
# One thread per run and a low priority, since the runs are long on a CPU: set THREADS to change it.
# On CIFAR-10 every rule trains its forward weights with Adam at 1e-3: bp's own SGD at 0.05 with
# momentum 0.9 diverges within ten steps on the conv net, which has no normalisation layers.
# The MLP trains without crops and flips: with them bp on it reached 55% test error after 10 epochs, against 52%.
set -euo pipefail

out=${1:?usage: benchmarks/target_propagation.sh OUT [TASK ...]}
shift
tasks=("$@")
if [ ${#tasks[@]} -eq 0 ]; then
    tasks=(mnist fashion-mnist cifar10-mlp cifar10-conv)
fi
export OMP_NUM_THREADS=${THREADS:-1}
python=${PYTHON:-python3}
rules=bp,tp,dtp,ddtp,ldrl
mlp5="mlp:784-256-256-256-256-256-10"

for task in "${tasks[@]}"; do
    case $task in
        mnist | fashion-mnist)
            args=(--data "$task" --net "$mlp5" --activation tanh --epochs "${EPOCHS:-20}" --batch-size 128
                  --seeds "${SEEDS:-0,1,2}") ;;
        cifar10-mlp)
            args=(--data cifar10 --net mlp:3072-1024-1024-1024-10 --activation tanh --epochs "${EPOCHS:-10}"
                  --batch-size 128 --seeds "${SEEDS:-0}" --optimizer adam --lr 1e-3 --no-augment) ;;
        cifar10-conv)
            args=(--data cifar10 --net conv:3x32x32-c32p-c64p-c128p-c256p-10 --activation elu
                  --epochs "${EPOCHS:-10}" --batch-size 128 --seeds "${SEEDS:-0}" --optimizer adam --lr 1e-3) ;;
        *)
            echo "unknown task $task: choose mnist, fashion-mnist, cifar10-mlp or cifar10-conv" >&2
            exit 2 ;;
    esac
    echo "$(date '+%F %T') starting $task" >&2
    nice -n 10 "$python" -m creditlab compare --rules "${RULES:-$rules}" "${args[@]}" --out "$out/$task" --no-progress
    echo "$(date '+%F %T') finished $task" >&2
done
