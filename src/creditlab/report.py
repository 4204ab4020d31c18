"""Tables and plots of a comparison: report.md beside published figures, and PNG plots."""

import math
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import io  # noqa: E402

MLP_5x256 = "mlp:784-256-256-256-256-256-10"

# Published test errors (percent), keyed by (dataset, net spec, activation) and rule.
PUBLISHED: dict[tuple[str, str, str], dict[str, tuple[float, str]]] = {
    ("mnist", MLP_5x256, "tanh"): {
        "bp": (1.48, "Bartunov et al. 2018, Table 1 (up to 500 epochs, tuned)"),
        "fa": (1.85, "Bartunov et al. 2018, Table 1"),
        "dfa": (2.75, "Bartunov et al. 2018, Table 1"),
        # Bartunov et al. 2018 report 1.83% for dtp with alternating and 2.86% with parallel inverse training.
        "dtp": (1.83, "Bartunov et al. 2018, Table 1 (alternating inverse training)"),
    },
    # A net without hidden layers is a linear classifier, whatever the activation.
    ("mnist", "mlp:784-10", "tanh"): {
        "bp": (12.0, "LeCun et al. 1998, linear classifier on raw pixels, as listed on the MNIST page"),
    },
}


def published(dataset: str, net: str, activation: str, rule: str) -> tuple[float, str] | None:
    return PUBLISHED.get((dataset, net, activation), {}).get(rule)


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pct(values: list[float]) -> str:
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return "n/a"
    if sum(v is not None and not math.isnan(v) for v in values) == 1:
        return f"{100 * mean:.2f}"  # one run has no spread to show
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _angles(records: list[dict], key: str) -> str:
    rows = [r.get(key) for r in records if r.get(key)]
    if not rows:
        return "n/a"
    table = np.array(rows, dtype=float)
    # A layer without the quantity (no feedback weights, say) is NaN in every run: show n/a, not a warning.
    means = [np.nanmean(column) if np.isfinite(column).any() else math.nan for column in table.T]
    return " / ".join("n/a" if math.isnan(a) else f"{a:.0f}" for a in means)


def group_by_rule(records: list[dict]) -> dict[str, list[dict]]:
    """Group runs by their label (a sweep's rule and varied settings) or else by rule."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r.get("label") or r["rule"]].append(r)
    return groups


def finished_runs(group: list[dict]) -> tuple[list[dict], str]:
    """Return the finished runs of a group and the report's run count, e.g. "2 (+1 diverged)"."""
    finished = [r for r in group if r["status"] == "finished"]
    diverged = len(group) - len(finished)
    return finished, f"{len(finished)}" + (f" (+{diverged} diverged)" if diverged else "")


