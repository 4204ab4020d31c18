"""Figures of the microcircuit's apical mismatch over time, on the digits net (mlp:64-128-128-10, tanh).

1. self_predicting.png: the rms apical potential of each hidden layer while the
   self-predicting state is learned from random inputs (no teacher).
2. presentation.png: one presentation of 64 digits after that phase, with the
   teacher on from t = 0: the apical potentials rise from the self-prediction
   residual as the nudge reaches them, and the output error falls.
3. training.png: the apical rms at the start (self-prediction residual) and end
   (residual plus error signal) of each presentation, averaged per epoch,
   during the default 20-epoch digits run at batch size 64.

    python benchmarks/microcircuit_traces.py --out docs/figures
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from creditlab import data, io, nets, rules  # noqa: E402
from creditlab.nets.microcircuit import present  # noqa: E402
from creditlab.rules.microcircuit import Microcircuit  # noqa: E402
from creditlab.train import RunConfig, train  # noqa: E402

log = logging.getLogger("microcircuit_traces")


def save(figure, path: Path) -> None:
    figure.tight_layout()
    io.save_figure(path, figure)
    plt.close(figure)
    log.info("wrote %s", path)


def self_predicting_figure(rule: Microcircuit, out: Path) -> None:
    o = rule.options
    start = time.process_time()
    curve = rule.learn_self_predicting(o.self_predicting_presentations, o.self_predicting_batch)
    log.info("self-predicting phase: %.1f s CPU", time.process_time() - start)
    rule.self_predicting_ready.fill_(True)
    figure, ax = plt.subplots(figsize=(6, 3.8))
    shown = [o.self_predicting_batch * (i + 1) for i in range(len(curve))]
    for layer in range(len(curve[0])):
        ax.plot(shown, [row[layer] for row in curve], label=f"hidden layer {layer + 1}")
    ax.set_yscale("log")
    ax.set_xlabel("random input patterns shown (no teacher)")
    ax.set_ylabel("rms apical potential")
    ax.set_title("Learning the self-predicting state")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(figure, out / "microcircuit_self_predicting.png")


def presentation_figure(rule: Microcircuit, dataset, out: Path) -> None:
    x, y = dataset.test.x[:64], dataset.test.y[:64]
    result = present(rule.net, x, rule.targets(y), 10.0, 0.05, rule.rates(), record=True)
    times = [0.05 * i for i in range(result.steps)]
    figure, ax = plt.subplots(figsize=(6, 3.8))
    for layer, trace in enumerate(result.trace["apical"]):
        ax.plot(times, trace, label=f"apical, hidden layer {layer + 1}")
    ax.plot(times, result.trace["output_error"], "k--", label="output error |u_target - u_N| (rms)")
    ax.set_xlabel("time since the example and teacher arrived (ms), dt = 0.05 ms")
    ax.set_ylabel("rms potential")
    ax.set_title("Teacher's nudge reaching the apical dendrites")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save(figure, out / "microcircuit_presentation.png")


def training_figure(out: Path, run_folder: Path) -> None:
    start = time.perf_counter()
    summary = train(RunConfig(rule="microcircuit"), run_folder, progress=False)
    log.info("digits run: test error %.2f%%, %.1f s", 100 * summary["test_error"], time.perf_counter() - start)
    history = io.read_jsonl(run_folder / "metrics.jsonl")
    epochs = [h["epoch"] for h in history]
    figure, ax = plt.subplots(figsize=(6, 3.8))
    for layer in (1, 2):
        ax.plot(epochs, [h["rule_stats"][f"apical_rms_start_{layer}"] for h in history],
                label=f"layer {layer}, start (residual)")
        ax.plot(epochs, [h["rule_stats"][f"apical_rms_end_{layer}"] for h in history], "--",
                label=f"layer {layer}, end (residual + error)")
    ax.set_xlabel("epoch (digits, batch 64)")
    ax.set_ylabel("rms apical potential")
    ax.set_title(f"Apical mismatch during training (test error {100 * summary['test_error']:.1f}%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save(figure, out / "microcircuit_training.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/figures", help="folder for the PNG files (default: docs/figures)")
    p.add_argument("--run", default=None, help="run folder for the digits training run, kept afterwards "
                   "(default: a temporary folder, removed at the end)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    torch.manual_seed(0)
    dataset = data.load("digits")
    rule = rules.build("microcircuit", Microcircuit.make_net(nets.parse("mlp:64-128-128-10"), "tanh"))
    self_predicting_figure(rule, out)
    presentation_figure(rule, dataset, out)
    if args.run:
        training_figure(out, Path(args.run))
    else:
        with tempfile.TemporaryDirectory() as folder:
            training_figure(out, Path(folder) / "run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
