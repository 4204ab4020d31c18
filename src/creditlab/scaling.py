"""The scaling study of weight and node perturbation.

Part one measures the mean cosine between each rule's estimate and the exact
gradient on a fixed net and minibatch. It varies the number of draws K, the
layer width and the depth, and sets the small-sigma theory's value beside each
point. Part two trains bp, wp, np and hebbian on one dataset and compares the
test error each reaches within a fixed budget of forward passes per training
example, with a linear classifier beside them.

Theory (ratio of expectations, small sigma, antithetic pairs):
wp: each draw gives (eps . g) eps with eps ~ N(0, I_N), so
    E|g_K - g|^2 = (N + 1) |g|^2 / K and cos = sqrt(K / (K + N + 1)).
np: per example b and layer l the draw gives (eps . d_b) eps_l (x) [h_b; 1] / B,
    with d_b the example's loss gradient at every preactivation, so
    E|g_K - g|^2 = sum_b sum_l |[h_b; 1]|^2 (|d_b|^2 n_l + |d_bl|^2) / (K B^2),
    where n_l counts layer l's units; perturbing one layer at a time replaces
    |d_b|^2 by |d_bl|^2.
Either way cos = |g| / sqrt(|g|^2 + E|g_K - g|^2), which grows as sqrt(K)
while K is small against the effective dimension.
"""

import logging
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from . import data, io, nets, rules  # noqa: E402
from .errors import CreditlabError  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DEFAULT_WIDTHS = (16, 32, 64, 128, 256, 512)
DEFAULT_DEPTHS = (1, 2, 3, 4, 6, 8)


# -- theory -------------------------------------------------------------------


def wp_expected_error(rule, x, y, draws: int) -> float:
    """E|g_K - g|^2 of antithetic weight perturbation with K draws, small-sigma limit."""
    params = list(rule.net.parameters())
    n = sum(p.numel() for p in params)
    if rule.options.per_layer:
        # Each layer has its own draws: N and |g|^2 are the layer's own.
        return sum((sum(p.numel() for p in layer) + 1) * float(g.pow(2).sum()) / draws
                   for layer, g in zip(rule.layers(), rule.reference_gradients(x, y)))
    squared = float(sum(g.pow(2).sum() for g in rule.reference_gradients(x, y)))
    return (n + 1) * squared / draws


def np_expected_error(rule, x, y, draws: int) -> float:
    """E|g_K - g|^2 of antithetic per-example node perturbation with K draws, small-sigma limit (dense nets)."""
    if any(block.is_conv for block in rule.net.blocks):
        raise CreditlabError("the node-perturbation theory covers dense layers only; use an mlp net spec")
    if rule.options.noise != "per-example":
        raise CreditlabError("the node-perturbation theory covers per-example noise only; set noise=per-example")
    batch = len(y)
    with torch.enable_grad():
        h = x
        inputs, preactivations = [], []
        for block in rule.net.blocks:
            inputs.append(block.prepare(h).detach())
            z = block.preactivation(h)
            preactivations.append(z)
            h = block.nonlinearity(z)
        # Per-example gradients: the examples do not interact, so row b of the
        # gradient of the summed losses is example b's own gradient.
        total = rule.example_losses(h, y).sum()
        deltas = torch.autograd.grad(total, preactivations)
    layer_norms = torch.stack([d.flatten(1).pow(2).sum(1) for d in deltas])  # (L, B)
    all_norms = layer_norms.sum(0)
    error = 0.0
    for h_in, d, norms in zip(inputs, deltas, layer_norms):
        units = d[0].numel()
        spread = norms if rule.options.per_layer else all_norms
        input_norms = h_in.pow(2).sum(1) + 1.0
        error += float((input_norms * (spread * units + norms)).sum())
    return error / (draws * batch**2)


def expected_cosine(rule, x, y, draws: int) -> float:
    """Cosine between the estimate and the exact gradient predicted by the small-sigma theory."""
    squared = float(sum(g.pow(2).sum() for g in rule.reference_gradients(x, y)))
    error = (wp_expected_error if rule.name == "wp" else np_expected_error)(rule, x, y, draws)
    return math.sqrt(squared / (squared + error))


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


# -- part one: cosine against K, width and depth -------------------------------


def measure_cosine(rule_name: str, spec: str, x, y, draws: int, repeats: int, options: dict) -> dict:
    """Mean and standard error of the cosine over `repeats` independent estimates, and the theory's value."""
    torch.manual_seed(0)
    net = nets.build(spec, "tanh")
    rule = rules.build(rule_name, net, **{**options, "perturbations": draws})
    exact = torch.cat([g.flatten() for g in rule.reference_gradients(x, y)])
    cosines = []
    for _ in range(repeats):
        rule.step(x, y)
        estimate = torch.cat([p.grad.flatten() for layer in rule.layers() for p in layer])
        cosines.append(float(estimate @ exact / (estimate.norm() * exact.norm())))
    values = np.array(cosines)
    return {"rule": rule_name, "net": spec, "draws": draws, "measured": float(values.mean()),
            "stderr": float(values.std(ddof=1) / math.sqrt(repeats)) if repeats > 1 else 0.0,
            "theory": expected_cosine(rule, x, y, draws),
            "parameters": sum(p.numel() for p in net.parameters())}


