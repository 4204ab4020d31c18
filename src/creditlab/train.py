"""Train one rule on one dataset and net, writing a run folder that a restart resumes.

Run folder: config.json (resolved options and versions), metrics.jsonl (one
line per epoch), checkpoint.pt (state dicts and random generator states, saved
after every epoch) and summary.json (final numbers). Every file is written to a
temporary name and renamed, so a kill never leaves half a file.
"""

import dataclasses
import logging
import math
import os
import platform
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__, data, distributed, io, metrics, nets, rules, tasks
from .checkpoint import load_checkpoint, load_state_checked
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


def validate_common(config, positive_ints: tuple[str, ...]) -> None:
    """Check the dataset, net spec and activation of `config`, and that the named fields are positive integers."""
    if config.data not in data.DATASETS:
        raise CreditlabError(f"unknown dataset {config.data!r}; choose one of {', '.join(data.DATASETS)}")
    nets.parse(config.net)
    if config.activation not in nets.ACTIVATIONS:
        raise CreditlabError(f"unknown activation {config.activation!r}; choose one of {', '.join(nets.ACTIVATIONS)}")
    for name in positive_ints:
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            raise CreditlabError(f"invalid {name.replace('_', ' ')} {value!r}: give a positive integer")


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
    # Online mode: one example per update (batch_size must be 1), with the rule's online optimizer defaults.
    online: bool = False
    task: str = "classification"
    task_options: dict[str, Any] = field(default_factory=dict)
    # Training-time augmentation, for datasets that define one (random crops and flips on CIFAR-10).
    augment: bool = True

    # Fields that may differ between a run and its resumption. The epoch count
    # may not: it sets the learning-rate schedule.
    RESUMABLE = ("device", "data_dir", "angle_every")

    def resolved(self) -> "RunConfig":
        """Fill the defaults that depend on the rule and dataset, and validate every field."""
        cls = rules.get(self.rule)
        task = tasks.get(self.task)
        if not task.serves(cls):
            serving = [name for name in tasks.TASKS if tasks.get(name).serves(cls)]
            other_task = f"use --task {' or '.join(serving)}, or " if serving else "use "
            raise CreditlabError(f"rule {self.rule!r} does not serve the {self.task} task; {other_task}"
                                 f"a rule from `creditlab rules --task {self.task}`")
        out = dataclasses.replace(self, rule_options=dict(self.rule_options), task_options=dict(self.task_options))
        if out.online and out.batch_size != 1:
            raise CreditlabError(f"online mode trains on one example per update, but batch size is "
                                 f"{out.batch_size!r}; set batch size 1 or drop online mode")
        defaults = cls.online_defaults if out.online else cls.defaults
        out.net = self.net or task.default_net(self.data)
        out.optimizer = self.optimizer or defaults.name
        out.lr = self.lr if self.lr is not None else defaults.lr
        out.feedback_lr = self.feedback_lr if self.feedback_lr is not None else (defaults.feedback_lr or out.lr)
        out.momentum = self.momentum if self.momentum is not None else defaults.momentum
        out.validate()
        rules.make_options(cls, out.rule_options)
        tasks.build(out.task, out.task_options)
        spec = nets.parse(out.net)
        if spec.kind not in cls.kinds:
            raise CreditlabError(f"rule {out.rule!r} does not support {spec.kind} nets; it supports {', '.join(cls.kinds)}")
        if out.data in data.SHAPES:
            shape, classes, train_size = data.SHAPES[out.data]
            task.check_fits(spec, shape, classes, out.data)
            if out.val_size is not None and out.val_size >= train_size:
                raise CreditlabError(f"invalid validation size {out.val_size}: {out.data} has {train_size} "
                                     f"training examples; hold out fewer")
        return out

    def validate(self) -> None:
        validate_common(self, ("epochs", "batch_size", "angle_every"))
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
        if self.val_size is not None and self.val_size < 0:
            raise CreditlabError(f"invalid validation size {self.val_size}: give 0 or a positive number of examples")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise CreditlabError(f"unknown device {self.device!r}; use auto, cpu or cuda[:N]")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and check a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CreditlabError(f"cannot write to output folder {folder}: {exc.strerror}; choose another --out") from None


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
    if dataset is not None:
        tasks.get(config.task).check_fits(spec, dataset.input_shape, dataset.num_classes, dataset.name)
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


