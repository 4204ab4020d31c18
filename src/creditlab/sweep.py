"""Grid and random searches over rules, seeds, options and datasets, run as Ray tasks.

A sweep file (TOML) has three parts, all optional but `grid` or `random`:

    out = "runs/sweep-lr"          # output folder (default: runs/sweep-<file stem>)
    [base]                         # RunConfig fields shared by every trial
    data = "digits"
    epochs = 10
    [grid]                         # every combination of these lists
    rule = ["bp", "fa"]
    seed = [0, 1, 2]
    lr = [1e-3, 3e-3]
    "kp.decay" = [1e-3, 1e-2]      # RULE.OPTION varies only that rule's trials
    [random]                       # `samples` draws, each key from a distribution
    samples = 8
    lr = { log_uniform = [1e-4, 1e-2] }
    batch_size = { choice = [32, 64] }

Each trial is an ordinary run folder under OUT/trials/; a finished trial is
skipped when the sweep starts again, and a trial whose worker dies is retried
by Ray and resumes from its checkpoint.
"""

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from . import io, report, rules
from .compare import run_recording_divergence
from .errors import CreditlabError
from .train import RunConfig, check_writable

log = logging.getLogger(__name__)

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_TOP_KEYS = ("out", "base", "grid", "random")
_DISTRIBUTIONS = ("choice", "uniform", "log_uniform", "int_uniform")


def _suggest(key: str, valid) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _check_key(key: str, where: str, path: Path) -> None:
    if "." in key:
        rule, _, name = key.partition(".")
        cls = rules.get(rule)
        options = [f.name for f in dataclasses.fields(cls.Options)]
        if name not in options:
            raise CreditlabError(f"{path}: unknown option {name!r} of rule {rule!r} in [{where}]{_suggest(name, options)}")
    elif key not in _FIELDS or key == "rule_options":
        raise CreditlabError(f"{path}: unknown key {key!r} in [{where}]{_suggest(key, [k for k in _FIELDS if k != 'rule_options'])}")


