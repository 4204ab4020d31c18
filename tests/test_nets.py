import pytest
import torch

from creditlab import nets
from creditlab.errors import CreditlabError


def test_mlp_spec_shapes():
    net = nets.build("mlp:64-32-16-10")
    assert [b.weight.shape for b in net.blocks] == [(32, 64), (16, 32), (10, 16)]
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_conv_spec_shapes():
    net = nets.build("conv:1x8x8-c4p-c6k5-20-10", "relu")
    shapes = net.activity_shapes()
    assert [tuple(s) for s in shapes] == [(1, 8, 8), (4, 4, 4), (6, 4, 4), (20,), (10,)]
    assert net.blocks[1].weight.shape == (6, 4, 5, 5)


@pytest.mark.parametrize("spec", ["mlp:", "mlp:784", "mlp:784-0-10", "mlp:7x4-10", "conv:1x28-c3-10",
                                  "conv:1x28x28-10", "cnn:1-2", "conv:1x2x2-c3p-c3p-10"])
def test_bad_specs_raise(spec):
    with pytest.raises(CreditlabError):
        nets.build(spec)


def test_check_fits_names_fix():
    with pytest.raises(CreditlabError, match="start the spec with 64"):
        nets.check_fits(nets.parse("mlp:784-10"), (1, 8, 8), 10, "digits")
    with pytest.raises(CreditlabError, match="end the spec with 10"):
        nets.check_fits(nets.parse("mlp:64-3"), (1, 8, 8), 10, "digits")


def test_hard_sigmoid_clamps():
    act = nets.make_activation("hard-sigmoid")
    assert act(torch.tensor([-1.0, 0.5, 2.0])).tolist() == [0.0, 0.5, 1.0]
