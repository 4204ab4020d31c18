"""Oracle tests of the energy net and the energy-based rules: chl, generec, ep, ap and pc."""

import pytest
import torch
import torch.nn.functional as F

from creditlab import metrics, nets, rules
from creditlab.errors import CreditlabError
from creditlab.nets.energy import Phase

SPECS = ["mlp:20-16-12-5", "conv:1x6x6-c3p-c4-8-5"]


@pytest.fixture(autouse=True)
def _double():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def energy_net(spec="mlp:20-16-12-5", activation="hard-sigmoid", readout=True):
    net = rules.get("ep").make_net(nets.parse(spec), activation)
    net.readout = readout
    return net


def batch(spec="mlp:20-16-12-5", n=7):
    shape = (n, 1, 6, 6) if spec.startswith("conv") else (n, 20)
    return torch.rand(shape), torch.randint(0, 5, (n,))


def one_hot(y):
    return F.one_hot(y, 5).to(torch.get_default_dtype())


def flat_grads(net):
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


# -- relaxation -----------------------------------------------------------------


@pytest.mark.parametrize("readout", [True, False])
def test_step_is_euler_step_on_energy_in_activities(readout):
    # With the hard sigmoid and potentials inside (0, 1), s = u, so one step
    # must be s - dt dF/ds with F = E + beta C differentiated by autograd.
    net = energy_net(readout=readout)
    x, y = batch()
    phase = Phase(beta=0.3, target=one_hot(y))
    count = net.relaxed_layers(phase)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.1)
    s = [0.1 + 0.8 * torch.rand(7, n) for n in net.spec.dense[:count]]
    with torch.no_grad():
        result = net.relax(x, s, phase, steps=1, tol=0.0, dt=0.3, schedule="synchronous")
    leaves = [v.clone().requires_grad_() for v in s]
    energy = net.energy([x] + leaves, phase).sum()
    grads = torch.autograd.grad(energy, leaves)
    for new, old, g in zip(result.potentials, s, grads):
        assert 0.0 < float(new.min()) and float(new.max()) < 1.0, "step left the linear range of the hard sigmoid"
        torch.testing.assert_close(new, old - 0.3 * g)


def test_step_is_euler_step_in_activities_for_tanh():
    # For tanh, dE/du = rho'(u) dE/ds, so the step u - dt dE/ds is u - dt (dE/du) / rho'(u).
    net = energy_net(activation="tanh", readout=False)
    x, y = batch()
    u = [torch.randn(7, n) for n in net.spec.dense]
    with torch.no_grad():
        result = net.relax(x, u, None, steps=1, tol=0.0, dt=0.5, schedule="synchronous")
    leaves = [v.clone().requires_grad_() for v in u]
    energy = net.energy(net.state_activities(x, leaves), None, leaves).sum()
    grads = torch.autograd.grad(energy, leaves)
    for new, old, g in zip(result.potentials, u, grads):
        torch.testing.assert_close(new, old - 0.5 * g / (1 - torch.tanh(old) ** 2))


@pytest.mark.parametrize("activation", ["hard-sigmoid", "tanh"])
@pytest.mark.parametrize("spec", SPECS)
def test_alternating_steps_never_raise_energy(activation, spec):
    # With dt = 1 each half step sets a group of layers to the exact minimiser
    # of E given the other group, so the energy cannot increase.
    net = energy_net(spec, activation, readout=False)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    x, _ = batch(spec)
    energies, potentials = [], None
    with torch.no_grad():
        for _ in range(25):
            result = net.relax(x, potentials, steps=1, tol=0.0)
            energies.append(result.energy)
            potentials = result.potentials
    for before, after in zip(energies, energies[1:]):
        assert after <= before + 1e-9


def test_relaxation_stops_at_fixed_point():
    net = energy_net(readout=False)
    x, _ = batch()
    result = net.relax(x, steps=500, tol=1e-9)
    assert result.steps < 500
    assert result.residual < 1e-9
    # The fixed point equation written out by hand: u_l = W_l s_{l-1} + b_l + W_{l+1}^T s_{l+1}.
    w = [b.layer.weight for b in net.blocks]
    b = [blk.layer.bias for blk in net.blocks]
    s = result.activities
    expected = [s[0] @ w[0].T + b[0] + s[2] @ w[1], s[1] @ w[1].T + b[1] + s[3] @ w[2], s[2] @ w[2].T + b[2]]
    for u, e in zip(result.potentials, expected):
        torch.testing.assert_close(u, e, atol=1e-8, rtol=0)


