"""Rules that replace the transposed forward weights of backprop's backward pass.

fa, sign-symmetry, kp and weight-mirror run the ordinary backward pass, but
each block sends the error to its input through a feedback tensor B_l, stored
with the shape of the forward weight W_l (dense: out x in; conv: a kernel)
and applied as B_l^T. They differ in where B_l comes from: fixed and random
(fa), the signs of W_l (sign-symmetry), learned with W_l's own update plus
decay (kp), or learned from noise in a mirror phase (weight-mirror). dfa sends
the output error straight to every hidden block through a fixed random matrix.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import angle_deg
from . import register
from .base import SGD_DEFAULTS, OptimizerDefaults, Rule, check_number, option


def _random_like(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Draw a tensor like a Glorot-uniform forward weight of the same shape, times `scale`."""
    b = torch.empty_like(weight)
    nn.init.xavier_uniform_(b)
    return b * scale


class _FeedbackPathRule(Rule):
    """Common step: forward with B_l in the backward pass of every block, then `after_backward`."""

    defaults = SGD_DEFAULTS

    def feedback(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def after_backward(self, x: torch.Tensor) -> dict:
        return {}

    def step(self, x, y):
        self.clear_grads()
        loss = self.loss(self.net(x, feedback=[b.detach() for b in self.feedback()]), y)
        loss.backward()
        stats = {"loss": loss.detach(), "forward_passes": 1, "backward_passes": 1}
        stats.update(self.after_backward(x))
        return stats

    def weight_angles(self) -> list[float]:
        return [angle_deg(b.detach().flatten(), w.detach().flatten())
                for b, w in zip(self.feedback(), self.net.weights())]


@dataclass
class FAOptions:
    scale: float = option(1.0, "multiplier on the Glorot-uniform scale of the random feedback weights (dimensionless)",
                          "Lillicrap et al. 2016 draw B like the forward weights")


@register
class FeedbackAlignment(_FeedbackPathRule):
    name = "fa"
    description = "Feedback alignment: fixed random matrices replace W^T in the backward pass"
    reference = "Lillicrap, Cownden, Tweed & Akerman 2016"
    Options = FAOptions

    def __init__(self, net, options=None):
        super().__init__(net, options)
        for i, w in enumerate(net.weights()):
            self.register_buffer(f"feedback_{i}", _random_like(w.detach(), self.options.scale))

    def feedback(self):
        return [getattr(self, f"feedback_{i}") for i in range(len(self.net.blocks))]


@dataclass
class SignSymmetryOptions:
    scale: str = option("mean-abs", "magnitude of the feedback: mean-abs gives sign(W) times the mean |W| of the "
                        "layer, so B_l has W_l's scale; none uses sign(W) alone",
                        "Liao, Leibo & Poggio 2016 rescale sign(W); mean |W| keeps the error's size per layer",
                        choices=("mean-abs", "none"))


@register
class SignSymmetry(_FeedbackPathRule):
    name = "sign-symmetry"
    description = "Sign symmetry: the backward pass uses sign(W) with the magnitudes discarded"
    reference = "Liao, Leibo & Poggio 2016"
    Options = SignSymmetryOptions

    def feedback(self):
        out = []
        for w in self.net.weights():
            w = w.detach()
            b = torch.sign(w)
            if self.options.scale == "mean-abs":
                b = b * w.abs().mean()
            out.append(b)
        return out


@dataclass
class KPOptions:
    decay: float = option(1e-3, "weight decay lambda applied to both W and B, per unit learning rate; "
                          "B - W shrinks by the factor (1 - lr * lambda) each SGD step",
                          "Akrout et al. 2019 (the Kolen-Pollack decay); value chosen for MNIST-scale runs")
    scale: float = option(1.0, "multiplier on the Glorot-uniform scale of the initial random feedback weights",
                          "random start as in fa")


@register
class KolenPollack(_FeedbackPathRule):
    name = "kp"
    description = "Kolen-Pollack: feedback weights get the transpose of the forward update and the same decay"
    reference = "Kolen & Pollack 1994; Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019"
    Options = KPOptions

    @classmethod
    def check_options(cls, options):
        check_number(cls.name, "decay", options.decay, above=False, example="1e-3")

    def __init__(self, net, options=None):
        super().__init__(net, options)
        self.feedback_weights = nn.ParameterList(
            [nn.Parameter(_random_like(w.detach(), self.options.scale)) for w in net.weights()])

    def feedback(self):
        return list(self.feedback_weights)

    def param_groups(self, lr, feedback_lr=None):
        # The convergence of B to W relies on both receiving the same update, so
        # the feedback weights always train at the forward learning rate.
        return super().param_groups(lr, lr)

    def after_backward(self, x):
        decay = self.options.decay
        for w, b in zip(self.net.weights(), self.feedback_weights):
            b.grad = w.grad.clone() + decay * b.detach()
            w.grad.add_(w.detach(), alpha=decay)
        return {}


@dataclass
class WeightMirrorOptions:
    noise_std: float = option(1.0, "standard deviation sigma of the noise driven through each layer in the mirror phase",
                              "Akrout et al. 2019 drive each layer with zero-mean noise")
    decay: float = option(1.0, "decay lambda of the feedback weights; the mirror update is "
                          "lambda*B - E[y xi^T]/sigma^2, whose fixed point is B = W / lambda",
                          "Akrout et al. 2019 add decay to bound B; lambda = 1 makes the fixed point W itself")
    mirror_batch: int = option(64, "noise samples per layer in each mirror phase (examples)", "chosen")
    mirror_steps: int = option(1, "mirror phases after each learning step", "Akrout et al. 2019 alternate the two modes")


@register
class WeightMirror(_FeedbackPathRule):
    name = "weight-mirror"
    description = "Weight mirror: feedback weights learn W^T from noise sent through each layer in a mirror phase"
    reference = "Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019"
    Options = WeightMirrorOptions
    defaults = OptimizerDefaults("sgd", lr=0.05, feedback_lr=1e-2, momentum=0.9)

    def __init__(self, net, options=None):
        super().__init__(net, options)
        self.feedback_weights = nn.ParameterList(
            [nn.Parameter(_random_like(w.detach(), 1.0)) for w in net.weights()])
        self._input_shapes = net.activity_shapes()[:-1]

    def feedback(self):
        return list(self.feedback_weights)

    def mirror_gradients(self) -> list[torch.Tensor]:
        """Return lambda*B - <y xi^T>/sigma^2 for each layer, with xi ~ N(0, sigma^2) and y = W xi."""
        sigma, n = self.options.noise_std, self.options.mirror_batch
        grads = []
        for block, b, shape in zip(self.net.blocks, self.feedback_weights, self._input_shapes):
            w = block.weight.detach()
            xi = sigma * torch.randn((n, *shape), device=w.device, dtype=w.dtype)
            xi = block.prepare(xi)
            if block.is_conv:
                y = F.conv2d(xi, w, None, block.layer.stride, block.layer.padding)
                positions = y.shape[2] * y.shape[3]
                corr = torch.nn.grad.conv2d_weight(xi, w.shape, y, block.layer.stride, block.layer.padding)
                corr = corr / (n * positions)
            else:
                y = xi @ w.t()
                corr = y.t() @ xi / n
            grads.append(self.options.decay * b.detach() - corr / sigma**2)
        return grads

    def after_backward(self, x):
        total = [torch.zeros_like(b) for b in self.feedback_weights]
        for _ in range(self.options.mirror_steps):
            for acc, g in zip(total, self.mirror_gradients()):
                acc.add_(g, alpha=1.0 / self.options.mirror_steps)
        for b, g in zip(self.feedback_weights, total):
            b.grad = g
        return {"forward_passes": 1 + self.options.mirror_steps * self.options.mirror_batch / max(len(x), 1)}


@dataclass
class DFAOptions:
    scale: float = option(1.0, "multiplier on the random feedback matrices, drawn uniform in +-1/sqrt(outputs)",
                          "Nøkland 2016 draws fixed random feedback matrices")


@register
class DirectFeedbackAlignment(Rule):
    name = "dfa"
    description = "Direct feedback alignment: the output error reaches each hidden layer through its own random matrix"
    reference = "Nøkland 2016"
    Options = DFAOptions
    defaults = SGD_DEFAULTS

    def __init__(self, net, options=None):
        super().__init__(net, options)
        shapes = net.activity_shapes()
        n_out = shapes[-1].numel()
        bound = self.options.scale / n_out**0.5
        for i, shape in enumerate(shapes[1:-1]):
            self.register_buffer(f"feedback_{i}", (torch.rand(n_out, shape.numel()) * 2 - 1) * bound)

    def feedback(self) -> list[torch.Tensor]:
        return [getattr(self, f"feedback_{i}") for i in range(len(self.net.blocks) - 1)]

    def step(self, x, y):
        self.clear_grads()
        h = x
        hidden = []
        for block in self.net.blocks:
            h = block(h.detach())
            hidden.append(h)
        output = hidden.pop()
        loss = self.loss(output, y)
        # e = dL/d(output), the error every hidden layer receives directly.
        (error,) = torch.autograd.grad(loss, output, retain_graph=True)
        surrogate = loss
        for h, d in zip(hidden, self.feedback()):
            surrogate = surrogate + (h * (error @ d).view_as(h)).sum()
        surrogate.backward()
        return {"loss": loss.detach(), "forward_passes": 1, "backward_passes": 1}
