"""Oracle tests of weight perturbation, node perturbation and the Hebbian baseline."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from creditlab import metrics, nets, rules
from creditlab.errors import CreditlabError
from creditlab.rules.perturbation import Hebbian, NodePerturbation, WeightPerturbation


def with_squared_error(rule_cls):
    """The rule with loss 1/2 |output - target|^2 per example, so a linear net makes the loss quadratic."""

    class SquaredError(rule_cls):
        def example_losses(self, output, target):
            return 0.5 * ((output - target) ** 2).sum(-1)

    SquaredError.__name__ = f"SquaredError{rule_cls.__name__}"
    return SquaredError


def build(rule_cls, spec, activation="linear", **options):
    torch.manual_seed(1)
    net = nets.build(spec, activation).double()
    return rule_cls(net, rule_cls.Options(**options))


def regression_batch(net, n=6):
    spec = net.spec
    x = torch.randn(n, *spec.input_shape, dtype=torch.float64)
    return x, torch.randn(n, spec.output_size, dtype=torch.float64)


def exact_gradient(rule, x, y) -> torch.Tensor:
    params = list(rule.net.parameters())
    grads = torch.autograd.grad(rule.loss(rule.net(x), y), params)
    return torch.cat([g.flatten() for g in grads])


def estimate(rule, x, y) -> torch.Tensor:
    rule.step(x, y)
    return torch.cat([p.grad.flatten() for p in rule.net.parameters()])


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm().detach())


# -- unbiasedness: the mean estimate is the exact gradient --------------------

# On a quadratic loss the antithetic difference is exact and the one-sided one is
# unbiased for every sigma, so even sigma = 1 must give the gradient. An estimator
# scaled by sigma (or 1/sigma) misses by that factor.
QUADRATIC_CASES = [
    (WeightPerturbation, {}),
    (WeightPerturbation, {"antithetic": False}),
    (WeightPerturbation, {"per_layer": True}),
    (NodePerturbation, {}),
    (NodePerturbation, {"antithetic": False}),
    (NodePerturbation, {"per_layer": True}),
    (NodePerturbation, {"eligibility": "clean"}),
]


# Under weight perturbation a deep linear net has a quartic loss, so its
# antithetic estimate carries an O(sigma^2) bias; sigma <= 0.1 keeps it small.
LOSS_CASES = [("mlp:5-3", 1e-2), ("mlp:5-3", 0.3), ("mlp:5-3", 1.0),
              ("mlp:4-3-3-2", 1e-3), ("mlp:4-3-3-2", 1e-2), ("mlp:4-3-3-2", 0.1)]


@pytest.mark.parametrize("spec,sigma", LOSS_CASES)
@pytest.mark.parametrize("rule_cls,options", QUADRATIC_CASES)
def test_mean_estimate_on_linear_nets(rule_cls, options, spec, sigma):
    # One-sided differences carry the curvature term (sigma^2 / 2) xi^T H xi, which
    # averages out but adds variance growing with sigma, so they get more draws.
    draws = 40000 if options.get("antithetic", True) else 200000
    rule = build(with_squared_error(rule_cls), spec, perturbations=draws, noise_std=sigma, **options)
    x, y = regression_batch(rule.net)
    assert relative_error(estimate(rule, x, y), exact_gradient(rule, x, y)) < 0.08


# One conv layer keeps 40,000 draws fast: its input is shared, so the K noise kernels
# run as one convolution. The batched path of deeper conv layers is checked
# against separate networks below.
@pytest.mark.parametrize("spec", ["mlp:8-6-4", "conv:1x4x4-c2p-3"])
@pytest.mark.parametrize("rule_cls", [WeightPerturbation, NodePerturbation])
def test_mean_estimate_tanh_cross_entropy(rule_cls, spec):
    rule = build(rule_cls, spec, "tanh", perturbations=40000, noise_std=1e-3)
    x = torch.randn(4, *rule.net.spec.input_shape, dtype=torch.float64)
    y = torch.randint(0, rule.net.spec.output_size, (4,))
    assert relative_error(estimate(rule, x, y), exact_gradient(rule, x, y)) < 0.15


@pytest.mark.parametrize("rule_cls", [WeightPerturbation, NodePerturbation])
def test_mean_estimate_of_bandit_policy_loss(rule_cls):
    # The bandit's soft targets (r - b) onehot(a), of either sign, make the loss the
    # policy-gradient loss; its perturbation estimate must converge to its gradient.
    rule = build(rule_cls, "mlp:8-6-4", "tanh", perturbations=40000, noise_std=1e-3)
    x = torch.randn(4, 8, dtype=torch.float64)
    advantage = torch.tensor([0.7, -0.3, 0.9, -0.1], dtype=torch.float64)
    y = advantage[:, None] * F.one_hot(torch.tensor([0, 3, 1, 2]), 4).to(torch.float64)
    assert relative_error(estimate(rule, x, y), exact_gradient(rule, x, y)) < 0.15


def test_shared_noise_node_perturbation_expectation():
    # With one noise vector for the whole minibatch the estimate of W_l converges
    # to (sum_b delta_b)(sum_b h_b)^T, not to sum_b delta_b h_b^T; with B = 1 both agree.
    rule = build(with_squared_error(NodePerturbation), "mlp:5-3", perturbations=40000, noise_std=0.1,
                 noise="shared")
    x, y = regression_batch(rule.net, 4)
    rule.step(x, y)
    with torch.no_grad():
        out = rule.net(x)
    delta = out - y  # d(loss)/d(output) per example, times B because the loss is the batch mean
    expected = (delta.sum(0) / len(x))[:, None] * x.sum(0)[None, :]
    assert relative_error(rule.net.blocks[0].weight.grad, expected) < 0.06
    single = regression_batch(rule.net, 1)
    assert relative_error(estimate(rule, *single), exact_gradient(rule, *single)) < 0.06


# -- variance: 1/sqrt(K) and antithetic sampling ------------------------------


def error_and_cosine(rule, x, y, draws: int, repeats: int) -> tuple[float, float]:
    """Mean |estimate - gradient|^2 and mean cosine with the gradient over independent steps with K draws."""
    exact = exact_gradient(rule, x, y)
    rule.options.perturbations = draws
    errors, cosines = [], []
    for _ in range(repeats):
        g = estimate(rule, x, y)
        errors.append(float((g - exact).pow(2).sum()))
        cosines.append(float(g @ exact / (g.norm() * exact.norm())))
    return sum(errors) / repeats, sum(cosines) / repeats


def test_wp_error_falls_as_one_over_k():
    # Quadratic loss, antithetic: each draw gives (eps . g) eps exactly, so
    # E|g_K - g|^2 = (N + 1) |g|^2 / K and the cosine is about sqrt(K / (K + N + 1)).
    rule = build(with_squared_error(WeightPerturbation), "mlp:6-4", noise_std=0.1)
    x, y = regression_batch(rule.net)
    n = sum(p.numel() for p in rule.net.parameters())
    squared = float(exact_gradient(rule, x, y).pow(2).sum())
    ks = [4, 16, 64, 256]
    measured = [error_and_cosine(rule, x, y, k, 300) for k in ks]
    for k, (error, cosine) in zip(ks, measured):
        assert error == pytest.approx((n + 1) * squared / k, rel=0.2)
        assert cosine == pytest.approx(math.sqrt(k / (k + n + 1)), abs=0.05)
    slope = (math.log(measured[-1][0]) - math.log(measured[0][0])) / (math.log(ks[-1]) - math.log(ks[0]))
    assert slope == pytest.approx(-1.0, abs=0.1)  # the standard error falls as 1/sqrt(K)


def test_np_error_matches_theory():
    from creditlab.scaling import np_expected_error

    rule = build(with_squared_error(NodePerturbation), "mlp:6-5-4", noise_std=0.1)
    x, y = regression_batch(rule.net)
    ks = [4, 16, 64]
    for k in ks:
        error, _ = error_and_cosine(rule, x, y, k, 300)
        assert error == pytest.approx(np_expected_error(rule, x, y, k), rel=0.2)


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_antithetic_lowers_variance(sigma):
    variances = {}
    for antithetic in (True, False):
        rule = build(with_squared_error(WeightPerturbation), "mlp:6-4", noise_std=sigma, antithetic=antithetic)
        torch.manual_seed(2)
        x, y = regression_batch(rule.net)
        variances[antithetic], _ = error_and_cosine(rule, x, y, 16, 300)
    assert variances[True] < 0.8 * variances[False]


# -- hand-written node perturbation -------------------------------------------


def hand_forward(net, x, noise, sigma):
    """Forward pass of a tanh MLP with sigma * noise[l] added to each preactivation; return inputs and output."""
    h, inputs = x.flatten(1), []
    for i, block in enumerate(net.blocks):
        inputs.append(h)
        z = h @ block.weight.t() + block.layer.bias + sigma * noise[i]
        h = z if i == len(net.blocks) - 1 else torch.tanh(z)
    return inputs, h


@pytest.mark.parametrize("form", ["shared", "per-example"])
def test_np_update_is_hand_written_product(form):
    sigma = 1e-2
    rule = build(NodePerturbation, "mlp:7-5-4-3", "tanh", perturbations=1, noise_std=sigma, antithetic=False,
                 noise=form)
    net = rule.net
    x = torch.randn(5, 7, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    torch.manual_seed(7)
    rule.step(x, y)
    torch.manual_seed(7)
    noise = [n[0] for n in rule.draw_noise(1, len(y))]  # the same draw, (B or 1, units) per layer
    inputs, out = hand_forward(net, x, noise, sigma)
    _, clean = hand_forward(net, x, [0.0] * 3, sigma)
    change = F.cross_entropy(out, y, reduction="none") - F.cross_entropy(clean, y, reduction="none")
    for block, xi, h in zip(net.blocks, noise, inputs):
        xi = sigma * xi
        if form == "shared":
            scalar = change.mean()
            expected_w = (scalar / sigma**2) * xi[0][:, None] * h.sum(0)[None, :]
            expected_b = (scalar / sigma**2) * xi[0] * len(y)
        else:
            per_example = change / len(y) / sigma**2
            expected_w = (per_example[:, None] * xi).t() @ h
            expected_b = (per_example[:, None] * xi).sum(0)
        torch.testing.assert_close(block.weight.grad, expected_w)
        torch.testing.assert_close(block.layer.bias.grad, expected_b)


@pytest.mark.parametrize("eligibility", ["perturbed", "clean"])
def test_np_antithetic_pair_input(eligibility):
    # The pair's update pairs the error with the mean of its two inputs, or with
    # the clean network's input when eligibility is clean.
    sigma = 1e-2
    rule = build(NodePerturbation, "mlp:7-5-3", "tanh", perturbations=1, noise_std=sigma, eligibility=eligibility)
    x = torch.randn(4, 7, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))
    torch.manual_seed(3)
    rule.step(x, y)
    torch.manual_seed(3)
    noise = [n[0] for n in rule.draw_noise(1, len(y))]
    plus_inputs, plus = hand_forward(rule.net, x, noise, sigma)
    minus_inputs, minus = hand_forward(rule.net, x, [-n for n in noise], sigma)
    change = (F.cross_entropy(plus, y, reduction="none") - F.cross_entropy(minus, y, reduction="none")) / 2
    error = (change / len(y) / sigma**2)[:, None] * (sigma * noise[1])
    clean_inputs, _ = hand_forward(rule.net, x, [0.0] * 2, sigma)
    if eligibility == "perturbed":
        expected = error.t() @ ((plus_inputs[1] + minus_inputs[1]) / 2)
    else:
        expected = error.t() @ clean_inputs[1]
    torch.testing.assert_close(rule.net.blocks[1].weight.grad, expected)


def test_np_conv_update_matches_autograd_outer_product():
    # For a conv layer "xi h^T" means the weight gradient that the error
    # (dL / sigma^2) xi at the preactivation produces. Autograd computes it here.
    sigma = 1e-2
    rule = build(NodePerturbation, "conv:1x5x5-c3-4", "tanh", perturbations=1, noise_std=sigma, antithetic=False)
    conv = rule.net.blocks[0]
    x = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (3,))
    torch.manual_seed(5)
    rule.step(x, y)
    torch.manual_seed(5)
    noise = rule.draw_noise(1, len(y))
    z = conv.preactivation(x)
    clean = F.cross_entropy(rule.net(x), y, reduction="none")
    h = conv.nonlinearity(z + sigma * noise[0][0])
    out = rule.net.blocks[1].preactivation(h) + sigma * noise[1][0]
    change = (F.cross_entropy(out, y, reduction="none") - clean) / len(y)
    error = (change / sigma).view(-1, 1, 1, 1) * noise[0][0]
    weight = conv.layer.weight
    expected, expected_b = torch.autograd.grad(F.conv2d(x, weight, conv.layer.bias, padding=1), [weight, conv.layer.bias],
                                               grad_outputs=error)
    torch.testing.assert_close(weight.grad, expected)
    torch.testing.assert_close(conv.layer.bias.grad, expected_b)


# -- the batched computation equals K separate networks -----------------------


def perturbed_copy(net, noise, k, sign, sigma):
    clone = copy.deepcopy(net)
    with torch.no_grad():
        for block, n in zip(clone.blocks, noise):
            block.layer.weight.add_(sign * sigma * n[0][k])
            block.layer.bias.add_(sign * sigma * n[1][k])
    return clone


@pytest.mark.parametrize("spec", ["mlp:8-6-5-3", "conv:1x6x6-c3p-c4-5-3"])
def test_wp_batched_losses_equal_separate_networks(spec):
    sigma = 0.05
    rule = build(WeightPerturbation, spec, "tanh", perturbations=3, noise_std=sigma)
    x = torch.randn(4, *rule.net.spec.input_shape, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))
    noise = rule.draw_noise(3)
    losses = rule.perturbed_losses(x, y, noise)
    assert losses.shape == (2, 3)
    for s, sign in enumerate((1.0, -1.0)):
        for k in range(3):
            clone = perturbed_copy(rule.net, noise, k, sign, sigma)
            torch.testing.assert_close(losses[s, k], F.cross_entropy(clone(x), y))


@pytest.mark.parametrize("spec", ["mlp:8-6-5-3", "conv:1x6x6-c3p-c4-5-3"])
def test_np_batched_losses_equal_separate_networks(spec):
    sigma = 0.05
    rule = build(NodePerturbation, spec, "tanh", perturbations=3, noise_std=sigma)
    x = torch.randn(4, *rule.net.spec.input_shape, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))
    noise = rule.draw_noise(3, 4)
    losses, _ = rule.perturbed_pass(x, y, noise)
    for s, sign in enumerate((1.0, -1.0)):
        for k in range(3):
            h = x
            for block, n in zip(rule.net.blocks, noise):
                h = block.nonlinearity(block.preactivation(h) + sign * sigma * n[k])
            torch.testing.assert_close(losses[s, k], F.cross_entropy(h, y, reduction="none"))


def test_per_layer_wp_perturbs_one_layer_per_group():
    rule = build(WeightPerturbation, "mlp:6-5-3", "tanh", perturbations=2, noise_std=0.05, per_layer=True)
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    noise = rule.draw_noise(2, [1])
    assert noise[0] is None
    h = rule.net.blocks[0](x)
    losses = rule.perturbed_losses(x, y, noise, start=1, h=h)
    clone = copy.deepcopy(rule.net)
    with torch.no_grad():
        clone.blocks[1].layer.weight.add_(0.05 * noise[1][0][1])
        clone.blocks[1].layer.bias.add_(0.05 * noise[1][1][1])
    torch.testing.assert_close(losses[0, 1], F.cross_entropy(clone(x), y))


# -- cost accounting and options ----------------------------------------------


@pytest.mark.parametrize("rule_name", ["wp", "np"])
@pytest.mark.parametrize("options,passes", [
    ({"perturbations": 5}, 10),
    ({"perturbations": 5, "antithetic": False}, 6),
    ({"perturbations": 5, "per_layer": True}, 3 * 10 + 1),
    ({"perturbations": 5, "per_layer": True, "antithetic": False}, 3 * 5 + 1),
])
def test_forward_passes_counted(rule_name, options, passes):
    rule = rules.build(rule_name, nets.build("mlp:64-16-12-10"), **options)
    stats = rule.step(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    assert stats["forward_passes"] == passes
    assert stats["backward_passes"] == 0


def test_np_clean_eligibility_adds_clean_pass():
    rule = rules.build("np", nets.build("mlp:64-16-12-10"), perturbations=5, eligibility="clean")
    stats = rule.step(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    assert stats["forward_passes"] == 11


@pytest.mark.parametrize("rule_name", ["wp", "np"])
def test_invalid_options_raise(rule_name):
    net = nets.build("mlp:64-10")
    with pytest.raises(CreditlabError, match="invalid perturbations 0"):
        rules.build(rule_name, net, perturbations=0)
    with pytest.raises(CreditlabError, match="invalid noise_std -1"):
        rules.build(rule_name, net, noise_std=-1.0)


def test_invalid_hebbian_options_raise():
    net = nets.build("mlp:64-10")
    with pytest.raises(CreditlabError, match="invalid rank 1"):
        rules.build("hebbian", net, rank=1)
    with pytest.raises(CreditlabError, match="choose one of sanger, competitive"):
        rules.build("hebbian", net, hidden_rule="bcm")


@pytest.mark.parametrize("rule_name", ["wp", "np", "hebbian"])
def test_rules_update_angle_recorded(rule_name):
    net = nets.build("conv:1x8x8-c4p-16-10")
    rule = rules.build(rule_name, net)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    rule.step(x, y)
    angles = metrics.update_angles(rule, x, y)
    assert len(angles) == 3
    assert all(0.0 <= a <= 180.0 for a in angles)


# -- Hebbian baseline ---------------------------------------------------------


def gaussian_inputs(n, eigenvalues, generator):
    """Zero-mean Gaussian inputs whose covariance has the given eigenvalues along a random orthonormal basis."""
    d = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    scale = torch.tensor(eigenvalues, dtype=torch.float64).sqrt()
    return (torch.randn(n, d, generator=generator, dtype=torch.float64) * scale) @ basis.t(), basis


def train_hidden(rule, x, steps, lr, batch=100):
    """Apply the rule's hidden update with plain SGD for `steps` minibatches of x (labels are random)."""
    weight = rule.net.blocks[0].layer.weight
    for i in range(steps):
        start = (i * batch) % len(x)
        xb = x[start:start + batch]
        rule.step(xb, torch.randint(0, 2, (len(xb),)))
        with torch.no_grad():
            weight.sub_(lr * weight.grad)


