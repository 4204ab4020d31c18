"""Network kinds. Feedforward nets live here; energy and Helmholtz nets join as their rules need them."""

from ..errors import CreditlabError
from .energy import EnergyNet  # noqa: F401
from .feedforward import ACTIVATIONS, Block, LayeredNet, initialise, make_activation  # noqa: F401
from .helmholtz import HelmholtzMachine  # noqa: F401
from .spec import NetSpec, parse  # noqa: F401


def mlp(sizes, activation: str = "tanh", init: str = "auto") -> LayeredNet:
    """Build an MLP from a list of layer sizes, input first: mlp([784, 256, 10])."""
    return LayeredNet("mlp:" + "-".join(str(int(s)) for s in sizes), activation, init)


def build(spec: str | NetSpec, activation: str = "tanh", init: str = "auto") -> LayeredNet:
    return LayeredNet(spec, activation, init)


def check_fits(spec: NetSpec, input_shape: tuple[int, ...], num_classes: int, dataset: str) -> None:
    """Raise if the net's input or output size does not match the dataset."""
    size = 1
    for d in input_shape:
        size *= d
    if spec.kind == "mlp" and spec.input_size != size:
        raise CreditlabError(
            f"net {spec.text!r} takes {spec.input_size} inputs but {dataset} images have {size} pixels; "
            f"start the spec with {size}")
    if spec.kind == "conv" and tuple(spec.input_shape) != tuple(input_shape):
        shape = "x".join(str(d) for d in input_shape)
        raise CreditlabError(f"net {spec.text!r} takes input shape {spec.input_shape} but {dataset} has {shape}; "
                             f"start the spec with conv:{shape}")
    if spec.output_size != num_classes:
        raise CreditlabError(f"net {spec.text!r} has {spec.output_size} outputs but {dataset} has "
                             f"{num_classes} classes; end the spec with {num_classes}")
