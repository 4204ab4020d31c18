"""Oracle tests of Helmholtz machines, wake-sleep and reweighted wake-sleep.

The oracles are enumeration over every configuration of a tiny machine (the
exact likelihood, posterior and expected updates), autograd of the exact
log-probabilities, and hand-derived delta rules.
"""

import itertools

import json

import numpy as np
import pytest
import torch

from creditlab import cli, data, metrics, rules, tasks
from creditlab.nets.helmholtz import HelmholtzMachine, all_states
from creditlab.tasks.density import Density
from creditlab.train import RunConfig, train
from helpers import train_interrupted_then_resumed, without_timing


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_machine(spec: str = "helmholtz:6-4-2", scale: float = 1.0, seed: int = 0) -> HelmholtzMachine:
    torch.manual_seed(seed)
    net = HelmholtzMachine(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, scale)
    return net


def hand_log_bernoulli(probability: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return (value * probability.log() + (1 - value) * (1 - probability).log()).sum(-1)


def brute_force_log_likelihood(net: HelmholtzMachine, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log sum over every joint hidden configuration of p(x, h), one configuration at a time."""
    hidden = [all_states(n) for n in net.sizes[1:]]
    terms = []
    for combo in itertools.product(*hidden):
        layers = [x] + [h.expand(len(x), -1) for h in combo]
        terms.append(net.log_joint(layers))
    return torch.logsumexp(torch.stack(terms), 0)


def exact_posterior(net: HelmholtzMachine, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a one-hidden-layer machine and one image x (D,), return every h (S, n) and p(h | x) (S,)."""
    states = all_states(net.sizes[1])
    log_joint = net.log_joint([x.expand(len(states), -1), states])
    return states, torch.softmax(log_joint, 0)


def angle(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return metrics.angle_deg(torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b]))


def grads_of(params) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in params]


def generative_params(net):
    return [*net.generative.parameters(), net.prior]


# -- the machine --------------------------------------------------------------------


def test_log_joint_matches_hand_formula():
    net = tiny_machine("helmholtz:5-3-2")
    x, h1, h2 = torch.tensor([[1.0, 0, 1, 1, 0]]), torch.tensor([[0.0, 1, 1]]), torch.tensor([[1.0, 0]])
    with torch.no_grad():
        expected = (hand_log_bernoulli(torch.sigmoid(net.prior), h2)
                    + hand_log_bernoulli(torch.sigmoid(h2 @ net.generative[1].weight.t() + net.generative[1].bias), h1)
                    + hand_log_bernoulli(torch.sigmoid(h1 @ net.generative[0].weight.t() + net.generative[0].bias), x))
        q = (hand_log_bernoulli(torch.sigmoid(x @ net.recognition[0].weight.t() + net.recognition[0].bias), h1)
             + hand_log_bernoulli(torch.sigmoid(h1 @ net.recognition[1].weight.t() + net.recognition[1].bias), h2))
    torch.testing.assert_close(net.log_joint([x, h1, h2]), expected)
    torch.testing.assert_close(net.log_recognition([x, h1, h2]), q)


@pytest.mark.parametrize("spec", ["helmholtz:5-3", "helmholtz:5-3-2", "helmholtz:4-2-3-2"])
def test_exact_likelihood_sums_to_one_and_matches_brute_force(spec):
    net = tiny_machine(spec, scale=1.5)
    every_image = all_states(net.sizes[0])
    exact = net.exact_log_likelihood(every_image)
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(exact, brute_force_log_likelihood(net, every_image), rtol=1e-5, atol=1e-5)


def test_importance_estimate_converges_to_exact_value():
    net = tiny_machine(scale=1.0)
    x = all_states(6)[[3, 17, 40, 62]]
    exact = net.exact_log_likelihood(x).detach()
    generator = torch.Generator().manual_seed(0)
    gaps = []
    for samples, repeats in ((1, 4000), (10, 1000), (100, 200), (1000, 40), (10000, 10)):
        estimates = net.log_likelihood(x.repeat(repeats, 1), samples, generator).view(repeats, len(x))
        gaps.append((exact - estimates.mean(0)).mean().item())
    # E[log p_K] is a lower bound that tightens with K (Burda et al. 2016).
    assert gaps[0] > 0.2, gaps
    assert gaps[0] > gaps[1] > gaps[2] > 0, gaps
    assert abs(gaps[-1]) < 0.01, gaps


def test_too_large_machine_is_not_enumerated():
    from creditlab.errors import CreditlabError

    net = HelmholtzMachine("helmholtz:10-30-10")
    with pytest.raises(CreditlabError, match="too many hidden configurations"):
        net.exact_log_likelihood(torch.zeros(1, 10))


