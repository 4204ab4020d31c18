"""Plot the angle between ep's update and the exact gradient as the nudging strength beta shrinks.

Trains the energy net briefly with ep, so the weights leave their random start.
At those weights it measures, for each beta and nudging variant, the angle per
layer between ep's update and the exact gradient of the cost at the free fixed
point, averaged over a few batches. The relaxations run to a tight tolerance in
float64, so what remains is the bias of a finite beta.

    python benchmarks/energy_beta_angle.py --data mnist --out /tmp/ep-beta
"""

import argparse
import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from creditlab import data, io, metrics, nets, rules  # noqa: E402
from creditlab.errors import CreditlabError  # noqa: E402

log = logging.getLogger("energy_beta_angle")

VARIANTS = ("one-sided", "symmetric")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="dataset: digits, mnist or fashion-mnist (default: digits)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: creditlab's search path)")
    p.add_argument("--net", default=None, help="net spec (default: mlp:64-128-128-10 for digits, mlp:784-500-10 otherwise)")
    p.add_argument("--activation", default="hard-sigmoid", help="activation of the energy net (default: hard-sigmoid)")
    p.add_argument("--cost", default="mse", choices=("mse", "ce"), help="ep's cost (default: mse)")
    p.add_argument("--train-steps", type=int, default=200, help="ep training steps before measuring (default: 200)")
    p.add_argument("--batches", type=int, default=4, help="batches the angles are averaged over (default: 4)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per batch (default: 64)")
    p.add_argument("--betas", default="1,0.3,0.1,0.03,0.01,0.003,0.001",
                   help="comma-separated nudging strengths (default: 1 down to 0.001)")
    p.add_argument("--steps", type=int, default=1000, help="step budget of every measured relaxation (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, help="output folder for beta_angle.json and beta_angle.png")
    return p.parse_args()


def train_briefly(rule, dataset, steps, batch_size, generator):
    optimizer = torch.optim.Adam(rule.parameters(), lr=1e-3)
    done = 0
    with tqdm(total=steps, desc="ep training", disable=None) as bar:
        while done < steps:
            for x, y in dataset.train.batches(batch_size, generator):
                rule.step(x, y)
                optimizer.step()
                done += 1
                bar.update()
                if done == steps:
                    return


def measure(args) -> dict:
    dataset = data.load(args.data, args.data_dir)
    spec = nets.parse(args.net or ("mlp:64-128-128-10" if args.data == "digits" else "mlp:784-500-10"))
    nets.check_fits(spec, dataset.input_shape, dataset.num_classes, dataset.name)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    net = rules.get("ep").make_net(spec, args.activation)
    train_briefly(rules.build("ep", net, cost=args.cost), dataset, args.train_steps, args.batch_size, generator)

    net = net.double()
    betas = [float(b) for b in args.betas.split(",")]
    batches = []
    for x, y in dataset.test.batches(args.batch_size, generator):
        batches.append((x.double(), y))
        if len(batches) == args.batches:
            break
    settings = dict(cost=args.cost, free_steps=args.steps, nudged_steps=args.steps, tol=1e-9)
    angles = {variant: [] for variant in VARIANTS}
    for variant in VARIANTS:
        for beta in tqdm(betas, desc=variant, disable=None):
            rule = rules.build("ep", net, beta=beta, nudging=variant, **settings)
            per_batch = []
            for x, y in batches:
                rule.step(x, y)
                per_batch.append(metrics.update_angles(rule, x, y))
            angles[variant].append(np.nanmean(np.array(per_batch), axis=0).tolist())
    return {"data": args.data, "net": spec.text, "activation": args.activation, "cost": args.cost,
            "train_steps": args.train_steps, "betas": betas, "angle_deg": angles}


def plot(result: dict, path: Path) -> None:
    betas = result["betas"]
    layers = len(result["angle_deg"][VARIANTS[0]][0])
    figure, axes = plt.subplots(1, layers, figsize=(4 * layers, 3.4), squeeze=False)
    for layer in range(layers):
        ax = axes[0][layer]
        for variant in VARIANTS:
            ax.plot(betas, [row[layer] for row in result["angle_deg"][variant]], marker="o", label=variant)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("beta")
        ax.set_ylabel("angle to exact gradient (degrees)")
        ax.set_title(f"layer {layer + 1}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(f"ep on {result['data']}, {result['net']} ({result['activation']}, {result['cost']})")
    figure.tight_layout()
    io.save_figure(path, figure)
    plt.close(figure)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    try:
        result = measure(args)
    except CreditlabError as exc:
        log.error("%s", exc)
        return 2
    io.write_json(out / "beta_angle.json", result)
    plot(result, out / "beta_angle.png")
    for variant in VARIANTS:
        first = result["angle_deg"][variant][0]
        last = result["angle_deg"][variant][-1]
        log.info("%s: mean angle %.2f deg at beta %g, %.3f deg at beta %g", variant, float(np.mean(first)),
                 result["betas"][0], float(np.mean(last)), result["betas"][-1])
    log.info("wrote %s", out / "beta_angle.png")
    return 0 if all(math.isfinite(a) for rows in result["angle_deg"].values() for row in rows for a in row) else 1


if __name__ == "__main__":
    raise SystemExit(main())