def table(records: list[dict]) -> str:
    groups = group_by_rule(records)
    bp_speed = _mean_std([r["examples_per_second"] for r in groups.get("bp", [])])[0]
    header = ("| rule | runs | test error % | val error % | train loss | update angle per layer (°) "
              "| weight angle per layer (°) | examples/s | relative to bp | forward-pass equivalents | published test error % |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for rule, group in groups.items():
        finished = [r for r in group if r["status"] == "finished"]
        diverged = len(group) - len(finished)
        runs = f"{len(finished)}" + (f" (+{diverged} diverged)" if diverged else "")
        speed = _mean_std([r["examples_per_second"] for r in finished])[0]
        relative = f"{speed / bp_speed:.2f}" if bp_speed and not math.isnan(speed) and not math.isnan(bp_speed) else "n/a"
        first = group[0]
        ref = published(first["dataset"], first["net"], first["activation"], first["rule"])
        ref_text = f"{ref[0]:.2f} ({ref[1]})" if ref else "—"
        loss = _mean_std([r["train_loss"] for r in finished])[0]
        lines.append(
            f"| {rule} | {runs} | {_pct([r['test_error'] for r in finished])} | {_pct([r['val_error'] for r in finished])} "
            f"| {loss:.4f} | {_angles(finished, 'update_angle_deg')} | {_angles(finished, 'weight_angle_deg')} "
            f"| {speed:,.0f} | {relative} | {_mean_std([r['forward_pass_equivalents_per_update'] for r in finished])[0]:.1f} "
            f"| {ref_text} |")
    return "\n".join(lines)


def _curves(histories: dict, rule: str, key: str, index: int | None = None) -> np.ndarray | None:
    runs = []
    for (name, _seed), history in histories.items():
        if name != rule or not history:
            continue
        values = []
        for h in history:
            value = h.get(key)
            if index is not None:
                # A rule may record fewer layers than others (no feedback into the first layer, say).
                value = value[index] if value and index < len(value) else math.nan
            values.append(value)
        runs.append([math.nan if v is None else v for v in values])
    if not runs:
        return None
    length = max(len(r) for r in runs)
    return np.array([r + [math.nan] * (length - len(r)) for r in runs], dtype=float)


def rule_style(rule_names: list[str], rule: str) -> dict:
    """Return plot keywords that tell up to 40 rules apart: 20 colours, then the same colours dashed."""
    index = rule_names.index(rule) if rule in rule_names else 0
    colours = plt.get_cmap("tab20").colors
    return {"color": colours[index % 20], "linestyle": "-" if index < 20 else "--"}


def outside_legend(figure, ax=None) -> None:
    """Draw one legend of every labelled line, right of the plots so that it covers none of them."""
    handles, labels = {}, []
    for axis in ([ax] if ax is not None else figure.axes):
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels:
        figure.legend([handles[label] for label in labels], labels, fontsize=8, loc="center left",
                      bbox_to_anchor=(1.0, 0.5))


def plot_errors(histories: dict, rule_names: list[str], path: Path) -> None:
    figure, ax = plt.subplots(figsize=(7, 4.5))
    for rule in rule_names:
        curves = _curves(histories, rule, "test_error")
        if curves is None:
            continue
        epochs = np.arange(1, curves.shape[1] + 1)
        mean = np.nanmean(curves, axis=0) * 100
        style = rule_style(rule_names, rule)
        ax.plot(epochs, mean, label=rule, **style)
        if len(curves) > 1:
            std = np.nanstd(curves, axis=0) * 100
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=style["color"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Test error per epoch (mean ± std over seeds)")
    figure.tight_layout()
    outside_legend(figure, ax)
    io.save_figure(path, figure)
    plt.close(figure)


def plot_angles(histories: dict, rule_names: list[str], key: str, title: str, path: Path) -> bool:
    layer_count = max((len(h[-1].get(key) or []) for h in histories.values() if h), default=0)
    if layer_count == 0:
        return False
    columns = min(layer_count, 3)
    rows = math.ceil(layer_count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    drawn = False
    for layer in range(layer_count):
        ax = axes[layer // columns][layer % columns]
        for rule in rule_names:
            curves = _curves(histories, rule, key, layer)
            if curves is None or np.all(np.isnan(curves)):
                continue
            ax.plot(np.arange(1, curves.shape[1] + 1), np.nanmean(curves, axis=0), label=rule,
                    **rule_style(rule_names, rule))
            drawn = True
        ax.set_title(f"layer {layer + 1}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("degrees")
        ax.set_ylim(0, 100)
        ax.axhline(90, color="grey", lw=0.5, ls="--")
        ax.grid(True, alpha=0.3)
    for extra in range(layer_count, rows * columns):
        axes[extra // columns][extra % columns].axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    outside_legend(figure)
    if drawn:
        io.save_figure(path, figure)
    plt.close(figure)
    return drawn


def classification_plots(out: Path, records: list[dict], histories: dict) -> list[str]:
    """Write the test error and angle plots of a classification comparison; return their file names."""
    rule_names = list(group_by_rule(records))
    plot_errors(histories, rule_names, out / "test_error.png")
    plots = ["test_error.png"]
    if plot_angles(histories, rule_names, "update_angle_deg",
                   "Angle between each rule's update and the exact gradient", out / "update_angle.png"):
        plots.append("update_angle.png")
    if plot_angles(histories, rule_names, "weight_angle_deg",
                   "Angle between feedback and forward weights", out / "weight_angle.png"):
        plots.append("weight_angle.png")
    return plots


def plot_curves(histories: dict, rule_names: list[str], key: str, path: Path, ylabel: str, title: str,
                x=None, xlabel: str = "epoch", scale: float = 1.0, log_y: bool = False) -> bool:
    """Plot one per-epoch value of every rule, mean ± std over seeds, against the epoch or x(record).

    Returns False, writing nothing, when no history has `key`.
    """
    x = x or (lambda record: record["epoch"])
    figure, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for rule in rule_names:
        curves = _curves(histories, rule, key)
        if curves is None or np.all(np.isnan(curves)):
            continue
        longest = max((h for (name, _), h in histories.items() if name == rule), key=len)
        xs = np.array([x(record) for record in longest], dtype=float)
        mean = np.nanmean(curves, axis=0) * scale
        style = rule_style(rule_names, rule)
        ax.plot(xs, mean, label=rule, **style)
        if len(curves) > 1:
            std = np.nanstd(curves, axis=0) * scale
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=style["color"])
        drawn = True
    if drawn:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(title)
        figure.tight_layout()
        outside_legend(figure, ax)
        io.save_figure(path, figure)
    plt.close(figure)
    return drawn


def write_report(out: Path, records: list[dict], histories: dict) -> None:
    """Write report.md and the PNG plots for a finished comparison, in the form of the first run's task."""
    from . import tasks

    out = Path(out)
    first = records[0] if records else {}
    task = tasks.get(first.get("task", "classification"))
    plots = task.report_plots(out, records, histories)
    seeds = sorted({r["seed"] for r in records})
    epochs = sorted({r["epochs"] for r in records})
    net = f"net `{first.get('net')}`" + (f" ({first.get('activation')})" if task.uses_activation else "")
    text = [
        "# creditlab comparison",
        "",
        f"Task {task.name}, dataset `{first.get('dataset')}`, {net}, "
        f"seeds {', '.join(map(str, seeds))}, epochs {', '.join(map(str, epochs))}.",
        task.report_notes(),
        "",
        task.report_table(records),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    io.write_text(out / "report.md", "\n".join(text))
