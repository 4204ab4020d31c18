"""Measurements shared by every rule: update angles, error rates, cost counters."""

import math

import torch


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two flattened tensors; NaN when either is zero."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    norm = a.norm() * b.norm()
    if norm == 0:
        return math.nan
    cosine = (a @ b / norm).clamp(-1.0, 1.0)
    return math.degrees(math.acos(cosine.item()))


def update_angles(rule, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per layer, the angle between the update the rule wrote into `.grad` and the exact gradient.

    Call it after `rule.step(x, y)` and before the optimizer step. The exact
    gradient comes from `torch.autograd.grad`, so no `.grad` is changed.
    """
    exact = rule.reference_gradients(x, y)
    angles = []
    for layer, reference in zip(rule.layers(), exact):
        parts = [torch.zeros_like(p) if p.grad is None else p.grad for p in layer]
        update = torch.cat([g.flatten() for g in parts])
        angles.append(angle_deg(update, reference))
    return angles


@torch.no_grad()
def error_rate(rule, split, batch_size: int = 1000) -> float:
    """Fraction of examples in `split` whose predicted class (argmax of the output) is wrong."""
    if split is None or len(split) == 0:
        return math.nan
    wrong = 0
    for x, y in split.batches(batch_size):
        wrong += (rule.predict(x).argmax(1) != y).sum().item()
    return wrong / len(split)


def forward_pass_equivalents(forward_passes: float, backward_passes: float) -> float:
    """Cost of an update in forward passes, counting a backward pass as two (the usual estimate)."""
    return forward_passes + 2.0 * backward_passes
