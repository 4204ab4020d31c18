"""Train one rule on one dataset and net, writing a run folder that a restart resumes.

Run folder: config.json (resolved options and versions), metrics.jsonl (one
line per epoch), checkpoint.pt (state dicts and random generator states, saved
after every epoch) and summary.json (final numbers). Every file is written to a
temporary name and renamed, so a kill never leaves half a file.
"""

import dataclasses
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__, data, io, metrics, nets, rules
from .errors import CreditlabError, DivergenceError

log = logging.getLogger(__name__)

DEFAULT_NETS = {
    "digits": "mlp:64-128-128-10",
    "mnist": "mlp:784-256-256-10",
    "fashion-mnist": "mlp:784-256-256-10",
    # Ernoult et al. 2022's VGG-like net (one 3x3 conv and a 2x2 pool per block) at a quarter of its width.
    "cifar10": "conv:3x32x32-c32p-c64p-c128p-c256p-10",
}

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass
class RunConfig:
    """Everything that defines a run. Fields left as None take the rule's or dataset's default."""
    rule: str = "bp"
    data: str = "digits"
    net: str | None = None
    activation: str = "tanh"
    init: str = "auto"
    epochs: int = 20
    batch_size: int = 64
    optimizer: str | None = None
    lr: float | None = None
    feedback_lr: float | None = None
    momentum: float | None = None
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    val_size: int | None = None
    angle_every: int = 20
    rule_options: dict[str, Any] = field(default_factory=dict)

    # Fields that may differ between a run and its resumption. The epoch count
    # may not: it sets the learning-rate schedule.
    RESUMABLE = ("device", "data_dir", "angle_every")

    def resolved(self) -> "RunConfig":
        """Fill the defaults that depend on the rule and dataset, and validate every field."""
        cls = rules.get(self.rule)
        out = dataclasses.replace(self, rule_options=dict(self.rule_options))
        out.net = self.net or DEFAULT_NETS.get(self.data, "")
        out.optimizer = self.optimizer or cls.defaults.name
        out.lr = self.lr if self.lr is not None else cls.defaults.lr
        out.feedback_lr = self.feedback_lr if self.feedback_lr is not None else (cls.defaults.feedback_lr or out.lr)
        out.momentum = self.momentum if self.momentum is not None else cls.defaults.momentum
        out.validate()
        rules.make_options(cls, out.rule_options)
        return out

    def validate(self) -> None:
        if self.data not in data.DATASETS:
            raise CreditlabError(f"unknown dataset {self.data!r}; choose one of {', '.join(data.DATASETS)}")
        nets.parse(self.net)
        if self.activation not in nets.ACTIVATIONS:
            raise CreditlabError(f"unknown activation {self.activation!r}; choose one of {', '.join(nets.ACTIVATIONS)}")
        for name in ("epochs", "batch_size", "angle_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CreditlabError(f"invalid {name.replace('_', ' ')} {value!r}: give a positive integer")
        for name in ("lr", "feedback_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CreditlabError(f"invalid {name.replace('_', ' ')} {value!r}: give a positive finite number, e.g. 1e-3")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise CreditlabError(f"invalid weight decay {self.weight_decay!r}: give a finite number >= 0")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise CreditlabError(f"invalid momentum {self.momentum!r}: give a number in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise CreditlabError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise CreditlabError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise CreditlabError(f"unknown device {self.device!r}; use auto, cpu or cuda[:N]")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CreditlabError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def make_optimizer(config: RunConfig, rule: rules.Rule) -> torch.optim.Optimizer:
    groups = rule.param_groups(config.lr, config.feedback_lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: RunConfig, optimizer):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def build_rule(config: RunConfig, dataset: data.Dataset | None = None) -> rules.Rule:
    """Build the net and rule of a resolved config, checking the net fits the dataset."""
    cls = rules.get(config.rule)
    spec = nets.parse(config.net)
    if spec.kind not in cls.kinds:
        raise CreditlabError(f"rule {config.rule!r} does not support {spec.kind} nets; it supports {', '.join(cls.kinds)}")
    if dataset is not None:
        nets.check_fits(spec, dataset.input_shape, dataset.num_classes, dataset.name)
    net = cls.make_net(spec, config.activation, config.init)
    return cls(net, rules.make_options(cls, config.rule_options))


def environment(device: torch.device) -> dict:
    return {
        "creditlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


# Step statistics the trainer accounts for itself; any other numeric statistic
# a rule returns is averaged over the epoch into the record's "rule_stats".
_COUNTED_STATS = ("loss", "forward_passes", "backward_passes")


def _finite(tensors) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(flags).all()) if flags else True


class Run:
    """One training run bound to its folder. `run()` trains, resuming from the folder's checkpoint."""

    def __init__(self, config: RunConfig, out: str | Path | None, progress: bool = True):
        self.config = config.resolved()
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.history: list[dict] = []
        self.start_epoch = 0

    # -- folder handling -----------------------------------------------------

    def _prepare_folder(self) -> dict | None:
        """Check the folder is this run's; return its finished summary if there is one."""
        if self.out is None:
            return None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CreditlabError(f"cannot create output folder {self.out}: {exc.strerror}; choose another --out") from None
        config_path = self.out / "config.json"
        if config_path.exists():
            try:
                saved = io.read_json(config_path)["config"]
            except (OSError, ValueError, KeyError):
                raise CreditlabError(f"{config_path} is unreadable; delete the folder or choose another --out") from None
            mine = self.config.to_dict()
            differ = [k for k in mine if k not in RunConfig.RESUMABLE and saved.get(k) != mine[k]]
            if differ:
                key = differ[0]
                raise CreditlabError(
                    f"{self.out} holds a different run ({key}={saved.get(key)!r}, not {mine[key]!r}); "
                    f"choose another --out or delete that folder")
            summary_path = self.out / "summary.json"
            if summary_path.exists():
                summary = io.read_json(summary_path)
                if summary.get("epochs") == self.config.epochs and summary.get("status") == "finished":
                    return summary
        elif any(self.out.iterdir()):
            raise CreditlabError(f"{self.out} is not empty and holds no run; choose another --out")
        return None

    def _save_checkpoint(self, epoch, rule, optimizer, scheduler, generator) -> None:
        if self.out is None:
            return
        state = {
            "epoch": epoch,
            "rule": rule.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "shuffle": generator.get_state(),
            },
        }
        io.save_torch(self.out / "checkpoint.pt", state)

    def _load_checkpoint(self, rule, optimizer, scheduler, generator) -> None:
        path = self.out / "checkpoint.pt" if self.out is not None else None
        if path is None or not path.exists():
            return
        from .checkpoint import load_checkpoint, load_state_checked

        state = load_checkpoint(path)
        load_state_checked(rule, state["rule"], path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        generator.set_state(state["rng"]["shuffle"])
        self.start_epoch = int(state["epoch"])
        metrics_path = self.out / "metrics.jsonl"
        self.history = io.read_jsonl(metrics_path)[: self.start_epoch] if metrics_path.exists() else []
        log.info("resuming %s from epoch %d", self.out, self.start_epoch)

    # -- training ------------------------------------------------------------

    def run(self) -> dict:
        config = self.config
        finished = self._prepare_folder()
        if finished is not None:
            log.info("%s already finished; nothing to do", self.out)
            return finished
        device = pick_device(config.device)
        dataset = data.load(config.data, config.data_dir, config.val_size).to(device)
        torch.manual_seed(config.seed)
        rule = build_rule(config, dataset).to(device)
        optimizer = make_optimizer(config, rule)
        scheduler = make_scheduler(config, optimizer)
        generator = torch.Generator().manual_seed(config.seed)
        if self.out is not None:
            io.write_json(self.out / "config.json", {"config": config.to_dict(), "environment": environment(device)})
        self._load_checkpoint(rule, optimizer, scheduler, generator)

        for epoch in range(self.start_epoch, config.epochs):
            record = self._train_epoch(epoch, rule, optimizer, dataset, generator)
            scheduler.step()
            record.update(epoch=epoch + 1, val_error=metrics.error_rate(rule, dataset.val),
                          test_error=metrics.error_rate(rule, dataset.test), lr=optimizer.param_groups[0]["lr"])
            record.update(rule.epoch_metrics(dataset))
            weight_angles = rule.weight_angles()
            if weight_angles is not None:
                record["weight_angle_deg"] = weight_angles
            self.history.append(record)
            log.info("%s seed %d epoch %d/%d: loss %.4f, val error %.2f%%, test error %.2f%%",
                     config.rule, config.seed, epoch + 1, config.epochs, record["train_loss"],
                     100 * record["val_error"], 100 * record["test_error"])
            if self.out is not None:
                io.write_jsonl(self.out / "metrics.jsonl", self.history)
                self._save_checkpoint(epoch + 1, rule, optimizer, scheduler, generator)
        summary = self.summary("finished")
        if self.out is not None:
            io.write_json(self.out / "summary.json", summary)
        return summary

    def _train_epoch(self, epoch, rule, optimizer, dataset, generator) -> dict:
        config = self.config
        losses, angles, seconds, examples = [], [], 0.0, 0
        forward = backward = 0.0
        extra: dict[str, float] = {}
        steps = math.ceil(len(dataset.train) / config.batch_size)
        bar = tqdm(dataset.train.batches(config.batch_size, generator), total=steps, leave=False,
                   desc=f"{config.rule} s{config.seed} epoch {epoch + 1}", disable=not self.progress or None)
        for step, (x, y) in enumerate(bar):
            start = time.perf_counter()
            if dataset.augment is not None:
                x = dataset.augment(x, generator)
            stats = rule.step(x, y)
            loss = stats["loss"]
            if not _finite([torch.as_tensor(loss)] + [p.grad for p in rule.parameters()]):
                raise DivergenceError(self._divergence_message(epoch, step, "the loss or an update"))
            if step % config.angle_every == 0:
                pause = time.perf_counter()
                angles.append(metrics.update_angles(rule, x, y))
                start += time.perf_counter() - pause
            optimizer.step()
            if not _finite(list(rule.parameters())):
                raise DivergenceError(self._divergence_message(epoch, step, "a weight"))
            seconds += time.perf_counter() - start
            examples += len(y)
            losses.append(float(loss))
            forward += stats.get("forward_passes", 1)
            backward += stats.get("backward_passes", 0)
            for key, value in stats.items():
                if key not in _COUNTED_STATS and isinstance(value, (int, float, torch.Tensor)):
                    extra[key] = extra.get(key, 0.0) + float(value)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        n = len(losses)
        layer_angles = [sum(a[i] for a in angles) / len(angles) for i in range(len(angles[0]))] if angles else []
        return {
            "train_loss": sum(losses) / n,
            "update_angle_deg": layer_angles,
            "examples_per_second": examples / seconds if seconds > 0 else math.nan,
            "forward_passes_per_update": forward / n,
            "backward_passes_per_update": backward / n,
            "seconds": seconds,
            "rule_stats": {key: total / n for key, total in extra.items()},
        }

    def _divergence_message(self, epoch: int, step: int, what: str) -> str:
        last = f"{self.out / 'checkpoint.pt'} (epoch {epoch})" if self.out is not None and epoch > 0 else "none"
        return (f"rule {self.config.rule!r} diverged: {what} became NaN or infinite at epoch {epoch + 1}, step {step}; "
                f"last good checkpoint: {last}; lower --lr and start a new run")

    def summary(self, status: str) -> dict:
        config = self.config
        last = self.history[-1] if self.history else {}
        total_seconds = sum(r["seconds"] for r in self.history)
        total_examples = sum(r["examples_per_second"] * r["seconds"] for r in self.history if r["seconds"] > 0)
        forward = last.get("forward_passes_per_update", math.nan)
        backward = last.get("backward_passes_per_update", math.nan)
        return {
            "status": status,
            "rule": config.rule,
            "dataset": config.data,
            "net": config.net,
            "activation": config.activation,
            "seed": config.seed,
            "epochs": len(self.history),
            "test_error": last.get("test_error", math.nan),
            "val_error": last.get("val_error", math.nan),
            "train_loss": last.get("train_loss", math.nan),
            "best_val_error": min((r["val_error"] for r in self.history), default=math.nan),
            "update_angle_deg": last.get("update_angle_deg", []),
            "weight_angle_deg": last.get("weight_angle_deg"),
            "examples_per_second": total_examples / total_seconds if total_seconds > 0 else math.nan,
            "train_seconds": total_seconds,
            "forward_passes_per_update": forward,
            "forward_pass_equivalents_per_update": metrics.forward_pass_equivalents(forward, backward),
            "optimizer": config.optimizer,
            "lr": config.lr,
            "rule_options": config.rule_options,
        }


def train(config: RunConfig, out: str | Path | None = None, progress: bool = True) -> dict:
    """Train per `config`, writing to `out` if given; resume if `out` holds this run's checkpoint."""
    return Run(config, out, progress).run()
