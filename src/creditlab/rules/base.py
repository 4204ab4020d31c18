"""The contract every learning rule keeps.

A rule owns a network and any auxiliary weights it needs (feedback matrices,
inverse networks). `step(x, y)` computes the rule's update for one batch and
stores it, as a descent direction, in the `.grad` of every trainable
parameter; a stock `torch.optim` optimizer then applies it. `predict(x)`
returns the network's output, and `parameters()` (from nn.Module) yields the
forward and auxiliary parameters alike.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import nets
from ..errors import CreditlabError


def option(default: Any, help: str, source: str = "", choices: tuple = ()) -> Any:
    """Declare a rule option: its default, help text with unit, and where the default comes from."""
    return field(default=default, metadata={"help": help, "source": source, "choices": choices})



def check_number(rule: str, name: str, value: Any, *, minimum: float = 0.0, above: bool = True,
                 maximum: float | None = None, integer: bool = False, example: str = "") -> None:
    """Raise a one-line CreditlabError unless option `name` of `rule` is a finite number in range.

    With above=True the value must exceed `minimum`, otherwise it may equal it.
    `maximum`, when given, is included, and integer=True also requires an int.
    """
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    in_range = number and not isinstance(value, bool) and math.isfinite(value)
    in_range = in_range and (value > minimum if above else value >= minimum)
    in_range = in_range and (maximum is None or value <= maximum)
    if in_range:
        return
    kind = "an integer" if integer else "a finite number"
    if above and minimum == 0:
        expected = f"a positive {'integer' if integer else 'finite number'}"
    else:
        expected = f"{kind} {'above' if above else '>='} {minimum:g}"
    if maximum is not None:
        expected += f" and at most {maximum:g}"
    if example:
        expected += f", e.g. {example}"
    raise CreditlabError(f"invalid {name} {value!r} for rule {rule!r}: give {expected}")

@dataclass
class NoOptions:
    """A rule without options."""


@dataclass(frozen=True)
class OptimizerDefaults:
    """The optimizer, learning rate and schedule a rule trains with unless the user overrides them."""
    name: str = "adam"
    lr: float = 1e-3
    feedback_lr: float | None = None
    momentum: float = 0.9


# SGD with momentum at this learning rate trains the 5x256 tanh MLP on MNIST
# well with bp and the feedback rules (docs/benchmarks.md); Adam at 1e-3
# overfitted with bp and trained fa worse.
SGD_DEFAULTS = OptimizerDefaults("sgd", lr=0.05, momentum=0.9)


class Rule(nn.Module):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ("mlp", "conv")
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    Options: ClassVar[type] = NoOptions
    defaults: ClassVar[OptimizerDefaults] = OptimizerDefaults()
    # Used in online mode (one example per update): plain SGD, as online backprop is usually run.
    online_defaults: ClassVar[OptimizerDefaults] = OptimizerDefaults("sgd", lr=0.01, momentum=0.0)

    def __init__(self, net: nn.Module, options: Any = None):
        super().__init__()
        self.net = net
        self.options = options if options is not None else self.Options()
        self.check_options(self.options)
        kind = getattr(getattr(net, "spec", None), "kind", None)
        if kind is not None and kind not in self.kinds:
            raise CreditlabError(f"rule {self.name!r} does not support {kind} nets; it supports {', '.join(self.kinds)}")

    @classmethod
    def check_options(cls, options: Any) -> None:
        """Raise CreditlabError for an option value out of range.

        `make_options` calls it, so a run rejects a bad value before it loads
        any data; the constructor calls it again for options built by hand.
        """

    @classmethod
    def make_net(cls, spec: nets.NetSpec, activation: str, init: str = "auto") -> nn.Module:
        """Build the network this rule trains from a size spec (a layered feedforward net by default)."""
        return nets.LayeredNet(spec, activation, init)

    # -- the contract -------------------------------------------------------

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Write the update for batch (x, y) into `.grad`; return statistics, `loss` among them."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, y)

    # -- structure used by the trainer and the metrics -----------------------

    def layers(self) -> list[list[nn.Parameter]]:
        """Forward parameters grouped by layer, for per-layer update angles."""
        return [list(block.parameters()) for block in self.net.blocks]

    def forward_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def feedback_parameters(self) -> list[nn.Parameter]:
        """Trainable auxiliary parameters (feedback weights, inverses); they get their own learning rate."""
        ids = {id(p) for p in self.forward_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def param_groups(self, lr: float, feedback_lr: float | None = None) -> list[dict]:
        groups = [{"params": self.forward_parameters(), "lr": lr, "name": "forward"}]
        feedback = self.feedback_parameters()
        if feedback:
            groups.append({"params": feedback, "lr": feedback_lr if feedback_lr is not None else lr, "name": "feedback"})
        return groups

    def reference_gradients(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Return the exact gradient of the loss per layer (flattened), without touching `.grad`."""
        layers = self.layers()
        params = [p for layer in layers for p in layer]
        with torch.enable_grad():
            loss = self.loss(self.net(x), y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        out, i = [], 0
        for layer in layers:
            parts = [torch.zeros_like(p) if g is None else g for p, g in zip(layer, grads[i:i + len(layer)])]
            out.append(torch.cat([g.flatten() for g in parts]))
            i += len(layer)
        return out

    def epoch_metrics(self, dataset) -> dict[str, Any]:
        """Return extra measurements recorded at the end of each epoch (e.g. a reconstruction error)."""
        return {}

    def weight_angles(self) -> list[float] | None:
        """Angles in degrees between each layer's feedback and forward weights, for rules that have both."""
        return None

    def clear_grads(self) -> None:
        for p in self.parameters():
            p.grad = None


def make_options(rule_cls: type[Rule], values: dict[str, Any] | None, kind: str = "rule") -> Any:
    """Build a rule's options dataclass from a dict, converting strings from the command line.

    Tasks declare `name` and `Options` the same way and pass kind="task".
    """
    import difflib

    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(rule_cls.Options)}
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            valid = ", ".join(fields) or "none"
            raise CreditlabError(f"unknown option {key!r} for {kind} {rule_cls.name!r}; {hint}valid options: {valid}")
        kwargs[name] = _convert(rule_cls.name, fields[name], value, kind)
    options = rule_cls.Options(**kwargs)
    check = getattr(rule_cls, "check_options", None)
    if check is not None:
        check(options)
    return options


def _convert(rule: str, f: dataclasses.Field, value: Any, kind: str = "rule") -> Any:
    default = f.default
    choices = f.metadata.get("choices", ())
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            value = bool(value)
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
    except (TypeError, ValueError):
        raise CreditlabError(
            f"invalid value {value!r} for option {f.name!r} of {kind} {rule!r}: expected {type(default).__name__}") from None
    if isinstance(value, float) and value != value:
        raise CreditlabError(f"invalid value nan for option {f.name!r} of {kind} {rule!r}: give a finite number")
    if choices and value not in choices:
        raise CreditlabError(f"invalid value {value!r} for option {f.name!r} of {kind} {rule!r}; choose one of {', '.join(map(str, choices))}")
    return value