def test_relax_reports_steps_residual_energy_per_phase():
    rule = rules.build("ep", energy_net(), nudging="symmetric", free_steps=7, nudged_steps=3, tol=0.0)
    stats = rule.step(*batch())
    assert stats["free_steps"] == 7
    assert stats["nudged_steps"] == 3
    assert stats["relaxation_steps"] == 7 + 2 * 3
    for key in ("free_residual", "free_energy", "nudged_residual", "nudged_energy"):
        assert isinstance(stats[key], float)


def test_predict_returns_relaxed_output():
    net = energy_net(readout=False)
    rule = rules.build("chl", net, free_steps=300, tol=1e-10)
    x, _ = batch()
    out = rule.predict(x)
    relaxed = net.relax(x, steps=300, tol=1e-10)
    torch.testing.assert_close(out, relaxed.activities[-1])
    feedforward = net.rho(net.feedforward_state(x)[-1])
    assert not torch.allclose(out, feedforward)  # top-down feedback moved the output


# -- ap and ep ---------------------------------------------------------------------


def bptt_gradient(net, x, y, steps=200):
    """Gradient of the cost by backprop through the unrolled relaxation from the bottom-up start."""
    result = net.relax(x, steps=steps, tol=0.0)
    loss = net.cost(result.activities, one_hot(y)).mean()
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])


# The hard sigmoid saturates the mse output units of some nets to a zero
# gradient, so the mse cases use the smooth sigmoid.
COSTS = [("ce", "hard-sigmoid"), ("mse", "sigmoid")]


@pytest.mark.parametrize("cost, activation", COSTS)
@pytest.mark.parametrize("spec", SPECS)
def test_ap_equals_backprop_through_relaxation(spec, cost, activation):
    net = energy_net(spec, activation)
    ap = rules.build("ap", net, cost=cost, free_steps=300, adjoint_steps=300, tol=1e-13)
    x, y = batch(spec)
    stats = ap.step(x, y)
    assert stats["adjoint_steps"] < 300
    expected = bptt_gradient(net, x, y)
    assert relative_error(flat_grads(net), expected) < 1e-8


def test_ap_adjoint_memory_does_not_grow_with_steps():
    # Each adjoint step is a vector-Jacobian product through one application of
    # the drives; the graph is built once, so no tensor is saved per step.
    net = energy_net()
    x, y = batch()
    free = net.relax(x, steps=200, tol=0.0)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        net.adjoint_gradients(x, one_hot(y), free, steps=5, tol=0.0)
        few = sum(saved)
        saved.clear()
        net.adjoint_gradients(x, one_hot(y), free, steps=200, tol=0.0)
        many = sum(saved)
    assert many == few


def test_reference_gradient_equals_backprop_through_relaxation():
    net = energy_net()
    rule = rules.build("ep", net)
    x, y = batch()
    reference = torch.cat(rule.reference_gradients(x, y))
    # The reference relaxations stop at a tolerance of 1e-5, so agreement is to about that.
    assert relative_error(reference, bptt_gradient(net, x, y)) < 1e-3


@pytest.mark.parametrize("cost, activation", COSTS)
@pytest.mark.parametrize("spec", SPECS)
def test_ep_approaches_ap_as_beta_shrinks(spec, cost, activation):
    net = energy_net(spec, activation)
    x, y = batch(spec)
    ap = rules.build("ap", net, cost=cost, free_steps=300, adjoint_steps=300, tol=1e-13)
    ap.step(x, y)
    exact = flat_grads(net)
    errors = {}
    for nudging in ("one-sided", "symmetric"):
        for beta in (1e-3, 1e-4):
            ep = rules.build("ep", net, cost=cost, beta=beta, nudging=nudging, free_steps=300, nudged_steps=300,
                             tol=1e-13)
            ep.step(x, y)
            errors[nudging, beta] = relative_error(flat_grads(net), exact)
    # One-sided nudging is biased by O(beta), symmetric nudging by O(beta^2).
    # Small betas keep the nudged states off the kinks of the hard sigmoid and max pooling.
    assert errors["one-sided", 1e-4] < 0.3 * errors["one-sided", 1e-3]
    assert errors["one-sided", 1e-4] < 1e-3
    assert errors["symmetric", 1e-4] < 0.03 * errors["symmetric", 1e-3]
    assert errors["symmetric", 1e-4] < 1e-6
    for beta in (1e-3, 1e-4):
        assert errors["symmetric", beta] < errors["one-sided", beta]