def test_oja_unit_converges_to_first_principal_component():
    generator = torch.Generator().manual_seed(0)
    x, basis = gaussian_inputs(4000, [5.0, 2.0, 1.0, 0.5, 0.2, 0.1], generator)
    rule = build(Hebbian, "mlp:6-1-2", "tanh")
    train_hidden(rule, x, 600, lr=0.02)
    w = rule.net.blocks[0].weight.detach()[0]
    assert w.norm().item() == pytest.approx(1.0, abs=0.05)
    assert abs(float(w @ basis[:, 0])) > 0.99


def test_sanger_units_converge_to_leading_components_in_order():
    generator = torch.Generator().manual_seed(1)
    x, basis = gaussian_inputs(4000, [6.0, 3.0, 1.5, 0.5, 0.2, 0.1], generator)
    rule = build(Hebbian, "mlp:6-3-2", "tanh")
    train_hidden(rule, x, 600, lr=0.03)
    w = rule.net.blocks[0].weight.detach()
    for i in range(3):
        assert abs(float(w[i] @ basis[:, i])) > 0.97, f"unit {i} is not principal component {i}"


def test_hebbian_hidden_update_ignores_labels():
    rule = rules.build("hebbian", nets.build("mlp:64-16-10"))
    x = torch.randn(32, 1, 8, 8)
    rule.step(x, torch.zeros(32, dtype=torch.long))
    first = rule.net.blocks[0].weight.grad.clone()
    readout = rule.net.blocks[1].weight.grad.clone()
    rule.step(x, torch.randint(1, 10, (32,)))
    torch.testing.assert_close(rule.net.blocks[0].weight.grad, first)
    assert not torch.allclose(rule.net.blocks[1].weight.grad, readout)


