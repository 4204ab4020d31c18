"""Oracle tests of bp and the rules that replace W^T in the backward pass."""

import copy

import pytest
import torch
import torch.nn.functional as F

from creditlab import metrics, nets, rules
from helpers import grads, train_digits

SPECS = ["mlp:64-32-24-10", "conv:1x8x8-c4p-c6-16-10"]


def batch(n=16):
    return torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,))


@pytest.mark.parametrize("spec", SPECS)
def test_bp_grad_equals_autograd(spec):
    net = nets.build(spec)
    rule = rules.build("bp", net)
    x, y = batch()
    rule.step(x, y)
    expected = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    for g, e in zip(grads(rule), expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("spec", SPECS)
def test_fa_with_transposed_weights_is_bp(spec):
    net = nets.build(spec, "tanh")
    fa = rules.build("fa", net)
    for i, w in enumerate(net.weights()):
        getattr(fa, f"feedback_{i}").copy_(w.detach())
    x, y = batch()
    fa.step(x, y)
    fa_grads = grads(fa)
    bp = rules.build("bp", net)
    bp.step(x, y)
    for g, e in zip(fa_grads, grads(bp)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spec", SPECS)
def test_fa_random_feedback_differs_from_bp(spec):
    net = nets.build(spec, "tanh")
    fa = rules.build("fa", net)
    x, y = batch()
    fa.step(x, y)
    angles = metrics.update_angles(fa, x, y)
    assert angles[-1] == pytest.approx(0.0, abs=1e-3)  # the output layer sees the true error
    assert angles[0] > 30.0


def test_fa_matches_hand_written_recursion():
    # The first layer's update must equal the fa recursion written out by hand:
    # delta_{l-1} = (delta_l B_l) * f'(z_{l-1}), with B_l in place of W_l.
    net = nets.build("mlp:64-32-24-10", "tanh")
    fa = rules.build("fa", net)
    x, y = batch()
    fa.step(x, y)
    h0 = x.flatten(1)
    z1 = h0 @ net.blocks[0].weight.t() + net.blocks[0].layer.bias
    h1 = torch.tanh(z1)
    z2 = h1 @ net.blocks[1].weight.t() + net.blocks[1].layer.bias
    h2 = torch.tanh(z2)
    out = h2 @ net.blocks[2].weight.t() + net.blocks[2].layer.bias
    e = (torch.softmax(out, 1) - F.one_hot(y, 10)) / len(y)
    d2 = (e @ fa.feedback_2) * (1 - h2**2)
    d1 = (d2 @ fa.feedback_1) * (1 - h1**2)
    torch.testing.assert_close(net.blocks[0].weight.grad, d1.t() @ h0, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("spec", SPECS)
def test_dfa_first_layer_ignores_later_weights(spec):
    net = nets.build(spec, "tanh")
    dfa = rules.build("dfa", net)
    x, y = batch()
    dfa.step(x, y)
    before = net.blocks[0].weight.grad.clone()
    with torch.no_grad():
        net.blocks[1].weight.mul_(-3.0)  # changes h_2 and the output, hence the error e
    dfa.step(x, y)
    changed_error = net.blocks[0].weight.grad.clone()
    # Changing layer 2 changes the output error, so compare against the direct
    # formula for the new error instead: dW_1 = ((e D_1) * f'(z_1)) x^T.
    h1 = net.blocks[0](x)
    out = net(x)
    e = (torch.softmax(out, 1) - F.one_hot(y, 10)) / len(y)
    h1.backward((e @ dfa.feedback_0).view_as(h1))
    assert not torch.allclose(before, changed_error)
    torch.testing.assert_close(changed_error, net.blocks[0].weight.grad / 2, rtol=1e-5, atol=1e-8)


def test_dfa_first_layer_independent_of_middle_weights_at_fixed_error():
    # With the output layer's input cut off, the error depends only on the
    # output bias, so changing W_2 must leave dfa's W_1 update unchanged.
    net = nets.build("mlp:64-32-24-10", "tanh")
    dfa = rules.build("dfa", net)
    with torch.no_grad():
        net.blocks[2].weight.zero_()
    x, y = batch()
    dfa.step(x, y)
    before = net.blocks[0].weight.grad.clone()
    with torch.no_grad():
        net.blocks[1].weight.normal_()
    dfa.step(x, y)
    torch.testing.assert_close(net.blocks[0].weight.grad, before)
    bp = rules.build("bp", net)
    bp.step(x, y)
    assert bp.net.blocks[0].weight.grad.abs().sum() == 0  # bp sees no error through a zero W_3


def test_sign_symmetry_feedback_signs():
    net = nets.build("mlp:64-32-10")
    rule = rules.build("sign-symmetry", net)
    for b, w in zip(rule.feedback(), net.weights()):
        assert torch.equal(torch.sign(b), torch.sign(w))
        assert b.abs().mean() == pytest.approx(w.abs().mean().item(), rel=1e-5)


def test_kp_feedback_gets_forward_update():
    net = nets.build("mlp:64-32-10")
    rule = rules.build("kp", net, decay=0.1)
    x, y = batch()
    rule.step(x, y)
    for w, b in zip(net.weights(), rule.feedback_weights):
        torch.testing.assert_close(b.grad - 0.1 * b.detach(), w.grad - 0.1 * w.detach())


def test_kp_and_weight_mirror_align_on_digits():
    kp, _ = train_digits("kp", epochs=30, rule_options={"decay": 0.02})
    wm, _ = train_digits("weight-mirror", epochs=10)
    for angle in kp.weight_angles() + wm.weight_angles():
        assert angle < 20.0
    fa, _ = train_digits("fa", epochs=3)
    assert min(fa.weight_angles()) > 45.0


def test_weight_mirror_gradient_expectation_is_decay_minus_w():
    net = nets.build("conv:1x8x8-c4-12-10")
    rule = rules.build("weight-mirror", net, mirror_batch=20000, decay=1.0)
    for g, b, w in zip(rule.mirror_gradients(), rule.feedback_weights, net.weights()):
        expected = b.detach() - w.detach()
        # Conv padding removes a few border terms; the dense layers are unbiased.
        assert metrics.angle_deg(g, expected) < 8.0


def test_update_angle_zero_for_bp_and_ninety_for_random():
    net = nets.build("mlp:64-200-200-10")
    rule = rules.build("bp", net)
    x, y = batch(64)
    rule.step(x, y)
    assert metrics.update_angles(rule, x, y) == pytest.approx([0.0, 0.0, 0.0], abs=1e-3)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    angles = metrics.update_angles(rule, x, y)
    assert all(80.0 < a < 100.0 for a in angles)


def test_update_angle_leaves_grads_alone():
    net = nets.build("mlp:64-32-10")
    rule = rules.build("fa", net)
    x, y = batch()
    rule.step(x, y)
    before = grads(rule)
    metrics.update_angles(rule, x, y)
    for a, b in zip(before, grads(rule)):
        assert torch.equal(a, b)


def test_every_rule_writes_every_grad():
    from helpers import classification_rules

    x, y = batch()
    for name in classification_rules():
        cls = rules.get(name)
        if "mlp" not in cls.kinds:
            continue
        rule = rules.build(name, cls.make_net(nets.parse("mlp:64-16-10"), "tanh"))
        rule.step(x, y)
        missing = [n for n, p in rule.named_parameters() if p.grad is None]
        assert not missing, f"{name} left no .grad on {missing}"


def test_registry_rejects_unknown_names():
    from creditlab.errors import CreditlabError

    with pytest.raises(CreditlabError, match="did you mean 'fa'"):
        rules.get("fb")
    with pytest.raises(CreditlabError, match="did you mean 'decay'"):
        rules.build("kp", nets.build("mlp:64-10"), decy=1.0)
    with pytest.raises(CreditlabError, match="choose one of"):
        rules.build("sign-symmetry", nets.build("mlp:64-10"), scale="huge")


def test_copy_of_rule_is_independent():
    rule = rules.build("kp", nets.build("mlp:64-10"))
    clone = copy.deepcopy(rule)
    with torch.no_grad():
        clone.feedback_weights[0].zero_()
    assert rule.feedback_weights[0].abs().sum() > 0
