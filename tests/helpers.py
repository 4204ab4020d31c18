"""Small utilities shared by the tests."""

import torch

from creditlab import data, rules
from creditlab.train import TIMING_FIELDS, RunConfig, build_rule, make_optimizer, train


def grads(rule, params=None) -> list[torch.Tensor]:
    params = params if params is not None else list(rule.net.parameters())
    return [p.grad.detach().clone() for p in params]


def train_digits(rule_name: str, epochs: int = 10, **overrides) -> tuple:
    """Train a rule on digits with its defaults; return (rule, test error)."""
    from creditlab import metrics

    config = RunConfig(rule=rule_name, epochs=epochs, batch_size=32, **overrides).resolved()
    dataset = data.load("digits")
    torch.manual_seed(0)
    rule = build_rule(config, dataset)
    optimizer = make_optimizer(config, rule)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for x, y in dataset.train.batches(config.batch_size, generator):
            rule.step(x, y)
            optimizer.step()
    return rule, metrics.error_rate(rule, dataset.test)


def classification_rules() -> list[str]:
    return rules.names("classification")


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_FIELDS}


def train_interrupted_then_resumed(config: RunConfig, folder, monkeypatch, task_cls) -> dict:
    """Train with a KeyboardInterrupt at the third epoch's evaluation, then train again to resume; return the summary."""
    import pytest

    calls = {"n": 0}
    real_evaluate = task_cls.evaluate

    def interrupt_in_third_epoch(self, rule, dataset, epoch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_evaluate(self, rule, dataset, epoch)

    monkeypatch.setattr(task_cls, "evaluate", interrupt_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, folder, progress=False)
    monkeypatch.setattr(task_cls, "evaluate", real_evaluate)
    return train(config, folder, progress=False)
