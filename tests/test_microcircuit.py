"""Oracle tests of the dendritic cortical microcircuit (Sacramento, Costa, Bengio & Senn 2018)."""

import json

import pytest
import torch

from creditlab import cli, io, metrics, nets, rules
from creditlab.errors import CreditlabError
from creditlab.nets.microcircuit import Conductances, MicrocircuitNet, PlasticityRates, present
from creditlab.rules.microcircuit import Microcircuit
from creditlab.train import RunConfig, train
from creditlab.tasks.classification import Classification
from helpers import train_interrupted_then_resumed


def build(spec: str, activation: str = "tanh", **options) -> Microcircuit:
    net = Microcircuit.make_net(nets.parse(spec), activation)
    return rules.build("microcircuit", net, **options)


def reference_presentation(net: MicrocircuitNet, x: torch.Tensor, target: torch.Tensor, steps: int, dt: float,
                           eta: PlasticityRates, continuous: bool) -> dict[str, torch.Tensor]:
    """Simulate one circuit with one example, written plainly from the equations; return the final weights.

    Independent of `present`: no batching, no pre-scaled weights, every
    quantity recomputed from its defining equation at each Euler step.
    """
    c = net.conductances
    n = net.depth
    weights = {name: p.detach().clone() for name, p in net.named_parameters()}
    weights.update({f"top_down_{k - 1}": net.top_down(k).detach().clone() for k in range(1, n)})
    changes = {name: torch.zeros_like(w) for name, w in weights.items()}

    def W(k):
        return weights[f"blocks.{k - 1}.layer.weight"], weights[f"blocks.{k - 1}.layer.bias"]

    def phi(k, u):
        return u if k == n else torch.tanh(u)

    def lam(k):
        return c.basal / (c.leak + c.basal) if k == n else c.basal / (c.leak + c.basal + c.apical)

    lam_i = c.dendrite / (c.leak + c.dendrite)
    r0 = x.flatten()
    u, rates = {}, {0: r0}
    for k in range(1, n + 1):
        w, b = W(k)
        u[k] = lam(k) * (w @ rates[k - 1] + b)
        rates[k] = phi(k, u[k])
    u_i = {}
    for k in range(1, n):
        v_i = weights[f"interneurons.{k - 1}.weight"] @ rates[k] + weights[f"interneurons.{k - 1}.bias"]
        u_i[k] = (c.dendrite * v_i + c.interneuron_nudge * u[k + 1]) / (c.leak + c.dendrite + c.interneuron_nudge)

    for _ in range(steps):
        r = {0: r0, **{k: phi(k, u[k]) for k in range(1, n + 1)}}
        r_i = {k: phi(k + 1, u_i[k]) for k in range(1, n)}
        v_b = {k: W(k)[0] @ r[k - 1] + W(k)[1] for k in range(1, n + 1)}
        v_a = {k: weights[f"top_down_{k - 1}"] @ r[k + 1] + weights[f"inhibition.{k - 1}"] @ r_i[k]
               for k in range(1, n)}
        v_i = {k: weights[f"interneurons.{k - 1}.weight"] @ r[k] + weights[f"interneurons.{k - 1}.bias"]
               for k in range(1, n)}
        du = {k: -c.leak * u[k] + c.basal * (v_b[k] - u[k]) + c.apical * (v_a[k] - u[k]) for k in range(1, n)}
        du[n] = -c.leak * u[n] + c.basal * (v_b[n] - u[n]) + c.nudge * (target - u[n])
        du_i = {k: -c.leak * u_i[k] + c.dendrite * (v_i[k] - u_i[k]) + c.interneuron_nudge * (u[k + 1] - u_i[k])
                for k in range(1, n)}
        step_changes = {}
        for k in range(1, n + 1):
            error = phi(k, u[k]) - phi(k, lam(k) * v_b[k])
            step_changes[f"blocks.{k - 1}.layer.weight"] = dt * eta.forward[k - 1] * torch.outer(error, r[k - 1])
            step_changes[f"blocks.{k - 1}.layer.bias"] = dt * eta.forward[k - 1] * error
        for k in range(1, n):
            error = phi(k + 1, u_i[k]) - phi(k + 1, lam_i * v_i[k])
            step_changes[f"interneurons.{k - 1}.weight"] = dt * eta.interneuron * torch.outer(error, r[k])
            step_changes[f"interneurons.{k - 1}.bias"] = dt * eta.interneuron * error
            step_changes[f"inhibition.{k - 1}"] = dt * eta.inhibition * torch.outer(-v_a[k], r_i[k])
        for name, change in step_changes.items():
            if continuous:
                weights[name] = weights[name] + change
            else:
                changes[name] = changes[name] + change
        u = {k: u[k] + dt * du[k] for k in u}
        u_i = {k: u_i[k] + dt * du_i[k] for k in u_i}
    return {name: weights[name] + changes[name] for name in weights}


