"""Benchmark the energy-based rules against bp on MNIST or Fashion-MNIST, on the same layer shapes.

Runs `creditlab.compare.compare` for every net, one folder each under --out.
Then it writes energy_table.md beside each compare report, with the test error
(mean ± std over seeds), relaxation steps per update, seconds per epoch and
their ratio to bp's, and the published figure where one is known. Finished
runs are not repeated, so the command can be restarted after an interruption.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/energy_mnist.py --data mnist \\
        --nets mlp:784-500-10 --seeds 0,1,2 --epochs 30 --out /tmp/energy-mnist
"""

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch

from creditlab import io, report
from creditlab.compare import compare, run_name
from creditlab.train import RunConfig

log = logging.getLogger("energy_mnist")

RULES = "bp,ep,ap,pc,chl,generec"

# Rule options of the benchmark, beyond each rule's defaults. The step budgets
# are what the two-hidden-layer MNIST net needs to settle, and pc takes the
# cross-entropy output that bp and the other rules train with.
BENCHMARK_OPTIONS = {
    "ep": {"free_steps": 30, "nudged_steps": 10},
    "ap": {"free_steps": 40, "adjoint_steps": 40},
    "pc": {"cost": "ce"},
    "chl": {"free_steps": 60, "clamped_steps": 30},
    "generec": {"free_steps": 40, "clamped_steps": 20},
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist", help="mnist or fashion-mnist (default: mnist)")
    p.add_argument("--data-dir", default=None, help="folder with the IDX files (default: creditlab's search path)")
    p.add_argument("--nets", default="mlp:784-500-10,mlp:784-500-500-10",
                   help="comma-separated net specs (default: mlp:784-500-10,mlp:784-500-500-10)")
    p.add_argument("--activation", default="hard-sigmoid", help="activation of every net (default: hard-sigmoid)")
    p.add_argument("--rules", default=RULES, help=f"comma-separated rules (default: {RULES})")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default: 30)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per update (default: 64)")
    p.add_argument("--angle-every", type=int, default=100,
                   help="steps between update-angle measurements (default: 100)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="RULE.KEY=VALUE",
                   help="rule option replacing the benchmark's own, repeatable")
    p.add_argument("--out", required=True, help="output folder; one subfolder per net")
    return p.parse_args()


def rule_options(items: list[str]) -> dict[str, dict]:
    options = {rule: dict(values) for rule, values in BENCHMARK_OPTIONS.items()}
    for item in items:
        key, _, value = item.partition("=")
        rule, _, name = key.partition(".")
        options.setdefault(rule, {})[name] = value
    return options


def epoch_seconds(folder: Path) -> float:
    records = io.read_jsonl(folder / "metrics.jsonl")
    return float(np.mean([r["seconds"] for r in records]))


def relaxation_steps(folder: Path) -> float:
    records = io.read_jsonl(folder / "metrics.jsonl")
    values = [r.get("rule_stats", {}).get("relaxation_steps") for r in records]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def table(out: Path, records: list[dict], seeds: list[int]) -> str:
    groups = report.group_by_rule(records)
    seconds = {rule: float(np.mean([epoch_seconds(out / "runs" / run_name(rule, s)) for s in seeds]))
               for rule in groups}
    lines = ["| rule | runs | test error % | relaxation steps per update | seconds per epoch | relative to bp | "
             "published test error % |", "|---|---|---|---|---|---|---|"]
    for rule, group in groups.items():
        finished = [r for r in group if r["status"] == "finished"]
        errors = [100 * r["test_error"] for r in finished]
        error = f"{np.mean(errors):.2f} ± {np.std(errors, ddof=1) if len(errors) > 1 else 0.0:.2f}" if errors else "n/a"
        steps = np.mean([relaxation_steps(out / "runs" / run_name(rule, r["seed"])) for r in finished]) \
            if finished else math.nan
        ratio = seconds[rule] / seconds["bp"] if "bp" in seconds else math.nan
        first = group[0]
        published = report.published(first["dataset"], first["net"], first["activation"], rule)
        published_text = f"{published[0]:.2f} ({published[1]})" if published else "—"
        steps_text = "—" if math.isnan(steps) else f"{steps:.1f}"
        lines.append(f"| {rule} | {len(finished)}/{len(group)} | {error} | {steps_text} | {seconds[rule]:.1f} "
                     f"| {ratio:.1f} | {published_text} |")
    return "\n".join(lines)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [r.strip() for r in args.rules.split(",") if r.strip()]
    options = {rule: values for rule, values in rule_options(args.option).items() if rule in names}
    for spec in [n.strip() for n in args.nets.split(",") if n.strip()]:
        out = Path(args.out) / spec.replace(":", "-")
        base = RunConfig(data=args.data, data_dir=args.data_dir, net=spec, activation=args.activation,
                         epochs=args.epochs, batch_size=args.batch_size, angle_every=args.angle_every)
        log.info("net %s: rules %s, seeds %s, %d epochs -> %s", spec, ",".join(names), args.seeds, args.epochs, out)
        records = compare(names, base, seeds, out, options, progress=False)
        text = "\n".join([f"# Energy-based rules on {args.data}, {spec} ({args.activation})", "",
                          f"{args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}; rule options "
                          f"{options}; torch {torch.__version__}, one thread.", "", table(out, records, seeds), ""])
        io.write_text(out / "energy_table.md", text)
        log.info("wrote %s", out / "energy_table.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