def test_hebbian_readout_is_delta_rule():
    rule = rules.build("hebbian", nets.build("mlp:64-16-10"))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    rule.step(x, y)
    readout = rule.net.blocks[1]
    expected = torch.autograd.grad(F.cross_entropy(rule.net(x), y), [readout.layer.weight])[0]
    torch.testing.assert_close(readout.layer.weight.grad, expected)


def test_hebbian_readout_is_delta_rule_for_soft_targets():
    rule = rules.build("hebbian", nets.build("mlp:64-16-10"))
    x = torch.randn(32, 1, 8, 8)
    y = torch.randn(32, 1) * F.one_hot(torch.randint(0, 10, (32,)), 10).float()
    rule.step(x, y)
    readout = rule.net.blocks[1]
    expected = torch.autograd.grad(F.cross_entropy(rule.net(x), y), [readout.layer.weight])[0]
    torch.testing.assert_close(readout.layer.weight.grad, expected)


def test_competitive_units_find_cluster_directions():
    # Three well-separated directions with noise: each of them should win a unit
    # that converges onto it, with unit norm.
    generator = torch.Generator().manual_seed(2)
    centres, _ = torch.linalg.qr(torch.randn(8, 3, generator=generator, dtype=torch.float64))
    labels = torch.randint(0, 3, (3000,), generator=generator)
    x = centres.t()[labels] + 0.05 * torch.randn(3000, 8, generator=generator, dtype=torch.float64)
    rule = build(Hebbian, "mlp:8-6-2", "tanh", hidden_rule="competitive")
    train_hidden(rule, x, 600, lr=0.05)
    w = rule.net.blocks[0].weight.detach()
    best = (w @ centres).max(0)
    for cluster in range(3):
        unit = w[best.indices[cluster]]
        assert float(unit @ centres[:, cluster] / unit.norm()) > 0.95, f"no unit found direction {cluster}"
        assert unit.norm().item() == pytest.approx(1.0, abs=0.1)


