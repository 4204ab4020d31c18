"""Online learning curve on MNIST: one example per update, test error every N presentations.

Streams the training set (a fixed shuffled order per pass) through one rule in
online mode: batch size 1, with the rule's online optimizer defaults unless --lr
is given. Records test and validation error, wall-clock and CPU time and, for
the microcircuit, the simulated time per example. Stops after --presentations
examples or --hours of wall-clock time, whichever comes first. Results go to
OUT/results.json and OUT/learning_curve.png after every evaluation, and a
checkpoint to OUT/state.pt, so running the same command again resumes.

    CREDITLAB_DATA=/path/to/data python benchmarks/online_mnist.py --rule microcircuit \\
        --presentations 550000 --out /tmp/online-mnist/microcircuit
"""

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from creditlab import data, io, metrics, rules
from creditlab.errors import CreditlabError
from creditlab.train import RunConfig, build_rule, make_optimizer

log = logging.getLogger("online_mnist")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rule", default="microcircuit", help="rule name (default: microcircuit)")
    p.add_argument("--net", default="mlp:784-256-256-10", help="net spec (default: mlp:784-256-256-10)")
    p.add_argument("--data", default="mnist", help="dataset (default: mnist)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: $CREDITLAB_DATA and "
                   "the usual places, see the README)")
    p.add_argument("--presentations", type=int, default=550_000,
                   help="training examples to present in total (default: 550000, ten passes over 55000)")
    p.add_argument("--hours", type=float, default=math.inf, help="wall-clock budget in hours (default: none)")
    p.add_argument("--eval-every", type=int, default=5000, help="presentations between evaluations (default: 5000)")
    p.add_argument("--lr", type=float, default=None, help="optimizer learning rate (default: the rule's online default)")
    p.add_argument("--seed", type=int, default=0, help="random seed of weights and example order (default: 0)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE", help="rule option, repeatable")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--out", required=True, help="output folder; running again with it resumes")
    return p.parse_args(argv)


def evaluate(rule, dataset) -> dict:
    return {"test_error": metrics.error_rate(rule, dataset.test), "val_error": metrics.error_rate(rule, dataset.val)}


def plot(out: Path, curve: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["presentations"] for c in curve], [100 * c["test_error"] for c in curve], marker="o", ms=3)
    ax.set_xlabel("training examples presented (one update each)")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    figure.tight_layout()
    io.save_figure(out / "learning_curve.png", figure)
    plt.close(figure)


class Stream:
    """The rule, its optimizer and the position in the example stream, saved to and resumed from OUT/state.pt."""

    def __init__(self, args, out: Path):
        options = dict(item.split("=", 1) for item in args.option)
        self.config = RunConfig(rule=args.rule, data=args.data, net=args.net, batch_size=1, online=True, lr=args.lr,
                                seed=args.seed, data_dir=args.data_dir, rule_options=options).resolved()
        self.dataset = data.load(self.config.data, self.config.data_dir)
        torch.manual_seed(self.config.seed)
        self.rule = build_rule(self.config, self.dataset)
        self.optimizer = make_optimizer(self.config, self.rule)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.order = torch.randperm(len(self.dataset.train), generator=self.generator)
        self.done, self.seconds, self.cpu, self.curve = 0, 0.0, 0.0, []
        self.state_path, self.results_path = out / "state.pt", out / "results.json"
        if self.state_path.exists():
            state = torch.load(self.state_path, weights_only=True)
            self.rule.load_state_dict(state["rule"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch"])
            self.order, self.done, self.seconds, self.cpu = state["order"], state["done"], state["seconds"], state["cpu"]
            self.curve = io.read_json(self.results_path)["curve"]
            log.info("resuming at %d presentations", self.done)
        elif self.results_path.exists():
            raise CreditlabError(f"{out} contains results but no state.pt; choose another --out")

    def train(self, stop: int) -> float:
        """Present examples one at a time until `stop` have been shown in total; return the last loss."""
        wall, cpu = time.perf_counter(), time.process_time()
        loss = math.nan
        while self.done < stop:
            position = self.done % len(self.order)
            if position == 0 and self.done > 0:
                self.order = torch.randperm(len(self.dataset.train), generator=self.generator)
            index = self.order[position:position + 1]
            loss = float(self.rule.step(self.dataset.train.x[index], self.dataset.train.y[index])["loss"])
            self.optimizer.step()
            self.done += 1
        self.seconds += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return loss

    def evaluate(self) -> dict:
        record = {"presentations": self.done, "wall_seconds": self.seconds, "cpu_seconds": self.cpu,
                  "test_error": metrics.error_rate(self.rule, self.dataset.test),
                  "val_error": metrics.error_rate(self.rule, self.dataset.val)}
        record.update(self.rule.epoch_metrics(self.dataset))
        self.curve.append(record)
        return record

    def save(self, args) -> None:
        results = {
            "rule": args.rule, "net": self.config.net, "config": self.config.to_dict(), "curve": self.curve,
            "rule_options": dataclasses.asdict(self.rule.options),
            "wall_ms_per_example": 1000 * self.seconds / self.done, "cpu_ms_per_example": 1000 * self.cpu / self.done,
            "simulated_ms_per_example": getattr(self.rule.options, "presentation_ms", None),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": os.uname().machine,
            "command": " ".join(sys.argv),
        }
        io.write_json(self.results_path, results)
        io.save_torch(self.state_path, {"rule": self.rule.state_dict(), "optimizer": self.optimizer.state_dict(),
                                        "generator": self.generator.get_state(), "torch": torch.get_rng_state(),
                                        "order": self.order, "done": self.done, "seconds": self.seconds,
                                        "cpu": self.cpu})


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stream = Stream(args, out)
    budget = args.hours * 3600
    bar = tqdm(total=args.presentations, initial=stream.done, desc=f"{args.rule} online", mininterval=10)
    while stream.done < args.presentations and stream.seconds < budget:
        before = stream.done
        stop = min(args.presentations, stream.done + args.eval_every - stream.done % args.eval_every)
        loss = stream.train(stop)
        bar.update(stream.done - before)
        if not math.isfinite(loss):
            raise CreditlabError(f"{args.rule} diverged after {stream.done} presentations; lower --lr")
        record = stream.evaluate()
        log.info("%d presentations: test error %.2f%%, %.2f ms wall per example", stream.done,
                 100 * record["test_error"], 1000 * stream.seconds / stream.done)
        stream.save(args)
        plot(out, stream.curve, f"{args.rule} online on {args.data} ({stream.config.net})")
    bar.close()
    return 0


if __name__ == "__main__":
    rules.names()  # import every rule family before options are parsed
    sys.exit(main())