# Summary fields that measure time; they differ between any two runs, resumed or not.
TIMING_FIELDS = ("examples_per_second", "train_seconds")

# Step statistics the trainer accounts for itself; any other numeric statistic
# a rule returns is averaged over the epoch into the record's "rule_stats".
_COUNTED_STATS = ("loss", "forward_passes", "backward_passes")


def _finite_mean(values: list[float]) -> float:
    """Return the mean of the values that are not NaN, or NaN when none is."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _finite(tensors) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(flags).all()) if flags else True


class RunInterrupted(CreditlabError):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run can be resumed."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum = signum
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no run folder, nothing saved"
        super().__init__(f"interrupted by {signal.Signals(signum).name}; {where}; run the same command again to resume")


class _SignalGuard:
    """Turn SIGINT and SIGTERM into a flag the training loop checks after each step."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


@dataclass
class _EpochProgress:
    """Position and partial statistics of a run inside an epoch, saved in mid-epoch checkpoints."""
    order: torch.Tensor
    step: int = 0
    losses: list = field(default_factory=list)
    angles: list = field(default_factory=list)
    seconds: float = 0.0
    examples: int = 0
    forward: float = 0.0
    backward: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_state(self) -> dict:
        return dataclasses.asdict(self)


class Run:
    """One training run bound to its folder. `run()` trains, resuming from the folder's checkpoint."""

    def __init__(self, config: RunConfig, out: str | Path | None, progress: bool = True,
                 checkpoint_interval: float = 300.0):
        self.config = config.resolved()
        self.task = tasks.build(self.config.task, self.config.task_options)
        self.final: dict = {}
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.checkpoint_interval = checkpoint_interval
        self.history: list[dict] = []
        self.start_epoch = 0
        self._resumed_progress: _EpochProgress | None = None
        self._last_checkpoint = time.monotonic()

    # -- folder handling -----------------------------------------------------

    def _prepare_folder(self) -> dict | None:
        """Check the folder is this run's and writable; return its finished summary if there is one."""
        if self.out is None:
            return None
        check_writable(self.out)
        for stale in self.out.glob(".*.tmp"):
            # Left by a process killed in the middle of a write; the real file is intact.
            stale.unlink(missing_ok=True)
        config_path = self.out / "config.json"
        if config_path.exists():
            try:
                saved = io.read_json(config_path)["config"]
            except (OSError, ValueError, KeyError, TypeError):
                raise CreditlabError(f"{config_path} is unreadable; delete the folder or choose another --out") from None
            mine = self.config.to_dict()
            # A folder written before a field existed contains that field's default.
            defaults = RunConfig().to_dict()
            differ = [k for k in mine if k not in RunConfig.RESUMABLE and saved.get(k, defaults[k]) != mine[k]]
            if differ:
                key = differ[0]
                raise CreditlabError(
                    f"{self.out} contains a different run ({key}={saved.get(key)!r}, not {mine[key]!r}); "
                    f"choose another --out or delete that folder")
            summary_path = self.out / "summary.json"
            if summary_path.exists():
                try:
                    summary = io.read_json(summary_path)
                except (OSError, ValueError):
                    raise CreditlabError(f"{summary_path} is unreadable; delete it to finish the run again") from None
                if summary.get("epochs") == self.config.epochs and summary.get("status") == "finished":
                    return summary
        elif any(p for p in self.out.iterdir() if not p.name.startswith(".")):
            raise CreditlabError(f"{self.out} is not empty and contains no run; choose another --out")
        return None

    def _save_checkpoint(self, epoch: int, rule, optimizer, scheduler, generator,
                         progress: _EpochProgress | None = None) -> None:
        self._last_checkpoint = time.monotonic()
        if self.out is None or not distributed.is_main():
            return
        state = {
            "epoch": epoch,
            "progress": progress.to_state() if progress is not None else None,
            "rule": rule.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "task": self.task.state_dict(),
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
        state = load_checkpoint(path)
        load_state_checked(rule, state["rule"], path)
        load_state_checked(self.task, state.get("task", {}), path)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            if torch.cuda.is_available() and state["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            generator.set_state(state["rng"]["shuffle"])
            self.start_epoch = int(state["epoch"])
            if state.get("progress") is not None:
                self._resumed_progress = _EpochProgress(**state["progress"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CreditlabError(f"checkpoint {path} is incomplete or of another run ({exc}); "
                                 f"delete it to start the run afresh") from None
        metrics_path = self.out / "metrics.jsonl"
        self.history = io.read_jsonl(metrics_path)[: self.start_epoch] if metrics_path.exists() else []
        step = self._resumed_progress.step if self._resumed_progress else 0
        log.info("resuming %s at epoch %d, step %d", self.out, self.start_epoch + 1, step)

    # -- training ------------------------------------------------------------

    def run(self) -> dict:
        config = self.config
        finished = self._prepare_folder()
        if finished is not None:
            log.info("%s already finished; nothing to do", self.out)
            return finished
        device = pick_device(config.device)
        distributed.setup(device)
        task = self.task
        dataset = task.load(config.data, config.data_dir, config.val_size).to(device)
        torch.manual_seed(config.seed)
        rule = build_rule(config, dataset).to(device)
        task.setup(rule, dataset)
        task.to(device)
        distributed.broadcast_parameters(rule)
        optimizer = make_optimizer(config, rule)
        scheduler = make_scheduler(config, optimizer)
        generator = torch.Generator().manual_seed(config.seed)
        if self.out is not None and distributed.is_main():
            io.write_json(self.out / "config.json", {"config": config.to_dict(), "environment": environment(device)})
        self._load_checkpoint(rule, optimizer, scheduler, generator)

        with _SignalGuard() as guard:
            for epoch in range(self.start_epoch, config.epochs):
                progress = self._resumed_progress
                self._resumed_progress = None
                if progress is None:
                    progress = _EpochProgress(order=torch.randperm(len(dataset.train), generator=generator))
                record = self._train_epoch(epoch, progress, rule, optimizer, scheduler, dataset, generator, guard)
                scheduler.step()
                record.update(epoch=epoch + 1, **task.evaluate(rule, dataset, epoch + 1), lr=optimizer.param_groups[0]["lr"])
                record.update(rule.epoch_metrics(dataset))
                weight_angles = rule.weight_angles()
                if weight_angles is not None:
                    record["weight_angle_deg"] = weight_angles
                self.history.append(record)
                log.log(logging.INFO if distributed.is_main() else logging.DEBUG, "%s seed %d epoch %d/%d: %s",
                        config.rule, config.seed, epoch + 1, config.epochs, task.describe(record))
                if self.out is not None and distributed.is_main():
                    io.write_jsonl(self.out / "metrics.jsonl", self.history)
                self._save_checkpoint(epoch + 1, rule, optimizer, scheduler, generator)
        self.final = task.finish(rule, dataset, self.out if distributed.is_main() else None)
        summary = self.summary("finished")
        if self.out is not None and distributed.is_main():
            io.write_json(self.out / "summary.json", summary)
        return summary

    def _train_epoch(self, epoch, progress: _EpochProgress, rule, optimizer, scheduler, dataset, generator,
                     guard: _SignalGuard) -> dict:
        config = self.config
        n_train = len(dataset.train)
        steps = math.ceil(n_train / config.batch_size)
        order = progress.order.to(dataset.train.x.device)
        bar = tqdm(range(progress.step, steps), initial=progress.step, total=steps, leave=False,
                   desc=f"{config.rule} s{config.seed} epoch {epoch + 1}", disable=not self.progress or None)
        for step in bar:
            index = distributed.shard(order[step * config.batch_size:(step + 1) * config.batch_size])
            x, y = dataset.train.x[index], dataset.train.y[index]
            start = time.perf_counter()
            if config.augment and dataset.augment is not None:
                x = dataset.augment(x, generator)
            x, y = self.task.prepare(x, y)
            # The target is what the rule learned from: the label, or the bandit's reward-weighted action.
            stats, target = self.task.step(rule, x, y)
            loss = stats["loss"]
            if step % config.angle_every == 0:
                pause = time.perf_counter()
                progress.angles.append(metrics.update_angles(rule, x, target))
                start += time.perf_counter() - pause
            distributed.average_gradients(rule.parameters(), float(len(y)))
            if not _finite([torch.as_tensor(loss)] + [p.grad for p in rule.parameters()]):
                raise DivergenceError(self._divergence_message(epoch, step, "the loss or an update"))
            optimizer.step()
            if not _finite(list(rule.parameters())):
                raise DivergenceError(self._divergence_message(epoch, step, "a weight"))
            progress.seconds += time.perf_counter() - start
            progress.examples += len(y)
            progress.losses.append(float(loss))
            progress.forward += stats.get("forward_passes", 1)
            progress.backward += stats.get("backward_passes", 0)
            for key, value in stats.items():
                if key not in _COUNTED_STATS and isinstance(value, (int, float, torch.Tensor)):
                    progress.extra[key] = progress.extra.get(key, 0.0) + float(value)
            progress.step = step + 1
            if step % 20 == 0:
                bar.set_postfix(loss=f"{progress.losses[-1]:.3f}")
            if guard.signum is not None:
                self._save_checkpoint(epoch, rule, optimizer, scheduler, generator, progress)
                raise RunInterrupted(guard.signum, self.out / "checkpoint.pt" if self.out else None)
            if progress.step < steps and time.monotonic() - self._last_checkpoint > self.checkpoint_interval:
                self._save_checkpoint(epoch, rule, optimizer, scheduler, generator, progress)
        n = len(progress.losses)
        # Under torchrun, losses and example counts are summed over processes.
        loss_sum, examples, batches = distributed.all_sum([sum(progress.losses), progress.examples, n])
        # A step whose update is zero (a warm-up step, say) has no angle (NaN), so it is left out of the mean.
        layer_angles = []
        if progress.angles:
            layers = len(progress.angles[0])
            layer_angles = [_finite_mean([a[i] for a in progress.angles]) for i in range(layers)]
        return {
            "train_loss": loss_sum / batches,
            "update_angle_deg": layer_angles,
            "examples_per_second": examples / progress.seconds if progress.seconds > 0 else math.nan,
            "forward_passes_per_update": progress.forward / n,
            "backward_passes_per_update": progress.backward / n,
            "seconds": progress.seconds,
            "rule_stats": {key: total / n for key, total in progress.extra.items()},
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
            "task": config.task,
            "dataset": config.data,
            "net": config.net,
            "activation": config.activation,
            "seed": config.seed,
            "epochs": len(self.history),
            **self.task.summarise(self.history),
            **self.final,
            "train_loss": last.get("train_loss", math.nan),
            "update_angle_deg": last.get("update_angle_deg", []),
            "weight_angle_deg": last.get("weight_angle_deg"),
            "examples_per_second": total_examples / total_seconds if total_seconds > 0 else math.nan,
            "train_seconds": total_seconds,
            "forward_passes_per_update": forward,
            "forward_pass_equivalents_per_update": metrics.forward_pass_equivalents(forward, backward),
            "optimizer": config.optimizer,
            "lr": config.lr,
            "rule_options": config.rule_options,
            "task_options": config.task_options,
        }


def train(config: RunConfig, out: str | Path | None = None, progress: bool = True,
          checkpoint_interval: float = 300.0) -> dict:
    """Train per `config`, writing to `out` if given; resume if `out` contains this run's checkpoint.

    Besides the checkpoint after every epoch, one is written mid-epoch whenever
    `checkpoint_interval` seconds have passed since the last.
    """
    return Run(config, out, progress, checkpoint_interval).run()