# -- wake-sleep ------------------------------------------------------------------------


def test_wake_phase_updates_only_generative_weights():
    net = tiny_machine()
    rule = rules.build("wake-sleep", net)
    rule.clear_grads()
    rule.wake_phase(torch.bernoulli(torch.full((8, 6), 0.5)))
    for p in net.recognition.parameters():
        assert p.grad is None
    for p in generative_params(net):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_sleep_phase_updates_only_recognition_weights():
    net = tiny_machine()
    rule = rules.build("wake-sleep", net)
    rule.clear_grads()
    rule.sleep_phase(8)
    for p in generative_params(net):
        assert p.grad is None
    for p in net.recognition.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_wake_update_signs_match_delta_rule():
    # Two layers, recognition forced to h = (1, 1, 1), generative weights zero so
    # p(x_i = 1 | h) = 1/2: the delta rule (x_i - 1/2) h_j raises W_ij exactly where x_i = 1.
    net = HelmholtzMachine("helmholtz:5-3")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.recognition[0].bias.fill_(50.0)
    rule = rules.build("wake-sleep", net)
    x = torch.tensor([[1.0, 0, 1, 0, 1]])
    rule.clear_grads()
    rule.wake_phase(x)
    update = -net.generative[0].weight.grad  # the change gradient descent makes
    expected_sign = (2 * x - 1).t().expand(5, 3)
    assert torch.equal(torch.sign(update), expected_sign)
    assert torch.equal(torch.sign(-net.generative[0].bias.grad), expected_sign[:, 0])
    assert torch.all(-net.prior.grad > 0)  # h = 1 is more probable than the prior's 1/2


def test_sleep_update_signs_match_delta_rule():
    # The dream is forced to h = (1, 1, 1), x = (1, 0, 1, 0, 1); recognition weights zero,
    # so the delta rule (h_j - 1/2) x_i raises R_ji where x_i = 1 and leaves the rest.
    net = HelmholtzMachine("helmholtz:5-3")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.prior.fill_(50.0)
        net.generative[0].bias.copy_(torch.tensor([50.0, -50, 50, -50, 50]))
    rule = rules.build("wake-sleep", net)
    rule.clear_grads()
    rule.sleep_phase(4)
    update = -net.recognition[0].weight.grad
    x = torch.tensor([1.0, 0, 1, 0, 1])
    assert torch.equal(torch.sign(update), x.expand(3, 5))
    assert torch.all(-net.recognition[0].bias.grad > 0)


def test_wake_and_sleep_updates_equal_autograd_of_local_log_likelihoods():
    net = tiny_machine("helmholtz:6-4-3")
    rule = rules.build("wake-sleep", net, dreams=16)
    x = torch.bernoulli(torch.full((10, 6), 0.4))
    torch.manual_seed(5)
    rule.clear_grads()
    layers, _ = rule.wake_phase(x)
    wake = grads_of(generative_params(net))
    expected = torch.autograd.grad(-net.log_joint(layers).mean(), generative_params(net))
    for got, want in zip(wake, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    torch.manual_seed(6)
    dreams = net.dream(16)
    torch.manual_seed(6)
    rule.clear_grads()
    rule.sleep_phase(16)
    expected = torch.autograd.grad(-net.log_recognition(dreams).mean(), list(net.recognition.parameters()))
    for got, want in zip(grads_of(net.recognition.parameters()), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_wake_update_expectation_is_elbo_gradient():
    # E_q(h|x)[grad log p(x, h)], the gradient of the ELBO for the generative weights, summed over every h.
    net = tiny_machine("helmholtz:6-5", scale=0.8)
    x = torch.tensor([1.0, 0, 0, 1, 1, 0])
    states = all_states(5)
    q = torch.exp(net.log_recognition([x.expand(len(states), -1), states])).detach()
    expected = torch.autograd.grad(-(q * net.log_joint([x.expand(len(states), -1), states])).sum(),
                                   generative_params(net))
    rule = rules.build("wake-sleep", net)
    rule.clear_grads()
    rule.wake_phase(x.expand(200000, -1))
    assert angle(grads_of(generative_params(net)), expected) < 2.0
    for got, want in zip(grads_of(generative_params(net)), expected):
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.01)


def test_sleep_update_expectation_is_enumerated_average():
    # E_p(x,h)[grad log q(h | x)], summed over every (x, h) of a 5-4 machine.
    net = tiny_machine("helmholtz:5-4", scale=0.8)
    images, hidden = all_states(5), all_states(4)
    x = images.repeat_interleave(len(hidden), 0)
    h = hidden.repeat(len(images), 1)
    p = torch.exp(net.log_joint([x, h])).detach()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    expected = torch.autograd.grad(-(p * net.log_recognition([x, h])).sum(), list(net.recognition.parameters()))
    rule = rules.build("wake-sleep", net)
    rule.clear_grads()
    rule.sleep_phase(200000)
    got = grads_of(net.recognition.parameters())
    assert angle(got, expected) < 2.0
    for g, want in zip(got, expected):
        torch.testing.assert_close(g, want, rtol=0.05, atol=0.01)


# -- reweighted wake-sleep -------------------------------------------------------------------


def test_rws_updates_are_importance_weighted_delta_rules():
    net = tiny_machine("helmholtz:6-4-3")
    rule = rules.build("rws", net, samples=7, sleep=False)
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    torch.manual_seed(3)
    log_w, layers = net.log_weights(x, 7)
    weights = torch.softmax(log_w, 0).detach()
    torch.manual_seed(3)
    rule.step(x, None)
    expected_p = torch.autograd.grad(-(weights * net.log_joint(layers)).sum(0).mean(), generative_params(net))
    expected_q = torch.autograd.grad(-(weights * net.log_recognition(layers)).sum(0).mean(),
                                     list(net.recognition.parameters()))
    for got, want in zip(grads_of(generative_params(net)), expected_p):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_of(net.recognition.parameters()), expected_q):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_rws_generative_update_converges_to_exact_gradient():
    net = tiny_machine("helmholtz:6-4-2", scale=0.8)
    x = all_states(6)[[5, 22, 51]]
    exact = torch.autograd.grad(-net.exact_log_likelihood(x).mean(), generative_params(net))
    rule = rules.build("rws", net, sleep=False)
    errors = []
    for samples in (1, 20000):
        rule.options.samples = samples
        torch.manual_seed(0)
        rule.step(x, None)
        errors.append(angle(grads_of(generative_params(net)), exact))
    assert errors[1] < 3.0, errors
    assert errors[0] > 3 * errors[1], errors
    got = torch.cat([g.flatten() for g in grads_of(generative_params(net))])
    want = torch.cat([g.flatten() for g in exact])
    assert ((got - want).norm() / want.norm()).item() < 0.05


