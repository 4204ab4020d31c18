"""Run several rules and seeds on one task and write a side-by-side report."""

import dataclasses
import logging
from pathlib import Path

from tqdm.auto import tqdm

from . import io, report, rules
from .errors import CreditlabError, DivergenceError
from .train import Run, RunConfig, check_writable

log = logging.getLogger(__name__)


def run_name(rule: str, seed: int) -> str:
    return f"{rule}-seed{seed}"


def compare(rule_names: list[str], base: RunConfig, seeds: list[int], out: str | Path,
            options: dict[str, dict] | None = None, progress: bool = True,
            checkpoint_interval: float = 300.0) -> list[dict]:
    """Train every (rule, seed) pair with `base`'s settings; write summary.json, report.md and plots to `out`.

    `options` maps a rule name to its rule options. A run that diverges is
    recorded with status "diverged" and the others carry on.
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
            configs.append(config.resolved())
    check_writable(out)

    records, histories = [], {}
    bar = tqdm(configs, desc="compare", disable=not progress or None)
    for config in bar:
        bar.set_postfix(run=run_name(config.rule, config.seed))
        folder = out / "runs" / run_name(config.rule, config.seed)
        run = Run(config, folder, progress=progress, checkpoint_interval=checkpoint_interval)
        try:
            summary = run.run()
        except DivergenceError as exc:
            log.error("%s", exc)
            summary = run.summary("diverged")
            summary["error"] = str(exc)
            io.write_json(folder / "summary.json", summary)
        records.append(summary)
        metrics_path = folder / "metrics.jsonl"
        histories[(config.rule, config.seed)] = io.read_jsonl(metrics_path) if metrics_path.exists() else []
        io.write_json(out / "summary.json", {"runs": records})
    report.write_report(out, records, histories)
    return records
