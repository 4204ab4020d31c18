"""Parsing of network specs such as `mlp:784-256-256-10` and `conv:1x28x28-c32k5p-c64k5p-256-10`.

MLP: `mlp:` then the layer sizes from input to output, joined by `-`.
Helmholtz machine: `helmholtz:` then the layer sizes from the visible layer to
the top hidden layer, e.g. `helmholtz:784-200-200`.
Conv net: `conv:` then the input shape `CxHxW`, then conv blocks and dense sizes.
A conv block is `c<channels>`, optionally followed by `k<kernel>` (default 3,
padding keeps the spatial size) and `p` (2x2 max pooling after the activation).
The dense sizes follow; the last one is the number of outputs.
"""

import re
from dataclasses import dataclass

from ..errors import CreditlabError

_CONV = re.compile(r"^c(\d+)(?:k(\d+))?(p?)$")


@dataclass(frozen=True)
class ConvLayer:
    channels: int
    kernel: int = 3
    pool: bool = False


@dataclass(frozen=True)
class NetSpec:
    """A parsed network spec: conv blocks (empty for an MLP), then dense sizes including input and output."""
    kind: str
    input_shape: tuple[int, ...]
    conv: tuple[ConvLayer, ...]
    dense: tuple[int, ...]
    text: str

    @property
    def input_size(self) -> int:
        size = 1
        for d in self.input_shape:
            size *= d
        return size

    @property
    def output_size(self) -> int:
        return self.dense[-1]

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Sizes of all layers of an MLP, input first."""
        if self.kind != "mlp":
            raise CreditlabError(f"net {self.text!r} is a {self.kind} net; this needs an mlp spec such as mlp:784-256-10")
        return (self.input_size,) + self.dense


def _positive(token: str, spec: str) -> int:
    if not token.isdigit() or int(token) <= 0:
        raise CreditlabError(f"invalid size {token!r} in net spec {spec!r}: sizes must be positive integers")
    return int(token)


def parse(spec: str) -> NetSpec:
    """Parse a net spec string; raise CreditlabError naming the bad token."""
    kind, sep, body = spec.partition(":")
    if not sep or not body:
        raise CreditlabError(f"invalid net spec {spec!r}: expected mlp:784-256-10 or conv:1x28x28-c32p-256-10")
    tokens = body.split("-")
    if kind == "mlp":
        sizes = [_positive(t, spec) for t in tokens]
        if len(sizes) < 2:
            raise CreditlabError(f"invalid net spec {spec!r}: an mlp needs an input and an output size")
        return NetSpec("mlp", (sizes[0],), (), tuple(sizes[1:]), spec)
    if kind == "helmholtz":
        sizes = [_positive(t, spec) for t in tokens]
        if len(sizes) < 2:
            raise CreditlabError(f"invalid net spec {spec!r}: a Helmholtz machine needs a visible and a hidden layer size")
        return NetSpec("helmholtz", (sizes[0],), (), tuple(sizes[1:]), spec)
    if kind == "conv":
        shape = tuple(_positive(t, spec) for t in tokens[0].split("x"))
        if len(shape) != 3:
            raise CreditlabError(f"invalid input shape {tokens[0]!r} in net spec {spec!r}: expected CxHxW, e.g. 1x28x28")
        conv, dense = [], []
        for token in tokens[1:]:
            match = _CONV.match(token)
            if match and not dense:
                kernel = int(match.group(2) or 3)
                conv.append(ConvLayer(_positive(match.group(1), spec), _positive(str(kernel), spec), match.group(3) == "p"))
            else:
                dense.append(_positive(token, spec))
        if not conv or not dense:
            raise CreditlabError(f"invalid net spec {spec!r}: a conv net needs at least one conv block (c32) and an output size")
        pools = sum(c.pool for c in conv)
        if shape[1] >> pools == 0 or shape[2] >> pools == 0:
            raise CreditlabError(f"net spec {spec!r} pools the {shape[1]}x{shape[2]} input {pools} times, down to "
                                 f"nothing; use fewer p blocks")
        return NetSpec("conv", shape, tuple(conv), tuple(dense), spec)
    raise CreditlabError(f"unknown net kind {kind!r} in {spec!r}: use mlp:..., conv:... or helmholtz:...")