def _hidden_spec(inputs: int, widths: list[int], outputs: int) -> str:
    return "mlp:" + "-".join(str(s) for s in [inputs, *widths, outputs])


def cosine_study(x, y, classes: int, repeats: int, ks, widths, depths, draws: int, base_width: int,
                 options: dict, progress: bool = True) -> dict:
    """Run the three sweeps for wp and np; return their points and fitted slopes."""
    inputs = x[0].numel()
    sweeps = {
        "K": [(k, _hidden_spec(inputs, [base_width] * 2, classes), k) for k in ks],
        "width": [(w, _hidden_spec(inputs, [w] * 2, classes), draws) for w in widths],
        "depth": [(d, _hidden_spec(inputs, [base_width] * d, classes), draws) for d in depths],
    }
    jobs = [(sweep, value, spec, k, name) for sweep, points in sweeps.items() for value, spec, k in points
            for name in ("wp", "np")]
    results: dict = {sweep: {"wp": [], "np": []} for sweep in sweeps}
    for sweep, value, spec, k, name in tqdm(jobs, desc="cosine sweeps", disable=not progress or None):
        point = measure_cosine(name, spec, x, y, k, repeats, options.get(name, {}))
        point["x"] = value
        results[sweep][name].append(point)
        log.info("%s %s=%s (%s, K=%d): cosine %.4f, theory %.4f", name, sweep, value, spec, k,
                 point["measured"], point["theory"])
    slopes = {}
    for sweep, by_rule in results.items():
        for name, points in by_rule.items():
            xs = [p["x"] for p in points]
            slopes[f"{name} {sweep}"] = {"measured": loglog_slope(xs, [p["measured"] for p in points]),
                                         "theory": loglog_slope(xs, [p["theory"] for p in points])}
    return {"sweeps": results, "slopes": slopes}


