"""Time the batched perturbations of wp and np against plain forward passes, in one run.

For each net it reports, on one minibatch:
- np: the perturbed networks run as one batched pass, and a whole update,
  against as many plain forward passes of the same batch;
- wp: how a step's time splits between drawing the noise, the perturbed forward
  passes and forming the estimate;
- examples per second of a whole step of bp, wp, np and hebbian;
- the matmul throughput (FLOP/s) the batched passes reach, as a share of a large
  square float32 matmul timed in the same run.

Usage: python benchmarks/perturbation_speed.py --out DIR [--threads 1] [--draws 64]
"""

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from creditlab import io, nets, rules

log = logging.getLogger("perturbation_speed")

NETS = ("mlp:784-256-10", "mlp:784-256-256-256-256-256-10", "conv:1x28x28-c32k5p-c64k5p-256-10")


def best_time(fn, repeats: int) -> float:
    """Minimum wall time of fn() over `repeats` calls after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(repeats: int, size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_time(lambda: a @ b, repeats)


def bench_net(spec: str, batch: int, draws: int, repeats: int, peak: float) -> dict:
    torch.manual_seed(0)
    parsed = nets.parse(spec)
    x = torch.randn(batch, *parsed.input_shape)
    y = torch.randint(0, parsed.output_size, (batch,))
    result: dict = {"net": spec, "batch": batch, "draws": draws}

    net = nets.build(spec)
    with torch.no_grad():
        plain = best_time(lambda: [net(x) for _ in range(draws)], repeats)
    result["plain_forward_s"] = plain

    # np and wp both run `draws` perturbed networks: draws / 2 antithetic pairs, the default form.
    pairs = draws // 2
    node = rules.build("np", nets.build(spec), perturbations=pairs)
    noise = node.draw_noise(pairs, batch)
    result["np_noise_s"] = best_time(lambda: node.draw_noise(pairs, batch), repeats)
    result["np_pass_s"] = best_time(lambda: node.perturbed_pass(x, y, noise), repeats)
    result["np_pass_over_plain"] = result["np_pass_s"] / plain
    result["np_step_s"] = best_time(lambda: node.step(x, y), repeats)
    result["np_step_over_plain"] = result["np_step_s"] / plain
    clean = rules.build("np", nets.build(spec), perturbations=pairs, eligibility="clean")
    result["np_clean_step_s"] = best_time(lambda: clean.step(x, y), repeats)
    result["np_clean_step_over_plain"] = result["np_clean_step_s"] / plain
    result["np_pass_flops_share"] = flops(lambda: node.perturbed_pass(x, y, noise)) / result["np_pass_s"] / peak

    weight = rules.build("wp", nets.build(spec), perturbations=pairs)
    wnoise = weight.draw_noise(pairs)
    losses = weight.perturbed_losses(x, y, wnoise)
    changes = weight._loss_changes(losses, None)
    result["wp_noise_s"] = best_time(lambda: weight.draw_noise(pairs), repeats)
    result["wp_pass_s"] = best_time(lambda: weight.perturbed_losses(x, y, wnoise), repeats)
    result["wp_estimate_s"] = best_time(lambda: weight.estimate(changes, wnoise), repeats)
    result["wp_step_s"] = best_time(lambda: weight.step(x, y), repeats)
    result["wp_pass_over_plain"] = result["wp_pass_s"] / plain
    result["wp_noise_share_of_step"] = result["wp_noise_s"] / result["wp_step_s"]
    result["wp_pass_flops_share"] = flops(lambda: weight.perturbed_losses(x, y, wnoise)) / result["wp_pass_s"] / peak

    steps = {}
    for name in ("bp", "wp", "np", "hebbian"):
        rule = rules.build(name, nets.build(spec))
        steps[name] = batch / best_time(lambda: rule.step(x, y), repeats)
    result["examples_per_second_default_options"] = steps
    log.info("%s: %s", spec, json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for speed.json and speed.md")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--batch", type=int, default=64, help="examples per minibatch (default: 64)")
    parser.add_argument("--draws", type=int, default=64, help="perturbed networks per update (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement; the minimum is kept "
                        "(default: 5)")
    parser.add_argument("--nets", default=",".join(NETS), help=f"comma-separated net specs (default: {','.join(NETS)})")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    peak = matmul_peak(args.repeats)
    log.info("float32 matmul peak: %.1f GFLOP/s on %d threads", peak / 1e9, args.threads)

    results = [bench_net(spec, args.batch, args.draws, args.repeats, peak) for spec in args.nets.split(",")]
    environment = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                   "matmul_peak_gflops": peak / 1e9}

    out = Path(args.out)
    io.write_json(out / "speed.json", {"environment": environment, "results": results})
    lines = [f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s, {args.threads} thread(s), torch {torch.__version__}; "
             f"batch {args.batch}, {args.draws} perturbed networks per update.", "",
             "| net | np pass / plain | np step / plain (clean eligibility) | np noise (ms) | wp pass / plain "
             "| wp noise / pass / estimate (ms) | np, wp pass share of peak | examples/s bp, wp, np, hebbian |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["examples_per_second_default_options"]
        lines.append(f"| {r['net']} | {r['np_pass_over_plain']:.2f} | {r['np_step_over_plain']:.2f} "
                     f"({r['np_clean_step_over_plain']:.2f}) | {1e3 * r['np_noise_s']:.1f} | {r['wp_pass_over_plain']:.2f} "
                     f"| {1e3 * r['wp_noise_s']:.1f} / {1e3 * r['wp_pass_s']:.1f} / {1e3 * r['wp_estimate_s']:.1f} "
                     f"| {100 * r['np_pass_flops_share']:.0f}%, {100 * r['wp_pass_flops_share']:.0f}% "
                     f"| {s['bp']:,.0f}, {s['wp']:,.0f}, {s['np']:,.0f}, {s['hebbian']:,.0f} |")
    io.write_text(out / "speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
