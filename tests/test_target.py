"""Oracle tests of the target-propagation family: tp, dtp, ddtp, ldrl and the stacked autoencoder."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from creditlab import metrics, nets, rules
from creditlab.autoencoder import StackedAutoencoder, layer_loss, reconstruction_error, train_layer
from creditlab.errors import CreditlabError
from creditlab.rules.target import gauss_newton_updates
from creditlab.tasks.classification import Classification
from helpers import grads, train_interrupted_then_resumed


class ExactInverse(nn.Module):
    """The exact inverse of a square dense block: W^{-1} (s^{-1}(h) - b), with s tanh or the identity."""

    def __init__(self, block):
        super().__init__()
        self.weight = block.weight.detach().double().inverse().to(block.weight.dtype)
        self.bias = block.layer.bias.detach().clone()
        self.tanh = isinstance(block.activation, nn.Tanh)
        self.offset = 0.0  # added to the output: a reconstruction error g(f(x)) - x independent of x

    def forward(self, h, indices=None):
        z = torch.atanh(h) if self.tanh else h
        return (z - self.bias) @ self.weight.t() + self.offset


def square_net(depth, width, activation, scale=1.0):
    """A float32 dense net (rules convert it with .double()) of of `depth` square blocks with well-conditioned weights: scale times an orthogonal matrix."""
    net = nets.mlp([width] * (depth + 1), activation)
    with torch.no_grad():
        for block in net.blocks:
            nn.init.orthogonal_(block.layer.weight, gain=scale)
            block.layer.bias.uniform_(-0.1, 0.1)
    return net


def with_exact_inverses(rule):
    rule.double()
    for i in range(1, rule.chain_top):
        rule.feedback[i - 1] = ExactInverse(rule.net.blocks[i])
    return rule


def output_jacobian(net, x, layer):
    """dh_L/dh_layer for one example x (a row), by autograd."""
    h = x
    for block in net.blocks[:layer]:
        h = block(h)
    tail = nn.Sequential(*net.blocks[layer:])
    return torch.autograd.functional.jacobian(lambda a: tail(a), h[0])


# -- dtp's targets ------------------------------------------------------------

def test_dtp_targets_match_closed_form():
    torch.manual_seed(1)
    net = square_net(2, 6, "linear")
    rule = rules.build("dtp", net, top="output", beta=0.3).double()
    with torch.no_grad():  # an inexact inverse: a random affine map
        for p in rule.feedback.parameters():
            p.normal_(0, 0.5)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 6, (5,))
    h, indices = rule.walk(x)
    h = [a.detach() for a in h]
    e = torch.softmax(h[2], 1) - F.one_hot(y, 6)
    t = rule.targets(h, indices, rule.output_error(h[2], y))
    g = rule.feedback[0]
    torch.testing.assert_close(t[2], h[2] - 0.3 * e)
    torch.testing.assert_close(t[1], h[1] + g(t[2]) - g(h[2]))


def test_difference_correction_cancels_reconstruction_error():
    torch.manual_seed(2)
    net = square_net(2, 6, "linear")
    dtp = with_exact_inverses(rules.build("dtp", net, top="output", beta=0.3))
    tp = with_exact_inverses(rules.build("tp", copy.deepcopy(net).float(), top="output", beta=0.3))
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 6, (5,))
    h, indices = dtp.walk(x)
    h = [a.detach() for a in h]
    error = dtp.output_error(h[2], y)
    exact = dtp.targets(h, indices, error)
    torch.testing.assert_close(tp.targets(h, indices, error)[1], exact[1])  # exact inverses: tp = dtp
    offset = torch.randn(6, dtype=torch.float64)
    for rule in (dtp, tp):
        rule.feedback[0].offset = offset
    torch.testing.assert_close(dtp.targets(h, indices, error)[1], exact[1])
    torch.testing.assert_close(tp.targets(h, indices, error)[1], exact[1] + offset)
    # With no output error the dtp target is the activity itself, whatever the inverse.
    zero = dtp.targets(h, indices, torch.zeros_like(error))
    torch.testing.assert_close(zero[1], h[1])


def test_dtp_linear_target_is_gauss_newton():
    torch.manual_seed(3)
    net = square_net(3, 5, "linear", scale=1.3)
    rule = with_exact_inverses(rules.build("dtp", net, top="output", beta=0.2))
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 5, (4,))
    h, indices = rule.walk(x)
    h = [a.detach() for a in h]
    error = rule.output_error(h[-1], y)
    t = rule.targets(h, indices, error)
    for layer in (1, 2):
        for b in range(len(x)):
            jacobian = output_jacobian(net, x[b:b + 1], layer)
            expected = h[layer][b] - 0.2 * torch.linalg.solve(jacobian, error[b])
            torch.testing.assert_close(t[layer][b], expected)


def test_dtp_tanh_target_nears_gauss_newton():
    torch.manual_seed(4)
    net = square_net(3, 5, "tanh", scale=0.9)
    x, y = 0.5 * torch.randn(3, 5, dtype=torch.float64), torch.randint(0, 5, (3,))
    gaps = []
    for beta in (1e-2, 1e-3):
        rule = with_exact_inverses(rules.build("dtp", net, top="output", beta=beta))
        h, indices = rule.walk(x)
        h = [a.detach() for a in h]
        error = rule.output_error(h[-1], y)
        t = rule.targets(h, indices, error)
        jacobian = output_jacobian(net, x[:1], 1)
        gauss_newton = -torch.linalg.solve(jacobian, error[0])
        gaps.append(((t[1][0] - h[1][0]) / beta - gauss_newton).norm() / gauss_newton.norm())
    assert gaps[1] < 0.02
    assert gaps[1] < gaps[0] / 5  # the gap is O(beta)


@pytest.mark.parametrize("seed", range(5))
def test_dtp_update_acute_with_exact_inverses(seed):
    torch.manual_seed(seed)
    net = square_net(3, 8, "tanh", scale=0.9)
    rule = with_exact_inverses(rules.build("dtp", net, top="output", beta=1e-3))
    x, y = 0.5 * torch.randn(16, 8, dtype=torch.float64), torch.randint(0, 8, (16,))
    rule.step(x, y)
    angles = metrics.update_angles(rule, x, y)
    assert angles[-1] == pytest.approx(0.0, abs=1e-4)  # the output block's update is bp's
    assert all(a < 90.0 for a in angles), angles
    gauss_newton = gauss_newton_updates(rule, x, y)
    for layer, reference in zip(rule.layers(), gauss_newton):
        update = torch.cat([p.grad.flatten() for p in layer])
        assert metrics.angle_deg(update, reference) < 1.0  # exact inverses give Gauss-Newton targets


# -- ddtp -------------------------------------------------------------------------

@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_ddtp_direct_feedback_reaches_pseudo_inverse(damping):
    # For a linear net, the difference reconstruction loss of Q_l is, in
    # expectation, ||Q_l J_l - I||_F^2 + damping * ||Q_l||_F^2 with J_l = dh_L/dh_l,
    # whose minimum is Q_l = J_l^T (J_l J_l^T + damping I)^{-1}.
    torch.manual_seed(5)
    net = nets.mlp([6, 5, 4, 3], "linear")
    rule = rules.build("ddtp", net, feedback="direct-linear", damping=damping, noise=0.5, schedule="alternating",
                       feedback_iterations=1, feedback_optimizer="sgd")
    rule.param_groups(1e-3, 0.02)  # sets the feedback learning rate that step() applies
    x = torch.randn(512, 6)
    for _ in range(600):
        rule.step(x, torch.randint(0, 3, (512,)))
    weights = [b.weight.detach().double() for b in net.blocks]
    for layer in (1, 2):
        jacobian = weights[2]
        if layer == 1:
            jacobian = jacobian @ weights[1]
        expected = jacobian.t() @ torch.linalg.inv(jacobian @ jacobian.t() + damping * torch.eye(3, dtype=torch.float64))
        learned = rule.feedback[layer - 1].weight.detach().double()
        assert (learned - expected).norm() / expected.norm() < 0.05, layer


def test_ddtp_drl_zero_with_exact_inverses():
    # With exact inverses the corrupted sample comes back exactly, so the loss is zero.
    torch.manual_seed(6)
    net = square_net(3, 5, "linear")
    rule = with_exact_inverses(rules.build("ddtp", net, noise=0.3))
    h, indices = rule.walk(torch.randn(8, 5, dtype=torch.float64))
    losses = rule.feedback_losses([a.detach() for a in h], indices)
    assert max(float(v.detach()) for v in losses) < 1e-20
    rule = rules.build("ddtp", square_net(3, 5, "linear"), noise=0.3).double()  # random inverses
    assert min(float(v.detach()) for v in rule.feedback_losses([a.detach() for a in h], indices)) > 0.1


def test_ddtp_drl_trains_only_its_layer():
    net = nets.mlp([6, 5, 5, 3], "tanh")
    rule = rules.build("ddtp", net)
    h, indices = rule.walk(torch.randn(8, 6))
    losses = rule.feedback_losses([a.detach() for a in h], indices)
    first = torch.autograd.grad(losses[0], list(rule.feedback[1].parameters()), allow_unused=True)
    assert all(g is None for g in first)  # layer 1's loss carries targets through g_2 without training it
    assert all(g is not None for g in torch.autograd.grad(losses[0], list(rule.feedback[0].parameters())))


# -- ldrl -----------------------------------------------------------------------

def test_ldrl_feedback_converges_to_transpose():
    # L-DRL's expected loss is ||J_g - J_f^T||^2 - ||J_f||^2: for a linear conv
    # block with max pooling and max-unpooling at the same argmax positions,
    # J_g = J_f^T exactly when the transposed convolution's kernel equals W.
    torch.manual_seed(7)
    net = nets.build("conv:1x4x4-c2-c3p-4", "linear")
    rule = rules.build("ldrl", net, noise=0.01, feedback_iterations=1, feedback_optimizer="sgd")
    x = torch.randn(1024, 1, 4, 4)
    for feedback_lr in (0.02, 0.004):  # a smaller step at the end shrinks the noise around the minimum
        rule.param_groups(1e-3, feedback_lr)
        for _ in range(100):
            rule.step(x, torch.randint(0, 4, (1024,)))
    conv = net.blocks[1].layer.weight.detach()
    assert (rule.feedback[0].layer.weight.detach() - conv).norm() / conv.norm() < 0.06
    dense = net.blocks[2].layer.weight.detach()
    assert (rule.feedback[1].layer.weight.detach() - dense.t()).norm() / dense.norm() < 0.06


def test_ldrl_transposed_feedback_equals_bp():
    # With g_l's Jacobian equal to J_f^T, dtp's targets are h - beta * dloss/dh,
    # and on a linear net that holds for any beta: the update is bp's gradient.
    torch.manual_seed(8)
    net = nets.build("conv:1x8x8-c3p-c4p-c5-6", "linear")
    rule = rules.build("ldrl", net, beta=0.5)
    with torch.no_grad():
        for i in range(1, len(net.blocks)):
            w = net.blocks[i].layer.weight
            rule.feedback[i - 1].layer.weight.copy_(w if w.dim() == 4 else w.t())
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 6, (8,))
    update = rule.forward_update(x, y)
    exact = rule.reference_gradients(x, y)
    for u, e in zip(update, exact):
        torch.testing.assert_close(u, e, rtol=1e-4, atol=1e-6)


def test_ldrl_loss_prefers_transpose_over_inverse():
    torch.manual_seed(9)
    net = square_net(2, 5, "linear", scale=2.0)
    rule = rules.build("ldrl", net, noise=0.05).double()
    h, indices = rule.walk(torch.randn(4096, 5, dtype=torch.float64))
    h = [a.detach() for a in h]
    w = net.blocks[1].layer.weight.detach()
    values = {}
    for name, matrix in (("transpose", w.t()), ("inverse", torch.linalg.inv(w))):
        with torch.no_grad():
            rule.feedback[0].layer.weight.copy_(matrix)
        values[name] = rule.feedback_losses(h, indices)[0].item()
    # Expected values: -||W||^2 at the transpose, ||W^-1 - W^T||^2 - ||W||^2 at the inverse.
    assert values["transpose"] == pytest.approx(-float(w.pow(2).sum()), rel=0.1)
    assert values["inverse"] > values["transpose"] + 0.5 * float((torch.linalg.inv(w) - w.t()).pow(2).sum())


# -- the family's contract -------------------------------------------------------

@pytest.mark.parametrize("name", ["tp", "dtp", "ddtp", "ldrl"])
@pytest.mark.parametrize("schedule", ["alternating", "parallel"])
def test_step_writes_every_grad(name, schedule):
    net = nets.build("conv:1x8x8-c4p-c6p-12-10", "elu")
    rule = rules.build(name, net, schedule=schedule)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    before = [p.detach().clone() for p in rule.feedback.parameters()]
    stats = rule.step(x, y)
    assert all(p.grad is not None for p in rule.parameters())
    assert stats["feedback_iterations"] == rule.options.feedback_iterations
    assert metrics.update_angles(rule, x, y)[-1] == pytest.approx(0.0, abs=1e-3)
    changed = any(not torch.equal(a, p) for a, p in zip(before, rule.feedback.parameters()))
    feedback_grads = [p.grad for p in rule.feedback.parameters()]
    if schedule == "alternating":
        assert changed  # step() trained the feedback weights itself
        assert all(g.abs().sum() == 0 for g in feedback_grads)
        assert {g["name"] for g in rule.param_groups(1e-3, 1e-3)} == {"forward"}
    else:
        assert not changed
        assert any(g.abs().sum() > 0 for g in feedback_grads)


def test_feedback_adam_matches_torch():
    torch.manual_seed(11)
    rule = rules.build("dtp", nets.mlp([64, 16, 16, 10]), top="output", feedback_iterations=3)
    rule.param_groups(1e-3, 0.01)
    reference = copy.deepcopy(rule.feedback)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    h, indices = rule.walk(x)
    h = [a.detach() for a in h]
    for _ in range(3):
        torch.manual_seed(12)
        rule._feedback_gradients(h, indices, 1)
        rule._feedback_optimizer_step()
        for mine, theirs in zip(rule.feedback.parameters(), reference.parameters()):
            theirs.grad = mine.grad.clone()
        optimizer.step()
    for mine, theirs in zip(rule.feedback.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("unpool", ["indices", "nearest"])
def test_conv_inverse_shapes(unpool):
    net = nets.build("conv:3x9x9-c4p-c5-7-10", "relu")
    rule = rules.build("dtp", net, unpool=unpool, top="output")
    h, indices = rule.walk(torch.randn(2, 3, 9, 9))
    for i in range(1, len(h) - 1):
        assert rule.inverse(i)(h[i + 1], indices[i]).shape == h[i].shape


def test_warmup_trains_only_feedback():
    rule = rules.build("dtp", nets.mlp([64, 16, 10]), warmup_steps=2, top="output")
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    rule.step(x, y)
    assert all(g.abs().sum() == 0 for g in grads(rule))
    rule.step(x, y)
    rule.step(x, y)
    assert any(g.abs().sum() > 0 for g in grads(rule))


@pytest.mark.parametrize("option, value, message", [
    ("beta", 0.0, "invalid beta"),
    ("noise", -1.0, "invalid noise"),
    ("feedback_iterations", 0, "invalid feedback_iterations"),
    ("schedule", "sometimes", "choose one of alternating, parallel"),
    ("unpool", "bilinear", "choose one of indices, nearest"),
])
def test_bad_options_raise(option, value, message):
    with pytest.raises(CreditlabError, match=message):
        rules.build("dtp", nets.mlp([64, 16, 10]), **{option: value})


def test_epoch_metrics_report_feedback_quality():
    from creditlab import data

    dataset = data.load("digits")
    rule = rules.build("dtp", nets.mlp([64, 32, 32, 10]))
    out = rule.epoch_metrics(dataset)
    assert len(out["reconstruction_error"]) == len(out["feedback_loss"]) == 1  # top=penultimate: one inverse
    assert len(out["update_angle_gn_deg"]) == 3
    assert out["update_angle_gn_deg"][-1] == pytest.approx(0.0, abs=1e-3)


def test_alternating_rule_resumes_exactly(tmp_path, monkeypatch):
    # The feedback optimizer's moments and the step count live in buffers, so the checkpoint carries them.
    from creditlab.train import RunConfig, train

    config = RunConfig(rule="ldrl", epochs=3)
    reference = train(config, tmp_path / "a", progress=False)
    resumed = train_interrupted_then_resumed(config, tmp_path / "b", monkeypatch, Classification)
    assert resumed["test_error"] == reference["test_error"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["rule"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["rule"]
    assert any(name.startswith("feedback_moment2") for name in a)
    assert int(a["steps_done"]) == 3 * 20
    for name in a:
        assert torch.equal(a[name], b[name]), name


# -- stacked autoencoder ------------------------------------------------------------

def test_linear_autoencoder_reaches_pca_error():
    # A linear autoencoder with k codes can do no better than the projection on
    # the top k principal components, whose error is the sum of the other eigenvalues.
    from creditlab import data

    torch.manual_seed(10)
    split = data.load("digits").train
    x = split.x.flatten(1)
    centred = x - x.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.t() @ centred / len(x))
    k = 8
    optimum = float(eigenvalues[:-k].sum())  # per example, summed over the 64 pixels
    model = StackedAutoencoder("mlp:64-8-10", "linear")
    history = train_layer(model, 0, split, epochs=60, batch_size=64, lr=1e-2, noise=0.0,
                          generator=torch.Generator().manual_seed(0), progress=False)
    with torch.no_grad():
        final = float(layer_loss(model.net.blocks[0], model.decoders[0], split.x, 0.0))
    assert history[0] > 1.5 * optimum
    assert final == pytest.approx(optimum, rel=0.05)
    assert final >= optimum * 0.999  # nothing beats the principal components
    assert reconstruction_error(model, split, 1) == pytest.approx(final / 64, rel=1e-4)


def test_autoencoder_command_writes_grid(tmp_path):
    from creditlab import cli, io

    out = tmp_path / "ae"
    assert cli.main(["autoencoder", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    assert (out / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    summary = io.read_json(out / "metrics.json")
    assert len(summary["test_reconstruction_mse"]) == 2
    assert all(len(losses) == 2 for losses in summary["train_loss"])