def test_random_sign_nudges_average_to_symmetric():
    # (g(+b) - g(0)) / b and (g(-b) - g(0)) / (-b) average to (g(+b) - g(-b)) / 2b exactly.
    net = energy_net()
    x, y = batch()
    settings = dict(beta=0.2, free_steps=300, nudged_steps=300, tol=1e-13)
    rules.build("ep", net, nudging="symmetric", **settings).step(x, y)
    symmetric = flat_grads(net)
    random_sign = rules.build("ep", net, nudging="random-sign", **settings)
    by_sign = {}
    for _ in range(40):
        stats = random_sign.step(x, y)
        by_sign[stats["beta"]] = flat_grads(net)
        if len(by_sign) == 2:
            break
    assert sorted(by_sign) == [-0.2, 0.2]
    torch.testing.assert_close(0.5 * (by_sign[0.2] + by_sign[-0.2]), symmetric)


@pytest.mark.parametrize("cost, activation", COSTS)
def test_ap_with_separate_feedback_equals_backprop_through_relaxation(cost, activation):
    # Without symmetric weights there is no energy, but the fixed point and
    # its exact gradient, the top-down weights' included, still exist.
    net = energy_net(activation=activation)
    ap = rules.build("ap", net, cost=cost, feedback="separate", free_steps=300, adjoint_steps=300, tol=1e-13)
    x, y = batch()
    ap.step(x, y)
    assert len(ap.feedback_weights) == (1 if cost == "ce" else 2)  # a readout sends no activity down
    update = torch.cat([p.grad.flatten() for p in net.dynamics_parameters()])
    result = net.relax(x, steps=200, tol=0.0)
    loss = net.cost(result.activities, one_hot(y)).mean()
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(loss, net.dynamics_parameters())])
    assert relative_error(update, expected) < 1e-8
    assert all(0.0 < a < 180.0 for a in ap.weight_angles())


# -- chl and generec ---------------------------------------------------------------


def test_symmetric_generec_equals_chl():
    net = energy_net(readout=False)
    x, y = batch()
    settings = dict(free_steps=50, clamped_steps=50)
    rules.build("chl", net, **settings).step(x, y)
    chl = flat_grads(net)
    rules.build("generec", net, variant="symmetric-midpoint", **settings).step(x, y)
    torch.testing.assert_close(flat_grads(net), chl)


def test_chl_sgd_step_is_lr_times_correlation_difference():
    net = energy_net(readout=False)
    rule = rules.build("chl", net, free_steps=50, clamped_steps=50)
    x, y = batch()
    free = net.relax(x, steps=50)
    clamp = Phase(target=one_hot(y), clamp=True)
    clamped = net.relax(x, free.potentials[:-1], clamp, steps=50)
    before = [w.detach().clone() for w in net.weights()]
    optimizer = torch.optim.SGD(rule.parameters(), lr=0.05, momentum=0.0)
    rule.step(x, y)
    optimizer.step()
    plus, minus = clamped.activities, free.activities
    for layer, (w, old) in enumerate(zip(net.weights(), before), start=1):
        correlation_plus = torch.einsum("ni,nj->ij", plus[layer], plus[layer - 1]) / len(x)
        correlation_minus = torch.einsum("ni,nj->ij", minus[layer], minus[layer - 1]) / len(x)
        torch.testing.assert_close(w.detach() - old, 0.05 * (correlation_plus - correlation_minus))


def test_generec_basic_is_postsynaptic_difference_times_minus_activity():
    net = energy_net(readout=False)
    rule = rules.build("generec", net, free_steps=50, clamped_steps=50)
    x, y = batch()
    free = net.relax(x, steps=50)
    clamped = net.relax(x, free.potentials[:-1], Phase(target=one_hot(y), clamp=True), steps=50)
    rule.step(x, y)
    plus, minus = clamped.activities, free.activities
    for layer, block in enumerate(net.blocks, start=1):
        difference = plus[layer] - minus[layer]
        torch.testing.assert_close(block.weight.grad, -difference.T @ minus[layer - 1] / len(x))
        torch.testing.assert_close(block.layer.bias.grad, -difference.mean(0))