def load_sweep(path: str | Path) -> dict:
    """Read and validate a sweep file; raise a one-line error naming the bad key or value."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CreditlabError(f"sweep file {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CreditlabError(f"cannot read sweep file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CreditlabError(f"{path} is not valid TOML ({exc}); fix the syntax") from None
    for key in spec:
        if key not in _TOP_KEYS:
            raise CreditlabError(f"{path}: unknown top-level key {key!r}{_suggest(key, _TOP_KEYS)}")
    if "grid" not in spec and "random" not in spec:
        raise CreditlabError(f"{path} has neither [grid] nor [random]; add one of them")
    for key in spec.get("base", {}):
        _check_key(key, "base", path)
    for key, values in spec.get("grid", {}).items():
        _check_key(key, "grid", path)
        if not isinstance(values, list) or not values:
            raise CreditlabError(f"{path}: [grid] {key} must be a non-empty list, not {values!r}")
    randomised = dict(spec.get("random", {}))
    samples = randomised.pop("samples", None)
    if "random" in spec and (not isinstance(samples, int) or samples <= 0):
        raise CreditlabError(f"{path}: [random] needs samples = a positive integer, not {samples!r}")
    for key, dist in randomised.items():
        _check_key(key, "random", path)
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in _DISTRIBUTIONS:
            raise CreditlabError(f"{path}: [random] {key} must be one of {{ choice = [...] }}, "
                                 f"{{ uniform = [low, high] }}, {{ log_uniform = [low, high] }}, {{ int_uniform = [low, high] }}")
        _check_distribution(key, dist, path)
    return spec


def _check_distribution(key: str, dist: dict, path: Path) -> None:
    """Reject arguments a distribution cannot draw from: an empty choice, bounds that are not two numbers."""
    (kind, args), = dist.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise CreditlabError(f"{path}: [random] {key}: choice needs a non-empty list, not {args!r}")
        return
    numeric = (int,) if kind == "int_uniform" else (int, float)
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, numeric) and not isinstance(a, bool) for a in args) or args[0] > args[1]):
        raise CreditlabError(f"{path}: [random] {key}: {kind} needs [low, high] with low <= high, not {args!r}")
    if kind == "log_uniform" and args[0] <= 0:
        raise CreditlabError(f"{path}: [random] {key}: log_uniform needs positive bounds, not {args!r}")


def _draw(dist: dict, rng: random.Random) -> Any:
    (kind, args), = dist.items()
    if kind == "choice":
        return rng.choice(args)
    low, high = args
    if kind == "uniform":
        return rng.uniform(low, high)
    if kind == "log_uniform":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.randint(low, high)


def _apply(settings: dict, base: RunConfig) -> RunConfig:
    fields, options = {}, {}
    for key, value in settings.items():
        if "." in key:
            rule, _, name = key.partition(".")
            options.setdefault(rule, {})[name] = value
        else:
            fields[key] = value
    config = dataclasses.replace(base, **fields)
    return dataclasses.replace(config, rule_options={**config.rule_options, **options.get(config.rule, {})})


def expand(spec: dict) -> list[RunConfig]:
    """List the trials of a sweep as resolved RunConfigs, in a fixed order."""
    base = RunConfig(**{k: v for k, v in spec.get("base", {}).items() if "." not in k})
    base_options = {k: v for k, v in spec.get("base", {}).items() if "." in k}
    grid = spec.get("grid", {})
    trials: list[dict] = [dict(base_options)]
    if grid:
        trials = []
        plain = {k: v for k, v in grid.items() if "." not in k}
        for combo in itertools.product(*plain.values()):
            settings = dict(zip(plain, combo))
            rule = settings.get("rule", base.rule)
            own = {k: v for k, v in grid.items() if k.startswith(f"{rule}.")}
            for option_combo in itertools.product(*own.values()):
                trials.append({**base_options, **settings, **dict(zip(own, option_combo))})
    if "random" in spec:
        # Each random draw is combined with every grid combination, as in Ray Tune.
        randomised = dict(spec["random"])
        samples = randomised.pop("samples")
        rng = random.Random(0)
        draws = [{k: _draw(d, rng) for k, d in randomised.items()} for _ in range(samples)]
        trials = [{**t, **d} for d in draws for t in trials]
    run = {t.get("rule", base.rule) for t in trials}
    for key in [*spec.get("base", {}), *grid, *spec.get("random", {})]:
        rule = key.partition(".")[0]
        if "." in key and rule not in run:
            raise CreditlabError(f"the sweep sets option {key!r}, but no trial runs rule {rule!r}; add {rule!r} "
                                 f"to the rule list or remove the option")
    configs = []
    for settings in trials:
        config = _apply(settings, base)
        configs.append(config.resolved())
    return configs


def trial_name(config: RunConfig) -> str:
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return f"{config.rule}-{config.data}-seed{config.seed}-{digest}"


def trial_label(config: RunConfig, configs: list[RunConfig]) -> str:
    """Name a trial by its rule and the settings that vary across the sweep, seeds aside."""
    mine = config.to_dict()
    varying = [k for k in mine if k not in ("rule", "seed") and any(c.to_dict()[k] != mine[k] for c in configs)]
    parts = [config.rule] + [f"{k}={mine[k]}" for k in varying]
    return " ".join(parts)


def sweep(path: str | Path, address: str | None = None, out: str | Path | None = None,
          cpus_per_trial: float = 1.0, max_retries: int = 3, checkpoint_interval: float = 60.0,
          progress: bool = True) -> list[dict]:
    """Run every trial of a sweep file with Ray; write the same report as `compare`."""
    spec = load_sweep(path)
    configs = expand(spec)
    out = Path(out or spec.get("out") or f"runs/sweep-{Path(path).stem}")
    check_writable(out)
    try:
        import ray
    except ImportError:
        raise CreditlabError("creditlab sweep needs Ray: pip install 'creditlab[ray]'") from None

    folders = [out / "trials" / trial_name(c) for c in configs]
    pending = [(c, f) for c, f in zip(configs, folders) if not _finished(f)]
    log.info("sweep %s: %d trials, %d already finished", path, len(configs), len(configs) - len(pending))
    if pending:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        remote = ray.remote(num_cpus=cpus_per_trial, max_retries=max_retries)(run_recording_divergence)
        futures = [remote.remote(c.to_dict(), str(f.resolve()), checkpoint_interval) for c, f in pending]
        with tqdm(total=len(futures), desc="sweep", disable=not progress or None) as bar:
            waiting = list(futures)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                try:
                    ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    log.error("a trial failed after %d retries: %s", max_retries, str(exc).splitlines()[0])
                bar.update(1)

    records, histories = [], {}
    for config, folder in zip(configs, folders):
        summary_path = folder / "summary.json"
        if not summary_path.exists():
            records.append({**config.to_dict(), "status": "failed", "label": trial_label(config, configs)})
            continue
        summary = io.read_json(summary_path)
        summary["label"] = trial_label(config, configs)
        records.append(summary)
        metrics_path = folder / "metrics.jsonl"
        histories[(summary["label"], config.seed)] = io.read_jsonl(metrics_path) if metrics_path.exists() else []
    io.write_json(out / "summary.json", {"runs": records})
    report.write_report(out, [r for r in records if r["status"] != "failed"], histories)
    return records


def _finished(folder: Path) -> bool:
    path = folder / "summary.json"
    if not path.exists():
        return False
    try:
        summary = io.read_json(path)
    except (OSError, ValueError):
        return False
    return summary.get("status") in ("finished", "diverged")
