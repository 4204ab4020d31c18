"""Backpropagation, the reference every other rule is measured against."""

from . import register
from .base import SGD_DEFAULTS, Rule


@register
class Backprop(Rule):
    name = "bp"
    description = "Backpropagation: the exact gradient by automatic differentiation"
    reference = "Rumelhart, Hinton & Williams 1986"
    defaults = SGD_DEFAULTS

    def step(self, x, y):
        self.clear_grads()
        loss = self.loss(self.net(x), y)
        loss.backward()
        return {"loss": loss.detach(), "forward_passes": 1, "backward_passes": 1}
