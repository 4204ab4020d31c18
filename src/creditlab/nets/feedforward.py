"""Layered feedforward networks (MLP and conv net) built from blocks that expose their activity.

Each block computes an affine map (dense or convolution), then an activation,
then optional 2x2 max pooling. A rule can run a block with a feedback tensor
that replaces the weight in the backward pass (feedback alignment and its
relatives), or walk the blocks one at a time to read or perturb activities.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CreditlabError
from .spec import NetSpec, parse


class HardSigmoid(nn.Module):
    """rho(s) = clamp(s, 0, 1), the hard sigmoid of the energy-based learning literature."""

    def forward(self, x):
        return x.clamp(0.0, 1.0)


ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "hard-sigmoid": HardSigmoid,
    "hardtanh": nn.Hardtanh,
    "leaky-relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "linear": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise CreditlabError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class _FeedbackAffine(torch.autograd.Function):
    """Affine map whose backward pass sends the error to the input through `feedback`, not the weight.

    The weight and bias gradients are the usual ones. With feedback equal to the
    weight this is the ordinary dense layer or convolution, exactly.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, conv_args):
        ctx.save_for_backward(x, feedback)
        ctx.weight_shape = weight.shape
        ctx.conv_args = conv_args
        if conv_args is None:
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, *conv_args)

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.conv_args is None:
            if ctx.needs_input_grad[0]:
                grad_x = grad_out @ feedback
            if ctx.needs_input_grad[1]:
                grad_w = grad_out.t() @ x
            if ctx.needs_input_grad[2]:
                grad_b = grad_out.sum(0)
        else:
            stride, padding = ctx.conv_args
            if ctx.needs_input_grad[0]:
                grad_x = torch.nn.grad.conv2d_input(x.shape, feedback, grad_out, stride, padding)
            if ctx.needs_input_grad[1]:
                grad_w = torch.nn.grad.conv2d_weight(x, ctx.weight_shape, grad_out, stride, padding)
            if ctx.needs_input_grad[2]:
                grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class Block(nn.Module):
    """One layer: affine map (nn.Linear or nn.Conv2d), activation, optional pooling."""

    def __init__(self, layer: nn.Module, activation: nn.Module, pool: bool = False, flatten: bool = False):
        super().__init__()
        self.layer = layer
        self.activation = activation
        self.pool = nn.MaxPool2d(2) if pool else None
        self.flatten = flatten

    @property
    def is_conv(self) -> bool:
        return isinstance(self.layer, nn.Conv2d)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape the block's input as its affine map expects (flatten before a dense layer)."""
        return x.flatten(1) if self.flatten else x

    def preactivation(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prepare(x)
        if feedback is None:
            return self.layer(x)
        conv_args = (self.layer.stride, self.layer.padding) if self.is_conv else None
        return _FeedbackAffine.apply(x, self.layer.weight, self.layer.bias, feedback, conv_args)

    def nonlinearity(self, z: torch.Tensor) -> torch.Tensor:
        """Map a preactivation to the block's output: activation, then pooling."""
        h = self.activation(z)
        return self.pool(h) if self.pool is not None else h

    def forward(self, x: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        return self.nonlinearity(self.preactivation(x, feedback))

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight


class LayeredNet(nn.Module):
    """A stack of blocks; the last block is affine with no activation and outputs logits."""

    def __init__(self, spec: NetSpec | str, activation: str = "tanh", init: str = "auto"):
        super().__init__()
        self.spec = parse(spec) if isinstance(spec, str) else spec
        self.activation_name = activation
        blocks: list[Block] = []
        if self.spec.kind == "conv":
            channels, height, width = self.spec.input_shape
            for conv in self.spec.conv:
                layer = nn.Conv2d(channels, conv.channels, conv.kernel, padding=conv.kernel // 2)
                blocks.append(Block(layer, make_activation(activation), pool=conv.pool))
                channels = conv.channels
                if conv.pool:
                    height, width = height // 2, width // 2
                if height == 0 or width == 0:
                    raise CreditlabError(f"net {self.spec.text!r} pools the {self.spec.input_shape} input down to nothing; use fewer p blocks")
            sizes = [channels * height * width, *self.spec.dense]
        else:
            sizes = [self.spec.input_size, *self.spec.dense]
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            act = nn.Identity() if last else make_activation(activation)
            blocks.append(Block(nn.Linear(n_in, n_out), act, flatten=(i == 0)))
        self.blocks = nn.ModuleList(blocks)
        initialise(self, activation, init)

    def forward(self, x: torch.Tensor, feedback: list[torch.Tensor] | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, None if feedback is None else feedback[i])
        return x

    def activities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return [x, h_1, ..., h_L]: the input and every block's output (h_L are the logits)."""
        out = [x]
        for block in self.blocks:
            out.append(block(out[-1]))
        return out

    def weights(self) -> list[torch.Tensor]:
        return [block.weight for block in self.blocks]

    @torch.no_grad()
    def activity_shapes(self) -> list[torch.Size]:
        """Shapes of [x, h_1, ..., h_L] for one example, without the batch dimension."""
        probe = torch.zeros(1, *self.spec.input_shape, device=self.blocks[0].weight.device)
        return [a.shape[1:] for a in self.activities(probe)]


def initialise(net: nn.Module, activation: str, scheme: str = "auto") -> None:
    """Initialise weights (Glorot for saturating units, He for rectifiers) and zero the biases."""
    if scheme == "auto":
        scheme = "kaiming" if activation in ("relu", "leaky-relu", "elu") else "xavier"
    if scheme not in ("xavier", "kaiming", "torch"):
        raise CreditlabError(f"unknown init {scheme!r}; choose auto, xavier, kaiming or torch")
    if scheme == "torch":
        return
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
