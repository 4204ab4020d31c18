"""Run several rules and seeds on one task and write a side-by-side report."""

import dataclasses
import logging
import re
from pathlib import Path

from tqdm.auto import tqdm

from . import io, report, rules, tasks
from .errors import CreditlabError, DivergenceError
from .train import Run, RunConfig, check_writable

log = logging.getLogger(__name__)


def run_name(rule: str, seed: int) -> str:
    return f"{rule}-seed{seed}"


def slug(label: str) -> str:
    """Turn a report label such as 'bp (supervised)' into a folder name such as 'bp-supervised'."""
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")


def compare(rule_names: list[str], base: RunConfig, seeds: list[int], out: str | Path,
            options: dict[str, dict] | None = None, progress: bool = True,
            checkpoint_interval: float = 300.0) -> list[dict]:
    """Train every (rule, seed) pair with `base`'s settings; write summary.json, report.md and plots to `out`.

    `options` maps a rule name to its rule options. A run that diverges is
    recorded with status "diverged" and the others carry on. The task may add
    reference runs (the bandit adds supervised bp), labelled in the report.
    """
    out = Path(out)
    options = options or {}
    unknown = [name for name in options if name not in rule_names]
    if unknown:
        raise CreditlabError(f"options given for rule {unknown[0]!r}, which is not in --rules; add it or drop the option")
    configs = []
    for name in rule_names:
        rules.get(name)
        for seed in seeds:
            config = dataclasses.replace(base, rule=name, seed=seed, rule_options=options.get(name, {}))
            configs.append((None, config.resolved()))
    for label, reference in tasks.get(base.task).reference_runs(base):
        configs += [(label, dataclasses.replace(reference, seed=seed).resolved()) for seed in seeds]
    check_writable(out)

    records, histories = [], {}
    bar = tqdm(configs, desc="compare", disable=not progress or None)
    for label, config in bar:
        name = run_name(slug(label) if label else config.rule, config.seed)
        bar.set_postfix(run=name)
        folder = out / "runs" / name
        run = Run(config, folder, progress=progress, checkpoint_interval=checkpoint_interval)
        try:
            summary = run.run()
        except DivergenceError as exc:
            log.error("%s", exc)
            summary = run.summary("diverged")
            summary["error"] = str(exc)
            io.write_json(folder / "summary.json", summary)
        summary = dict(summary, folder=f"runs/{name}")
        if label:
            summary["label"] = label
        records.append(summary)
        metrics_path = folder / "metrics.jsonl"
        histories[(label or config.rule, config.seed)] = io.read_jsonl(metrics_path) if metrics_path.exists() else []
        io.write_json(out / "summary.json", {"runs": records})
    report.write_report(out, records, histories)
    return records
