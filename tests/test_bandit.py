"""The contextual-bandit task: the policy-gradient estimate, the rules it serves, and its runs."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from creditlab import cli, data, io, metrics, nets, rules, tasks
from creditlab.rules.base import Rule
from creditlab.tasks.bandit import Bandit
from creditlab.train import RunConfig, build_rule, make_optimizer, train
from helpers import grads, train_interrupted_then_resumed, without_timing


pytestmark = pytest.mark.usefixtures("one_thread")


def bandit(baseline: str = "none", classes: int = 3, inputs: int = 4) -> Bandit:
    task = tasks.build("bandit", {"baseline": baseline})
    task.setup(None, SimpleNamespace(num_classes=classes, input_size=inputs))
    return task


# -- the estimate -------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["none", "mean", "learned"])
def test_policy_gradient_is_unbiased(baseline):
    # Two contexts with labels 0 and 2; the reward is 1 for the label, so the
    # expected reward is J = mean_x pi(label_x | x), whose gradient autograd gives.
    net = nets.build("mlp:4-8-3", "tanh")
    contexts = torch.tensor([[1.0, -0.5, 0.3, 0.0], [-0.2, 0.8, -1.0, 0.5]])
    labels = torch.tensor([0, 2])
    expected_reward = torch.softmax(net(contexts), 1)[torch.arange(2), labels].mean()
    exact = torch.autograd.grad(-expected_reward, list(net.parameters()))

    task = bandit(baseline)
    with torch.no_grad():
        task.reward_mean.fill_(0.7)
        if task.value is not None:
            task.value.weight.normal_()
    rule = rules.build("bp", net)
    repeats = 100000
    stats, target = task.step(rule, contexts.repeat(repeats, 1), labels.repeat(repeats))

    # The mean reward of the sampled actions estimates J itself.
    assert stats["reward"].item() == pytest.approx(expected_reward.item(), abs=0.01)
    estimate = torch.cat([g.flatten() for g in grads(rule)])
    want = torch.cat([g.flatten() for g in exact])
    assert ((estimate - want).norm() / want.norm()).item() < 0.05
    assert metrics.angle_deg(estimate, want) < 3.0


def test_policy_target_is_advantage_times_chosen_action():
    task = bandit("mean", classes=4)
    with torch.no_grad():
        task.reward_mean.fill_(0.25)
    logits = torch.randn(500, 4)
    labels = torch.randint(0, 4, (500,))
    target, reward = task.policy_target(logits, labels, task.baseline(torch.zeros(500, 4)))
    chosen = target.ne(0).sum(1)
    assert torch.all(chosen == 1)  # with b = 0.25, r - b is never 0
    action = target.abs().argmax(1)
    assert torch.equal(reward, (action == labels).float())
    torch.testing.assert_close(target[torch.arange(500), action], reward - 0.25)
    # Cross-entropy with this soft target is REINFORCE's surrogate -(r - b) log pi(a | x).
    surrogate = -((reward - 0.25) * torch.log_softmax(logits, 1)[torch.arange(500), action]).mean()
    torch.testing.assert_close(F.cross_entropy(logits, target), surrogate)


def test_rule_never_receives_the_label():
    received = []

    class Spy(Rule):
        name = "spy"

        def step(self, x, y):
            received.append(y)
            self.clear_grads()
            loss = self.loss(self.net(x), y)
            loss.backward()
            return {"loss": loss.detach()}

    task = bandit("none", classes=10, inputs=64)
    net = nets.build("mlp:64-10")
    spy = Spy(net)
    with torch.no_grad():
        net.blocks[0].layer.bias.copy_(torch.tensor([20.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))  # always picks class 0
    labels = torch.tensor([3, 7, 1, 9])
    task.step(spy, torch.zeros(4, 1, 8, 8), labels)
    (target,) = received
    assert target.dtype == torch.float32
    assert target.shape == (4, 10)
    assert torch.equal(target, torch.zeros(4, 10))  # every guess was wrong and b = 0: no trace of the labels


# -- the rules it serves ---------------------------------------------------------------


def test_bandit_serves_rules_whose_loss_is_cross_entropy():
    served = tasks.rule_names("bandit")
    for name in ("bp", "fa", "dfa", "np", "wp", "hebbian"):
        assert name in served
    assert "wake-sleep" not in served
    assert "rws" not in served

    class OwnLoss(Rule):
        tasks = ("classification",)

        def loss(self, output, y):
            return F.mse_loss(output, F.one_hot(y, 10).float())

    assert not Bandit.serves(OwnLoss)


def test_every_bandit_rule_learns_from_soft_targets():
    # A rule the bandit serves must accept the float target (N, C) and write a finite update.
    task = bandit("mean", classes=10, inputs=64)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for name in tasks.rule_names("bandit"):
        cls = rules.get(name)
        if "mlp" not in cls.kinds:
            continue
        rule = rules.build(name, cls.make_net(nets.parse("mlp:64-16-10"), "tanh"))
        task.step(rule, x, y)
        missing = [n for n, p in rule.named_parameters() if p.grad is None]
        assert not missing, f"{name} left no .grad on {missing}"
        assert all(torch.isfinite(p.grad).all() for p in rule.parameters()), name


def test_fa_with_transposed_feedback_matches_bp_on_policy_loss():
    net = nets.build("mlp:64-32-24-10", "tanh")
    fa = rules.build("fa", net)
    for i, w in enumerate(net.weights()):
        getattr(fa, f"feedback_{i}").copy_(w.detach())
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    task = bandit("mean", classes=10, inputs=64)
    torch.manual_seed(4)
    _, target = task.step(fa, x, y)
    fa_grads = grads(fa)
    bp = rules.build("bp", net)
    bp.step(x, target)
    for got, want in zip(fa_grads, grads(bp)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_dfa_sends_policy_error_to_hidden_layers():
    net = nets.build("mlp:64-32-10", "tanh")
    dfa = rules.build("dfa", net)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    task = bandit("mean", classes=10, inputs=64)
    _, target = task.step(dfa, x, y)
    # The output error of the surrogate is (r - b) (pi - onehot(a)) / N.
    logits = net(x)
    error = (torch.softmax(logits, 1) * target.sum(1, keepdim=True) - target) / len(x)
    h = net.blocks[0](x)
    delta = (error @ dfa.feedback_0) * (1 - h**2)
    torch.testing.assert_close(net.blocks[0].weight.grad, delta.t() @ x.flatten(1), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(net.blocks[1].weight.grad, error.t() @ h, rtol=1e-4, atol=1e-7)


# -- learning and runs ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bp", "fa", "dfa"])
def test_bandit_learns_digits_from_rewards(name):
    config = RunConfig(rule=name, task="bandit", batch_size=32, optimizer="adam", lr=3e-3).resolved()
    task = tasks.build("bandit", {})
    dataset = task.load("digits", None, None)
    torch.manual_seed(0)
    rule = build_rule(config, dataset)
    task.setup(rule, dataset)
    optimizer = make_optimizer(config, rule)
    generator = torch.Generator().manual_seed(0)
    for _ in range(15):
        for x, y in dataset.train.batches(config.batch_size, generator):
            task.step(rule, x, y)
            optimizer.step()
    error = metrics.error_rate(rule, dataset.test)
    assert error < 0.3, f"{name} reached {error:.1%} test error on digits from rewards"


def test_bandit_run_resumes_with_its_baseline(tmp_path, monkeypatch):
    config = RunConfig(rule="fa", task="bandit", epochs=3, task_options={"baseline": "learned"})
    reference = train(config, tmp_path / "a", progress=False)
    assert reference["rewards_seen"] == 3 * len(data.load("digits").train)

    resumed = train_interrupted_then_resumed(config, tmp_path / "b", monkeypatch, Bandit)
    assert without_timing(resumed) == without_timing(reference)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert set(a["task"]) == {"reward_mean", "value.weight", "value.bias"}
    for key in ("rule", "task"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name


def test_compare_bandit_reports_supervised_bp(tmp_path):
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--task", "bandit", "--rules", "bp,dfa", "--epochs", "2", "--out", str(out),
                     "--no-progress"])
    assert code == 0
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [(r["rule"], r["task"], r.get("label")) for r in runs] == [
        ("bp", "bandit", None), ("dfa", "bandit", None), ("bp", "classification", "bp (supervised)")]
    assert (out / "runs" / "bp-supervised-seed0" / "summary.json").exists()
    report = (out / "report.md").read_text()
    assert "| bp | rewards | 1 |" in report
    assert "| bp (supervised) | labels | 1 |" in report
    supervised_row = next(line for line in report.splitlines() if line.startswith("| bp (supervised)"))
    assert "| 2,514 |" in supervised_row  # labels seen: two epochs of 1257 images
    assert (out / "test_error_vs_rewards.png").read_bytes()[:4] == b"\x89PNG"
    history = io.read_jsonl(out / "runs" / "dfa-seed0" / "metrics.jsonl")
    assert [h["rewards_seen"] for h in history] == [1257, 2514]
    assert 0.0 <= history[-1]["rule_stats"]["reward"] <= 1.0