def test_rws_recognition_update_converges_to_posterior_expectation():
    # The wake-phase q update estimates E_p(h|x)[grad log q(h | x)] = -grad KL(p(h | x) || q(h | x)).
    net = tiny_machine("helmholtz:6-5", scale=0.8)
    x = torch.tensor([0.0, 1, 1, 0, 1, 0])
    states, posterior = exact_posterior(net, x)
    posterior = posterior.detach()
    expected = torch.autograd.grad(-(posterior * net.log_recognition([x.expand(len(states), -1), states])).sum(),
                                   list(net.recognition.parameters()))
    rule = rules.build("rws", net, samples=50000, sleep=False)
    torch.manual_seed(0)
    rule.step(x.unsqueeze(0), None)
    assert angle(grads_of(net.recognition.parameters()), expected) < 3.0


def test_rws_sleep_option_adds_half_the_sleep_update():
    net = tiny_machine()
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    awake = rules.build("rws", net, sleep=False)
    torch.manual_seed(1)
    awake.step(x, None)
    wake_q = grads_of(net.recognition.parameters())
    both = rules.build("rws", net, sleep=True, dreams=6)
    torch.manual_seed(1)
    both.step(x, None)
    combined = grads_of(net.recognition.parameters())
    sleeper = rules.build("wake-sleep", net)
    torch.manual_seed(1)
    awake.step(x, None)  # draws the same wake samples, so the dreams below are the same too
    sleeper.clear_grads()
    sleeper.sleep_phase(6)
    sleep_q = grads_of(net.recognition.parameters())
    for c, w, s in zip(combined, wake_q, sleep_q):
        torch.testing.assert_close(c, 0.5 * w + 0.5 * s, rtol=1e-5, atol=1e-6)


# -- learning -----------------------------------------------------------------------------


def bars(n: int, generator: torch.Generator) -> torch.Tensor:
    """3x3 images of bars: each row and each column is on with probability 1/4."""
    rows = (torch.rand(n, 3, generator=generator) < 0.25).float()
    columns = (torch.rand(n, 3, generator=generator) < 0.25).float()
    return ((rows[:, :, None] + columns[:, None, :]) > 0).float().flatten(1)


