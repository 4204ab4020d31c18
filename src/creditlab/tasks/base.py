"""What a task decides in a run: its data, what each step learns from, and how the result is scored.

The trainer keeps everything else (batches, optimizer, checkpoints, signals,
divergence checks, data parallelism) the same for every task. A task is an
nn.Module so that any state it keeps between steps (a reward baseline) is
saved in the checkpoint and moved to the run's device.
"""

import math
from typing import Any, ClassVar

import torch
from torch import nn

from .. import data
from ..rules.base import NoOptions


class Task(nn.Module):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    # Whether `--activation` applies to the nets of this task; reports name it only then.
    uses_activation: ClassVar[bool] = True

    def __init__(self, options: Any = None):
        super().__init__()
        self.options = options if options is not None else self.Options()

    # -- configuration, before any data is loaded -----------------------------

    @classmethod
    def serves(cls, rule_cls) -> bool:
        """Return whether rules of class `rule_cls` can be trained on this task."""
        return cls.name in rule_cls.tasks

    @classmethod
    def default_net(cls, dataset: str) -> str:
        raise NotImplementedError

    @classmethod
    def check_fits(cls, spec, input_shape: tuple[int, ...], num_classes: int, dataset: str) -> None:
        """Raise CreditlabError if the net spec does not fit the dataset."""
        raise NotImplementedError

    # -- a run ----------------------------------------------------------------

    def load(self, name: str, data_dir: str | None, val_size: int | None) -> data.Dataset:
        """Return the dataset in the form this task trains on."""
        return data.load(name, data_dir, val_size)

    def setup(self, rule, dataset: data.Dataset) -> None:
        """Create any state the task keeps for this rule and dataset; runs before a checkpoint is loaded."""

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform a training batch before the step (after the dataset's augmentation)."""
        return x, y

    def step(self, rule, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Run the rule's step; return its statistics and the target it was given (for update angles)."""
        return rule.step(x, y), y

    def evaluate(self, rule, dataset: data.Dataset, epoch: int) -> dict[str, Any]:
        """Return the measurements recorded at the end of epoch `epoch` (counted from 1)."""
        raise NotImplementedError

    def describe(self, record: dict) -> str:
        """Return the part of an epoch's log line that reports the measurements."""
        raise NotImplementedError

    def summarise(self, history: list[dict]) -> dict[str, Any]:
        """Return the task's fields of summary.json from the per-epoch records."""
        raise NotImplementedError

    def finish(self, rule, dataset: data.Dataset, out) -> dict[str, Any]:
        """Measure the trained rule once after the last epoch; write any pictures into `out` (may be None)."""
        return {}

    @staticmethod
    def headline(summary: dict) -> str:
        """Return the final result in a few words, for the command line."""
        raise NotImplementedError

    # -- comparisons ------------------------------------------------------------

    @classmethod
    def reference_runs(cls, base) -> list[tuple[str, Any]]:
        """Return (label, RunConfig) pairs that `creditlab compare` runs beside the chosen rules."""
        return []

    @staticmethod
    def report_notes() -> str:
        raise NotImplementedError

    @staticmethod
    def report_table(records: list[dict]) -> str:
        raise NotImplementedError

    @staticmethod
    def report_plots(out, records: list[dict], histories: dict) -> list[str]:
        """Write the comparison's PNG plots into `out`; return their file names."""
        raise NotImplementedError


def last(history: list[dict], key: str) -> float:
    """Return `key` of the last epoch's record, NaN if absent."""
    return history[-1].get(key, math.nan) if history else math.nan
