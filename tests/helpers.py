"""Small utilities shared by the tests."""

import torch

from creditlab import data, rules
from creditlab.train import RunConfig, build_rule, make_optimizer


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