def train_bars(name: str, epochs: int = 25) -> tuple[float, float]:
    """Train on 1000 bars images; return the exact mean log-likelihood before and after."""
    data = bars(1000, torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    net = HelmholtzMachine("helmholtz:9-6-3")
    rule = rules.build(name, net)
    optimizer = torch.optim.Adam(rule.parameters(), lr=1e-2)
    before = net.exact_log_likelihood(data).mean().item()
    for _ in range(epochs):
        for start in range(0, len(data), 50):
            rule.step(data[start:start + 50], None)
            optimizer.step()
    return before, net.exact_log_likelihood(data).mean().item()


def test_training_raises_exact_likelihood_and_rws_beats_wake_sleep():
    ws_before, ws_after = train_bars("wake-sleep")
    rws_before, rws_after = train_bars("rws")
    assert ws_before == rws_before
    assert ws_after > ws_before + 0.5, (ws_before, ws_after)
    assert rws_after > rws_before + 1.0, (rws_before, rws_after)
    assert rws_after > ws_after + 0.3, (ws_after, rws_after)


def test_update_angle_reference_is_exact_gradient_for_small_machines():
    net = tiny_machine("helmholtz:6-4-2", scale=0.8)
    rule = rules.build("rws", net, samples=20000, sleep=False)
    x = all_states(6)[[1, 2, 3]]
    reference = rule.reference_gradients(x, None)
    exact = torch.autograd.grad(-net.exact_log_likelihood(x).mean(), generative_params(net))
    torch.testing.assert_close(torch.cat(reference), torch.cat([g.flatten() for g in exact]))
    torch.manual_seed(0)
    rule.step(x, None)
    angles = metrics.update_angles(rule, x, None)
    assert len(angles) == 3  # two generative layers and the prior
    assert angles[0] < 5.0, angles
    assert angles[1] < 5.0, angles
    # The prior's gradient is small here, so its sampled estimate is the noisiest.
    assert angles[2] < 30.0, angles


# -- the density task ------------------------------------------------------------------------


def test_unit_interval_recovers_digit_intensities():
    from sklearn.datasets import load_digits

    source = data.load("digits")
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(data.SPLIT_SEED))
    images = torch.from_numpy(load_digits().images[order[:360].numpy()].astype(np.float32) / 16)
    torch.testing.assert_close(data.unit_interval(source.test.x, source.meta).squeeze(1), images, atol=1e-5, rtol=0)


def test_density_task_binarizes_dynamically_for_training_and_fixed_for_testing():
    task = tasks.build("density")
    dataset = task.load("digits", None, None)
    source = data.load("digits")
    torch.testing.assert_close(dataset.train.x, data.unit_interval(source.train.x, source.meta))
    for split in (dataset.val, dataset.test):
        assert set(split.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(task.load("digits", None, None).test.x, dataset.test.x)
    intensity = data.unit_interval(source.test.x, source.meta)
    assert abs(dataset.test.x.mean().item() - intensity.mean().item()) < 0.01
    first, _ = task.prepare(dataset.train.x[:200], None)
    second, _ = task.prepare(dataset.train.x[:200], None)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    assert abs(first.mean().item() - dataset.train.x[:200].mean().item()) < 0.02


def test_density_run_resumes_and_draws_pictures(tmp_path, monkeypatch):
    config = RunConfig(rule="rws", task="density", epochs=3, task_options={"eval_samples": 5, "test_samples": 20})
    reference = train(config, tmp_path / "a", progress=False)
    assert reference["net"] == "helmholtz:64-12-6"
    assert reference["test_samples"] == 20
    # The K-sample estimate is a lower bound, close to the exact value for this small machine.
    assert reference["test_log_likelihood"] <= reference["test_exact_log_likelihood"] + 0.05
    assert reference["test_log_likelihood"] > reference["test_exact_log_likelihood"] - 1.0
    for picture in ("samples.png", "reconstructions.png"):
        assert (tmp_path / "a" / picture).read_bytes()[:4] == b"\x89PNG"

    resumed = train_interrupted_then_resumed(config, tmp_path / "b", monkeypatch, Density)
    assert without_timing(resumed) == without_timing(reference)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["rule"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["rule"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_compare_density_reports_both_rules(tmp_path):
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--task", "density", "--epochs", "2", "--out", str(out), "--no-progress",
                     "--task-option", "eval_samples=5", "--task-option", "test_samples=20", "-o", "rws.samples=3"])
    assert code == 0
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["rule"] for r in runs] == ["wake-sleep", "rws"]
    for run in runs:
        assert run["test_log_likelihood"] < 0
        assert run["best_val_log_likelihood"] >= run["val_log_likelihood"]
    report = (out / "report.md").read_text()
    assert "| wake-sleep | 1 |" in report
    assert "| rws | 1 |" in report
    assert "![runs/rws-seed0/samples.png](runs/rws-seed0/samples.png)" in report
    assert (out / "val_log_likelihood.png").read_bytes()[:4] == b"\x89PNG"
