"""Run several rules and seeds on one task and write a side-by-side report."""

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import re
from pathlib import Path

import torch

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
            checkpoint_interval: float = 300.0, jobs: int = 1) -> list[dict]:
    """Train every (rule, seed) pair with `base`'s settings; write summary.json, report.md and plots to `out`.

    `options` maps a rule name to its rule options. A run that diverges is
    recorded with status "diverged" and the others carry on. The task may add
    reference runs (the bandit adds supervised bp), labelled in the report.
    With `jobs` > 1 the runs go to that many worker processes, which share the
    CPU threads.
    """
    out = Path(out)
    options = options or {}
    unknown = [name for name in options if name not in rule_names]
    if jobs < 1:
        raise CreditlabError(f"invalid jobs {jobs}: give a positive number of worker processes")
    if unknown:
        raise CreditlabError(f"options given for rule {unknown[0]!r}, which is not in --rules; add it or drop the option")
    if not rule_names:
        raise CreditlabError("no rules to compare; give --rules as names separated by commas, e.g. bp,fa")
    if not seeds:
        raise CreditlabError("no seeds to run; give --seeds as integers separated by commas, e.g. 0,1,2")
    for items, kind in ((rule_names, "rule"), (seeds, "seed")):
        repeated = sorted({str(item) for item in items if items.count(item) > 1})
        if repeated:
            raise CreditlabError(f"{kind} {repeated[0]} is listed twice; list each {kind} once")
    configs = []
    for name in rule_names:
        rules.get(name)
        for seed in seeds:
            config = dataclasses.replace(base, rule=name, seed=seed, rule_options=options.get(name, {}))
            configs.append((None, config.resolved()))
    for label, reference in tasks.get(base.task).reference_runs(base):
        configs += [(label, dataclasses.replace(reference, seed=seed).resolved()) for seed in seeds]
    check_writable(out)

    names = [run_name(slug(label) if label else config.rule, config.seed) for label, config in configs]
    folders = [out / "runs" / name for name in names]
    if jobs > 1:
        summaries = _run_parallel([c for _, c in configs], folders, jobs, checkpoint_interval, progress)
    else:
        summaries = []
        bar = tqdm(list(zip(configs, names, folders)), desc="compare", disable=not progress or None)
        for (label, config), name, folder in bar:
            bar.set_postfix(run=name)
            summaries.append(_labelled(run_recording_divergence(config.to_dict(), str(folder), checkpoint_interval,
                                                                progress), label, name))
            io.write_json(out / "summary.json", {"runs": summaries})
    summaries = [_labelled(s, label, name) for s, (label, _), name in zip(summaries, configs, names)]

    histories = {}
    for (label, config), folder in zip(configs, folders):
        metrics_path = folder / "metrics.jsonl"
        histories[(label or config.rule, config.seed)] = io.read_jsonl(metrics_path) if metrics_path.exists() else []
    io.write_json(out / "summary.json", {"runs": summaries})
    report.write_report(out, summaries, histories)
    return summaries


def _labelled(summary: dict, label: str | None, name: str) -> dict:
    """Add the run's folder, and the report label of a task's reference run, to its summary."""
    summary = dict(summary, folder=f"runs/{name}")
    if label:
        summary["label"] = label
    return summary


def run_recording_divergence(config: dict, folder: str, checkpoint_interval: float, progress: bool = False,
                             threads: int | None = None, log_level: int | None = None) -> dict:
    """Train one run in its folder; a diverged run gets a summary with status "diverged" instead of raising.

    A worker process passes its thread count and the parent's log level, so its
    log lines look like the parent's.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if log_level is not None:
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    run = Run(RunConfig(**config), folder, progress=progress, checkpoint_interval=checkpoint_interval)
    try:
        return run.run()
    except DivergenceError as exc:
        log.error("%s", exc)
        summary = run.summary("diverged")
        summary["error"] = str(exc)
        io.write_json(Path(folder) / "summary.json", summary)
        return summary


def _run_parallel(configs, folders, jobs: int, checkpoint_interval: float, progress: bool) -> list[dict]:
    """Run the configs in `jobs` worker processes, splitting the CPU threads between them."""
    threads = max(1, torch.get_num_threads() // jobs)
    level = logging.getLogger().getEffectiveLevel()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run_recording_divergence, c.to_dict(), str(f), checkpoint_interval, False, threads,
                               level)
                   for c, f in zip(configs, folders)]
        bar = tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="compare",
                   disable=not progress or None)
        for _ in bar:
            pass
        return [f.result() for f in futures]