def test_hebbian_conv_update_uses_patches():
    # For a conv layer the Sanger update sums over every (example, position) patch.
    rule = build(Hebbian, "conv:1x5x5-c2-3", "tanh")
    conv = rule.net.blocks[0]
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    rule.step(x, torch.randint(0, 3, (4,)))
    patches = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 9)
    w = conv.weight.detach().flatten(1)
    y = patches @ w.t()
    expected = (y.t() @ patches - torch.tril(y.t() @ y) @ w) / len(patches)
    torch.testing.assert_close(conv.weight.grad.flatten(1), -expected)


# -- the scaling study --------------------------------------------------------


def test_scaling_command_writes_report(tmp_path):
    import json

    from creditlab.cli import main

    out = tmp_path / "scaling"
    code = main(["scaling", "--out", str(out), "--repeats", "2", "--k-values", "1,4,16", "--widths", "8,16",
                 "--depths", "1,2", "--budget-data", "digits", "--budget-net", "mlp:64-16-10", "--budget", "70",
                 "--epochs", "1", "--no-progress"])
    assert code == 0
    result = json.loads((out / "scaling.json").read_text())
    assert set(result["cosine"]["slopes"]) == {f"{r} {s}" for r in ("wp", "np") for s in ("K", "width", "depth")}
    k_points = result["cosine"]["sweeps"]["K"]["wp"]
    assert [p["draws"] for p in k_points] == [1, 4, 16]
    assert all(0.0 < p["theory"] < 1.0 for p in k_points)
    budget = {r["label"]: r for r in result["budget"]}
    assert budget["wp"]["passes_per_update"] == 64
    assert budget["bp"]["passes_per_update"] == 3
    assert budget["wp"]["passes_used"] <= 70
    for name in ("report.md", "cosine.png", "budget.png"):
        assert (out / name).exists()


def test_scaling_command_rejects_bad_lists(tmp_path, capsys):
    from creditlab.cli import main

    assert main(["scaling", "--out", str(tmp_path), "--k-values", "1,x", "--skip-budget"]) == 2
    assert "invalid --k-values '1,x'" in capsys.readouterr().err
    assert main(["scaling", "--out", str(tmp_path), "--budget", "0"]) == 2
    assert "invalid --budget 0.0" in capsys.readouterr().err
    assert main(["scaling", "--out", str(tmp_path), "--draws", "-1"]) == 2
    assert "invalid --draws -1" in capsys.readouterr().err