@pytest.mark.parametrize("plasticity", ["continuous", "presentation"])
def test_step_matches_plain_simulation(plasticity):
    torch.manual_seed(3)
    rule = build("mlp:6-7-5-3", presentation_ms=2.0, dt=0.1, eta_forward=0.3, eta_interneuron=0.2,
                 eta_inhibition=0.4, self_predicting="exact", plasticity=plasticity)
    rule.reach_self_predicting()
    with torch.no_grad():  # move the lateral weights off the self-predicting state so every term is non-zero
        for p in list(rule.net.interneurons.parameters()) + list(rule.net.inhibition):
            p.add_(0.3 * torch.randn_like(p))
    x, target = torch.randn(1, 6), torch.randn(1, 3)
    expected = reference_presentation(rule.net, x, target[0], 20, 0.1, rule.rates(), plasticity == "continuous")
    initial = {name: p.detach().clone() for name, p in rule.net.named_parameters()}
    optimizer = torch.optim.SGD(rule.parameters(), lr=1.0, momentum=0.0)
    rule.step(x, target)
    optimizer.step()
    for name, p in rule.net.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(p.detach(), initial[name]), f"{name} did not change"


def test_fixed_weights_differ_at_second_order():
    # Holding the weights fixed while an example is shown alters the integrated
    # change only through the weights' effect on the dynamics. That effect is
    # proportional to eta, so the difference must shrink as eta^2.
    torch.manual_seed(1)
    rule = build("mlp:10-12-8-4", self_predicting="exact")
    rule.reach_self_predicting()
    x, target = torch.randn(4, 10), torch.randn(4, 4)

    def changes(eta: float, continuous: bool) -> torch.Tensor:
        rates = PlasticityRates((eta,) * 3, eta, eta)
        result = present(rule.net, x, target, 5.0, 0.1, rates, continuous=continuous)
        return torch.cat([change.flatten() for _, change in result.changes]) / eta

    gaps = []
    for eta in (0.2, 0.1, 0.05):
        fixed, continuous = changes(eta, False), changes(eta, True)
        gaps.append(float((continuous - fixed).norm() / fixed.norm()))
    assert gaps[0] < 0.2
    for coarse, fine in zip(gaps, gaps[1:]):
        assert 1.7 < coarse / fine < 2.3  # relative gap ~ eta, so the absolute gap ~ eta^2


def test_exact_self_prediction_is_fixed_point():
    torch.manual_seed(0)
    rule = build("mlp:12-16-16-4", self_predicting="exact")
    rule.reach_self_predicting()
    x = torch.randn(32, 12)
    result = present(rule.net, x, None, 20.0, 0.1, rule.rates())
    torch.testing.assert_close(result.output_end, result.output_start, rtol=0, atol=1e-5)
    for apical in result.apical:
        assert apical.abs().max() < 1e-5
    for _, change in result.changes:
        assert change.abs().max() < 1e-6


def test_learned_self_prediction_silences_apical():
    torch.manual_seed(0)
    rule = build("mlp:20-30-20-5", self_predicting_presentations=20000)
    held_out = torch.randn(500, 20)
    before = present(rule.net, held_out, None, 10.0, 0.25, rule.lateral_rates(0.0)).apical_end
    assert min(before) > 0.1  # top-down input arrives uncancelled before learning
    curve = rule.learn_self_predicting(rule.options.self_predicting_presentations, rule.options.self_predicting_batch)
    assert curve[-1][0] < curve[0][0]
    after = present(rule.net, held_out, None, 10.0, 0.25, rule.lateral_rates(0.0)).apical_end
    for layer, (b, a) in enumerate(zip(before, after), start=1):
        assert a < 0.05 * b, f"hidden layer {layer}: apical rms {a:.4f} after learning, {b:.4f} before"