@pytest.mark.parametrize("variant", ["basic", "symmetric-midpoint"])
def test_generec_separate_feedback_equal_to_weights_matches_symmetric(variant):
    net = energy_net(readout=False)
    x, y = batch()
    settings = dict(variant=variant, free_steps=50, clamped_steps=50)
    rules.build("generec", net, **settings).step(x, y)
    symmetric = [w.grad.clone() for w in net.weights()]
    rule = rules.build("generec", net, feedback="separate", **settings)
    with torch.no_grad():
        for b, w in zip(rule.feedback_weights, net.weights()[1:]):
            b.copy_(w)
    rule.step(x, y)
    for w, expected in zip(net.weights(), symmetric):
        torch.testing.assert_close(w.grad, expected)
    free = net.relax(x, steps=50)
    clamped = net.relax(x, free.potentials[:-1], Phase(target=one_hot(y), clamp=True), steps=50)
    plus, minus = clamped.activities, free.activities
    for layer, b in enumerate(rule.feedback_weights, start=2):
        below_change = plus[layer - 1] - minus[layer - 1]
        if variant == "basic":
            expected = -minus[layer].T @ below_change / len(x)
        else:
            mean_above, mean_below = 0.5 * (plus[layer] + minus[layer]), 0.5 * (plus[layer - 1] + minus[layer - 1])
            expected = -(mean_above.T @ below_change + (plus[layer] - minus[layer]).T @ mean_below) / len(x)
        torch.testing.assert_close(b.grad, expected)


# -- pc ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_pc_unclamped_feedforward_state_has_zero_energy(spec):
    net = nets.build(spec, "tanh")
    rule = rules.build("pc", net)
    x, _ = batch(spec)
    inference = rule.infer(x, None)
    assert inference.energy == 0.0
    assert inference.steps == 1
    below = x
    for block, value in zip(net.blocks[:-1], inference.values):
        torch.testing.assert_close(value, block.preactivation(below))
        below = block.nonlinearity(value)


@pytest.mark.parametrize("cost", ["mse", "ce"])
@pytest.mark.parametrize("spec", SPECS)
def test_pc_matches_bp_for_small_output_error(spec, cost):
    net = nets.build(spec, "tanh")
    x, y = batch(spec)
    angles = {}
    for weight in (1.0, 1e-3):
        rule = rules.build("pc", net, cost=cost, output_weight=weight, inference_steps=400, inference_rate=0.2,
                           tol=1e-8)
        rule.step(x, y)
        angles[weight] = metrics.update_angles(rule, x, y)
    assert max(angles[1e-3]) < 1.0  # degrees, every layer
    assert max(angles[1.0]) > 10 * max(angles[1e-3])


def test_pc_update_is_local_error_times_input():
    net = nets.build("mlp:20-16-12-5", "tanh")
    rule = rules.build("pc", net)
    x, y = batch()
    rule.step(x, y)
    values = rule.infer(x, y).values
    below, inputs, errors = x, [], []
    for block, value in zip(net.blocks[:-1], values):
        inputs.append(below)
        errors.append(value - block.preactivation(below))
        below = block.nonlinearity(value)
    inputs.append(below)
    errors.append(one_hot(y) - net.blocks[-1].preactivation(below))  # mse output error, gamma = 1
    for block, error, pre in zip(net.blocks, errors, inputs):
        torch.testing.assert_close(block.weight.grad, -error.T @ pre / len(x))


# -- contract and errors ---------------------------------------------------------


@pytest.mark.parametrize("name", ["ep", "ap", "chl", "generec", "pc"])
def test_rule_angles_and_stats_on_mlp(name):
    cls = rules.get(name)
    rule = rules.build(name, cls.make_net(nets.parse("mlp:20-16-12-5"), "hard-sigmoid"))
    x, y = batch()
    stats = rule.step(x, y)
    assert stats["relaxation_steps"] > 0
    assert stats["forward_passes"] > 0
    angles = metrics.update_angles(rule, x, y)
    assert len(angles) == 3
    assert all(0.0 <= a <= 180.0 for a in angles), angles
    if name == "ap":
        assert max(angles) < 1.0
    if name in ("ep", "pc"):
        assert max(angles) < 45.0


@pytest.mark.parametrize("options, message", [
    ({"beta": 0.0}, "invalid beta 0.0"),
    ({"dt": 1.5}, "at most 1"),
    ({"free_steps": 0}, "invalid free_steps 0"),
    ({"tol": -1.0}, "invalid tol"),
    ({"schedule": "random"}, "choose one of alternating, synchronous"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(CreditlabError, match=message):
        rules.build("ep", energy_net(), **options)


def test_energy_rule_rejects_feedforward_net():
    with pytest.raises(CreditlabError, match="trains an energy net"):
        rules.build("ep", nets.build("mlp:20-16-5"))


def test_generec_rejects_conv_net():
    with pytest.raises(CreditlabError, match="does not support conv nets"):
        rules.build("generec", energy_net("conv:1x6x6-c3p-c4-8-5"))