def plot_cosines(study: dict, path: Path) -> None:
    labels = {"K": "draws K", "width": "hidden width (two layers)", "depth": "hidden layers"}
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (sweep, by_rule) in zip(axes, study["sweeps"].items()):
        for name, colour in (("wp", "tab:red"), ("np", "tab:blue")):
            points = by_rule[name]
            xs = [p["x"] for p in points]
            slope = study["slopes"][f"{name} {sweep}"]
            ax.errorbar(xs, [p["measured"] for p in points], yerr=[p["stderr"] for p in points], fmt="o",
                        color=colour, label=f"{name} measured (slope {slope['measured']:+.2f})")
            ax.plot(xs, [p["theory"] for p in points], "--", color=colour,
                    label=f"{name} theory (slope {slope['theory']:+.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(v) for v in xs], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel(labels[sweep])
        ax.set_ylabel("cosine with the exact gradient")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle("Perturbation estimates against the exact gradient (mean over repeats, fixed minibatch)")
    figure.tight_layout()
    io.save_figure(path, figure)
    plt.close(figure)


# -- part two: test error at a fixed budget of forward passes ----------------


def passes_per_update(rule_name: str, spec: str, options: dict) -> float:
    """Forward-pass equivalents of one update (a backward pass counts as two), from one step on random data."""
    from .metrics import forward_pass_equivalents

    cls = rules.get(rule_name)
    parsed = nets.parse(spec)
    rule = rules.build(rule_name, cls.make_net(parsed, "tanh"), **options)
    x = torch.randn(2, *parsed.input_shape)
    stats = rule.step(x, torch.zeros(2, dtype=torch.long))
    return forward_pass_equivalents(stats.get("forward_passes", 1), stats.get("backward_passes", 0))


def budget_study(base, budget: float, max_epochs: int, options: dict, out: Path, progress: bool = True) -> list[dict]:
    """Train bp, wp, np, hebbian and a linear classifier within `budget` forward passes per training example."""
    import dataclasses

    from .train import Run

    parsed = nets.parse(base.net)
    linear = _hidden_spec(parsed.input_size, [], parsed.output_size)
    # The cheapest runs go first, so their figures exist while wp is still training.
    entries = [("bp", "bp", base.net), ("linear", "bp", linear), ("hebbian", "hebbian", base.net),
               ("np", "np", base.net), ("wp", "wp", base.net)]
    results = []
    for label, rule_name, spec in entries:
        rule_options = options.get(label, {})
        cost = passes_per_update(rule_name, spec, rule_options)
        epochs = max(1, min(max_epochs, int(budget // cost)))
        config = dataclasses.replace(base, rule=rule_name, net=spec, epochs=epochs, rule_options=rule_options)
        log.info("budget study: %s on %s for %d epochs at %.0f passes per update", label, spec, epochs, cost)
        summary = Run(config, out / "runs" / label, progress=progress).run()
        history = io.read_jsonl(out / "runs" / label / "metrics.jsonl")
        curve = [{"passes": cost * r["epoch"], "test_error": r["test_error"]} for r in history]
        within = [p for p in curve if p["passes"] <= budget + 1e-9]
        results.append({"label": label, "rule": rule_name, "net": spec, "epochs": epochs,
                        "passes_per_update": cost, "curve": curve, "rule_options": rule_options,
                        "error_at_budget": within[-1]["test_error"] if within else math.nan,
                        "passes_used": within[-1]["passes"] if within else math.nan,
                        "examples_per_second": summary["examples_per_second"]})
    return results


def plot_budget(results: list[dict], budget: float, title: str, path: Path) -> None:
    figure, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.plot([p["passes"] for p in r["curve"]], [100 * p["test_error"] for p in r["curve"]], "o-", ms=3,
                label=f"{r['label']} ({r['passes_per_update']:.0f} passes/update)")
    ax.axvline(budget, color="grey", ls="--", lw=1, label=f"budget {budget:.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("forward-pass equivalents per training example")
    ax.set_ylabel("test error (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    figure.tight_layout()
    io.save_figure(path, figure)
    plt.close(figure)


# -- the whole study ----------------------------------------------------------


def write_report(out: Path, study: dict | None, budget: list[dict] | None, settings: dict) -> None:
    lines = ["# Scaling of weight and node perturbation", ""]
    if study is not None:
        lines += ["Cosine between each estimate and the exact gradient on one fixed minibatch, "
                  f"{settings['repeats']} repeats per point; theory from the small-sigma formulas in "
                  "`creditlab.scaling`.", "",
                  "| sweep | rule | measured log-log slope | theory slope on the same points |", "|---|---|---|---|"]
        for key, slope in study["slopes"].items():
            name, sweep = key.split(" ")
            lines.append(f"| {sweep} | {name} | {slope['measured']:+.3f} | {slope['theory']:+.3f} |")
        lines += ["", "![cosine](cosine.png)", ""]
    if budget is not None:
        lines += [f"Test error within {settings['budget']:.0f} forward-pass equivalents per training example "
                  f"({settings['budget_data']}, net {settings['budget_net']}).", "",
                  "| rule | net | passes per update | epochs | passes used | test error % at budget | examples/s |",
                  "|---|---|---|---|---|---|---|"]
        for r in budget:
            lines.append(f"| {r['label']} | {r['net']} | {r['passes_per_update']:.0f} | {r['epochs']} "
                         f"| {r['passes_used']:.0f} | {100 * r['error_at_budget']:.2f} | {r['examples_per_second']:,.0f} |")
        lines += ["", "![budget](budget.png)", ""]
    io.write_text(out / "report.md", "\n".join(lines))


def run(out: str | Path, data_name: str = "digits", batch_size: int = 64, repeats: int = 10,
        ks=DEFAULT_KS, widths=DEFAULT_WIDTHS, depths=DEFAULT_DEPTHS, draws: int = 16, base_width: int = 64,
        budget_config=None, budget: float = 640.0, max_epochs: int = 20, options: dict | None = None,
        data_dir: str | None = None, skip_cosine: bool = False, progress: bool = True) -> dict:
    """Run the cosine sweeps and, if `budget_config` is given, the budget study; write results to `out`."""
    out = Path(out)
    options = options or {}
    settings = {"data": data_name, "batch_size": batch_size, "repeats": repeats, "draws": draws,
                "base_width": base_width, "budget": budget}
    result: dict = {"settings": settings}
    study = None
    if not skip_cosine:
        if repeats < 2:
            raise CreditlabError(f"invalid repeats {repeats}: give at least 2 so each point has a standard error")
        dataset = data.load(data_name, data_dir)
        x, y = dataset.train.x[:batch_size], dataset.train.y[:batch_size]
        study = cosine_study(x, y, dataset.num_classes, repeats, ks, widths, depths, draws, base_width,
                             options, progress)
        plot_cosines(study, out / "cosine.png")
        result["cosine"] = study
        # Written now as well, so the sweeps' results exist while the training runs go on.
        io.write_json(out / "scaling.json", result)
        write_report(out, study, None, settings)
    budget_results = None
    if budget_config is not None:
        settings.update(budget_data=budget_config.data, budget_net=budget_config.net)
        budget_results = budget_study(budget_config, budget, max_epochs, options, out / "budget", progress)
        plot_budget(budget_results, budget, f"{budget_config.data}, {budget_config.net}", out / "budget.png")
        result["budget"] = budget_results
    io.write_json(out / "scaling.json", result)
    write_report(out, study, budget_results, settings)
    return result