def backprop_errors(net: MicrocircuitNet, x: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    """-dL/dr_k of the matching feedforward net for every hidden layer, by autograd."""
    with torch.enable_grad():
        potentials = net.bottom_up(x)
        hidden_rates = []
        rates = x
        for k in range(1, net.depth + 1):
            u = net.attenuation(k) * net.basal(k, rates)
            rates = net.rate(k, u)
            if k < net.depth:
                hidden_rates.append(rates)
        loss = 0.5 * (target - u).pow(2).sum()
        grads = torch.autograd.grad(loss, hidden_rates)
    del potentials
    return [-g for g in grads]


def feedback_errors(net: MicrocircuitNet, x: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    """The output error sent down through the top-down weights: a_k = B_k (phi'(u_k+1) a_k+1), a_N = u_target - u_N."""
    with torch.enable_grad():
        u = [torch.zeros(0)] + [p.detach().requires_grad_() for p in net.bottom_up(x)]
        slopes = [None] + [torch.autograd.grad(net.rate(k, u[k]).sum(), u[k])[0] for k in range(1, net.depth + 1)]
    error = target - u[-1].detach()
    out = []
    for k in range(net.depth - 1, 0, -1):
        error = (slopes[k + 1] * error) @ net.top_down(k).t()
        out.insert(0, error)
    return out


@pytest.mark.parametrize("top_down", ["transposed", "random"])
def test_weak_nudging_apical_is_backprop_error(top_down):
    torch.manual_seed(2)
    rule = build("mlp:12-16-16-4", g_nudge=1e-3, self_predicting="exact")
    net = rule.net
    if top_down == "transposed":
        with torch.no_grad():
            for k in range(1, net.depth):
                net.top_down(k).copy_(net.blocks[k].weight.t())
    rule.reach_self_predicting()
    x, target = torch.randn(64, 12), torch.randn(64, 4)
    result = present(net, x, target, 30.0, 0.1, rule.rates())
    expected = backprop_errors(net, x, target) if top_down == "transposed" else feedback_errors(net, x, target)
    for k, (apical, error) in enumerate(zip(result.apical, expected), start=1):
        angle = metrics.angle_deg(apical, error)
        assert angle < 2.0, f"hidden layer {k}: apical potentials {angle:.2f} degrees from the error"


def test_weak_nudging_update_follows_gradient():
    torch.manual_seed(4)
    rule = build("mlp:12-16-16-4", g_nudge=1e-3, self_predicting="exact", presentation_ms=30.0, dt=0.1)
    with torch.no_grad():
        for k in range(1, rule.net.depth):
            rule.net.top_down(k).copy_(rule.net.blocks[k].weight.t())
    x, target = torch.randn(64, 12), torch.randn(64, 4)
    rule.step(x, target)
    angles = metrics.update_angles(rule, x, target)
    assert len(angles) == 3
    for k, angle in enumerate(angles, start=1):
        assert angle < 3.0, f"layer {k}: update {angle:.2f} degrees from the gradient"
    # The weak teacher changes the update's direction not its size: a stronger one scales it up.
    weak = rule.net.blocks[0].weight.grad.norm()
    rule.net.conductances = Conductances(nudge=2e-3)
    rule.step(x, target)
    assert rule.net.blocks[0].weight.grad.norm() / weak == pytest.approx(2.0, rel=0.02)


def regression_error(online_steps: int, hidden_learns: bool) -> tuple[float, float]:
    torch.manual_seed(1)
    teacher = nets.build("mlp:8-16-4", "tanh")
    with torch.no_grad():
        for block in teacher.blocks:
            block.layer.weight.mul_(2.0)
    torch.manual_seed(0)
    rule = build("mlp:8-16-4")
    # Layers this small stay stable at a larger rate than the online default, which is set for 256-wide layers.
    optimizer = torch.optim.SGD(rule.parameters(), lr=0.1, momentum=0.0)
    x_test = torch.randn(500, 8)
    y_test = teacher(x_test).detach()
    start = float(rule.loss(rule.predict(x_test), y_test))
    for _ in range(online_steps):
        x = torch.randn(1, 8)
        rule.step(x, teacher(x).detach())
        if not hidden_learns:
            rule.net.blocks[0].weight.grad.zero_()
            rule.net.blocks[0].layer.bias.grad.zero_()
        optimizer.step()
    return start, float(rule.loss(rule.predict(x_test), y_test))


def test_circuit_learns_teacher_online():
    start, learned = regression_error(2000, hidden_learns=True)
    _, output_only = regression_error(2000, hidden_learns=False)
    assert learned < 0.2 * start
    assert learned < 0.6 * output_only  # the apical errors teach the hidden layer


def test_optimizer_defaults_apply_change():
    # SGD with learning rate 1 and no momentum applies exactly the accumulated change; online mode scales it.
    config = RunConfig(rule="microcircuit").resolved()
    assert (config.optimizer, config.lr, config.momentum) == ("sgd", 1.0, 0.0)
    online = RunConfig(rule="microcircuit", online=True, batch_size=1).resolved()
    assert (online.optimizer, online.lr, online.momentum) == ("sgd", Microcircuit.online_defaults.lr, 0.0)


def test_online_compare_beside_bp(tmp_path):
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--online", "--rules", "bp,microcircuit", "--epochs", "1", "--net", "mlp:64-32-16-10",
                     "--out", str(out), "--no-progress", "-o", "microcircuit.self_predicting=exact",
                     "-o", "microcircuit.eta_forward=0.3"])
    assert code == 0
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["rule"] for r in runs] == ["bp", "microcircuit"]
    for record in runs:
        assert record["status"] == "finished"
        assert record["test_error"] < 0.5
    config = io.read_json(out / "runs" / "microcircuit-seed0" / "config.json")["config"]
    assert config["batch_size"] == 1
    assert config["online"] is True
    history = io.read_jsonl(out / "runs" / "microcircuit-seed0" / "metrics.jsonl")
    assert "apical_rms_end_1" in history[0]["rule_stats"]
    assert len(history[0]["self_prediction_apical_rms"]) == 2


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    config = RunConfig(rule="microcircuit", epochs=3, rule_options={"self_predicting_presentations": 2000})
    reference = train(config, tmp_path / "a", progress=False)
    resumed = train_interrupted_then_resumed(config, tmp_path / "b", monkeypatch, Classification)
    for key in ("test_error", "val_error", "train_loss", "update_angle_deg", "weight_angle_deg"):
        assert resumed[key] == reference[key], key


@pytest.mark.parametrize("options, message", [
    ({"dt": 0.0}, "invalid dt 0.0"),
    ({"presentation_ms": -1.0}, "invalid presentation_ms -1.0"),
    ({"dt": 0.5, "presentation_ms": 0.1}, "shorter than dt"),
    ({"eta_forward": -0.1}, "invalid eta_forward -0.1"),
    ({"g_leak": -0.1}, "g_leak"),
    ({"self_predicting": "guess"}, "choose one of learn, exact"),
    ({"self_predicting_batch": 0}, "invalid self_predicting_batch 0"),
    ({"top_down_scale": 0.0}, "invalid top_down_scale 0.0"),
])
def test_bad_options_raise_one_line(options, message):
    with pytest.raises(CreditlabError, match=message) as error:
        build("mlp:8-6-3", **options)
    assert "\n" not in str(error.value)


def test_bad_nets_and_targets_raise():
    with pytest.raises(CreditlabError, match="does not support conv nets"):
        RunConfig(rule="microcircuit", net="conv:1x8x8-c4p-10").resolved()
    rule = build("mlp:8-6-3")
    with pytest.raises(CreditlabError, match=r"shape \(batch, 3\)"):
        rule.step(torch.randn(2, 8), torch.randn(2, 4))


def test_single_layer_is_delta_rule():
    # Without hidden layers the output soma relaxes from lambda v_B toward
    # (g_B v_B + g_som u_target) / (g_lk + g_B + g_som) at rate g = g_lk + g_B + g_som, so
    # with N Euler steps of dt the change is eta dt beta (u_target - lambda v_B) x^T times
    # sum_n (1 - (1 - dt g)^n) = N - (1 - (1 - dt g)^N) / (dt g), where beta = g_som / g.
    torch.manual_seed(0)
    dt, steps, eta = 0.01, 4000, 0.01
    rule = build("mlp:5-3", dt=dt, presentation_ms=dt * steps, eta_forward=eta)
    x, target = torch.randn(8, 5), torch.randn(8, 3)
    rule.step(x, target)
    c = rule.net.conductances
    g = c.leak + c.basal + c.nudge
    integral = steps - (1 - (1 - dt * g) ** steps) / (dt * g)
    expected = eta * dt * integral * (c.nudge / g) * (target - rule.predict(x)).t() @ x / len(x)
    torch.testing.assert_close(-rule.net.blocks[0].weight.grad, expected, rtol=1e-4, atol=1e-7)
