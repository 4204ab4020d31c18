"""The dendritic cortical microcircuit of Sacramento, Costa, Bengio & Senn (2018).

Layers k = 1..N contain pyramidal neurons, and every hidden layer k < N also
contains one interneuron per pyramidal neuron of layer k+1. Potentials are in arbitrary
units, time in ms and conductances in 1/ms (unit capacitance):

    hidden pyramidal  du_k/dt   = -g_lk u_k + g_B (v_B,k - u_k) + g_A (v_A,k - u_k)
    output pyramidal  du_N/dt   = -g_lk u_N + g_B (v_B,N - u_N) + g_som (u_target - u_N)
    interneuron       du^I_k/dt = -g_lk u^I_k + g_D (v^I_k - u^I_k) + g_som^I (u_k+1 - u^I_k)

with the dendritic potentials

    basal   v_B,k = W_k r_k-1 + b_k          (the forward weights, `blocks[k-1].layer`)
    apical  v_A,k = B_k r_k+1 + W^PI_k r^I_k  (top-down weights B_k, interneuron-to-pyramidal W^PI_k)
    dendrite of the interneurons  v^I_k = W^IP_k r_k + c_k

and rates r_0 = x, r_k = phi_k(u_k), r^I_k = phi_k+1(u^I_k). Hidden layers use
the net's activation and the output layer is linear (phi_N = identity), as the
last block of every creditlab net is, so an interneuron has the transfer
function of the pyramidal neuron it learns to predict. The output soma receives
the teacher only while one is given.

Plasticity compares each soma with the prediction its dendrite makes of it
(Urbanczik & Senn 2014), with the attenuations lambda_k below:

    dW_k/dt    = eta_k   (phi_k(u_k) - phi_k(lambda_k v_B,k)) r_k-1^T      (and b_k with presynaptic rate 1)
    dW^IP_k/dt = eta_IP  (phi_k+1(u^I_k) - phi_k+1(lambda_I v^I_k)) r_k^T  (and c_k)
    dW^PI_k/dt = -eta_PI v_A,k (r^I_k)^T
    dB_k/dt    = eta_TD  (phi_k(u_k) - phi_k(B_k r_k+1)) r_k+1^T            (optional)

The bottom-up potential lambda_k v_B,k is the somatic potential the basal input
alone would give: lambda = g_B / (g_lk + g_B + g_A) for hidden layers,
g_B / (g_lk + g_B) for the output layer and g_D / (g_lk + g_D) for interneurons.
`MicrocircuitNet.forward` is the stack of these bottom-up potentials, which is
the circuit's steady state without a teacher once it is self-predicting
(W^PI_k = -B_k and lambda_I W^IP_k = lambda_k+1 W_k+1): then every interneuron
matches the pyramidal neuron above it and every apical potential is zero.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CreditlabError
from .feedforward import LayeredNet


@dataclass(frozen=True)
class Conductances:
    """Leak, coupling and nudging conductances in 1/ms (unit membrane capacitance)."""
    leak: float = 0.1
    basal: float = 1.0
    apical: float = 0.8
    dendrite: float = 1.0
    nudge: float = 0.8
    interneuron_nudge: float = 0.8

    @property
    def hidden_attenuation(self) -> float:
        return self.basal / (self.leak + self.basal + self.apical)

    @property
    def output_attenuation(self) -> float:
        return self.basal / (self.leak + self.basal)

    @property
    def interneuron_attenuation(self) -> float:
        return self.dendrite / (self.leak + self.dendrite)

    def validate(self) -> None:
        for name in ("leak", "basal", "apical", "dendrite", "nudge", "interneuron_nudge"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise CreditlabError(f"invalid conductance g_{name} {value!r}: give a finite number >= 0 (1/ms)")
        if self.leak + self.basal <= 0 or self.leak + self.dendrite <= 0:
            raise CreditlabError("invalid conductances: g_leak + g_basal and g_leak + g_dendrite must be positive")


@dataclass(frozen=True)
class PlasticityRates:
    """Learning rates eta in 1/ms per unit rate: forward (one per layer, input side first) and lateral."""
    forward: tuple[float, ...]
    interneuron: float = 0.0
    inhibition: float = 0.0
    top_down: float = 0.0


def glorot_bound(fan_out: int, fan_in: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


class MicrocircuitNet(LayeredNet):
    """Pyramidal forward pathway (the blocks), interneurons and top-down weights of the microcircuit.

    `forward(x)` returns the output layer's bottom-up potential, so the net can
    stand in for a feedforward net of the same shape: its update angles are
    measured against the exact gradient of that bottom-up pass.
    """

    def __init__(self, spec, activation: str = "tanh", init: str = "auto",
                 conductances: Conductances | None = None, top_down_scale: float = 1.0):
        super().__init__(spec, activation, init)
        if self.spec.kind != "mlp":
            raise CreditlabError(f"the microcircuit needs an mlp spec such as mlp:784-256-10, not {self.spec.text!r}")
        self.conductances = conductances or Conductances()
        sizes = self.spec.layer_sizes
        self.sizes = sizes
        pairs = list(zip(sizes[1:-1], sizes[2:]))  # (n_k, n_k+1) for each hidden layer k
        # W^IP_k and c_k: the dendrites of layer k's interneurons, one per neuron of layer k+1.
        self.interneurons = nn.ModuleList(nn.Linear(n, above) for n, above in pairs)
        # W^PI_k: interneurons onto the apical dendrites of layer k.
        self.inhibition = nn.ParameterList(nn.Parameter(torch.empty(n, above)) for n, above in pairs)
        for layer in self.interneurons:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for i, (n, above) in enumerate(pairs):
            bound = top_down_scale * glorot_bound(n, above)
            self.register_buffer(f"top_down_{i}", (torch.rand(n, above) * 2 - 1) * bound)
            nn.init.zeros_(self.inhibition[i])

    # -- structure ------------------------------------------------------------

    @property
    def depth(self) -> int:
        """N, the number of pyramidal layers (hidden layers plus the output layer)."""
        return len(self.blocks)

    def top_down(self, k: int) -> torch.Tensor:
        """B_k, the top-down weights from layer k+1 onto the apical dendrites of hidden layer k (1-based)."""
        return getattr(self, f"top_down_{k - 1}")

    def make_top_down_plastic(self) -> None:
        """Turn the top-down weights from fixed buffers into parameters, keeping their names and values."""
        for i in range(self.depth - 1):
            name = f"top_down_{i}"
            value = getattr(self, name)
            if isinstance(value, nn.Parameter):
                continue
            delattr(self, name)
            self.register_parameter(name, nn.Parameter(value.detach().clone()))

    def rate(self, k: int, u: torch.Tensor) -> torch.Tensor:
        """phi_k(u): the transfer function of layer k (1-based); the output layer's is the identity."""
        return self.blocks[k - 1].activation(u)

    def attenuation(self, k: int) -> float:
        """Return lambda_k, the fraction of the basal potential that layer k's soma reaches without apical input or teacher."""
        c = self.conductances
        return c.output_attenuation if k == self.depth else c.hidden_attenuation

    def basal(self, k: int, below: torch.Tensor) -> torch.Tensor:
        """v_B,k = W_k r_k-1 + b_k."""
        return self.blocks[k - 1].preactivation(below)

    # -- the bottom-up pass ---------------------------------------------------------

    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return [u_1, ..., u_N], each soma at lambda_k v_B,k, layer after layer."""
        potentials, rates = [], x
        for k in range(1, self.depth + 1):
            u = self.attenuation(k) * self.basal(k, rates)
            potentials.append(u)
            rates = self.rate(k, u)
        return potentials

    def forward(self, x: torch.Tensor, feedback: list[torch.Tensor] | None = None) -> torch.Tensor:
        if feedback is not None:
            raise CreditlabError("the microcircuit sends errors through its own top-down weights; "
                                 "it takes no feedback tensors")
        return self.bottom_up(x)[-1]

    def activities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return [x, r_1, ..., r_N] of the bottom-up pass (r_N is the output potential)."""
        potentials = self.bottom_up(x)
        return [x] + [self.rate(k, u) for k, u in enumerate(potentials, start=1)]

    # -- the self-predicting state ----------------------------------------------

    @torch.no_grad()
    def set_self_predicting(self) -> None:
        """Set W^PI_k = -B_k and lambda_I W^IP_k = lambda_k+1 W_k+1 (with the biases), the self-predicting state."""
        c = self.conductances
        for i, (interneuron, inhibition) in enumerate(zip(self.interneurons, self.inhibition)):
            k = i + 1
            scale = self.attenuation(k + 1) / c.interneuron_attenuation
            above = self.blocks[k].layer
            interneuron.weight.copy_(scale * above.weight)
            interneuron.bias.copy_(scale * above.bias)
            inhibition.copy_(-self.top_down(k))


@dataclass
class Presentation:
    """The result of presenting one batch, each example to its own copy of the circuit.

    `changes` pairs each plastic tensor with its weight change, the mean over
    the batch's copies. `apical` holds each hidden layer's apical potentials
    (batch, n_k) at the end. `apical_start` and `apical_end` hold, per hidden
    layer, the root-mean-square apical potential at the bottom-up start (no
    teacher yet, so this is the self-prediction error) and at the end.
    """
    output_start: torch.Tensor
    output_end: torch.Tensor
    changes: list[tuple[torch.Tensor, torch.Tensor]]
    apical: list[torch.Tensor]
    apical_start: list[float]
    apical_end: list[float]
    steps: int
    trace: dict = field(default_factory=dict)


def _transfer(module: nn.Module):
    """The activation as a plain function, or None for the identity (saves a module call per Euler step)."""
    if isinstance(module, nn.Identity):
        return None
    known = {nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid, nn.ReLU: torch.relu}
    return known.get(type(module), module)


def _apply(function, u: torch.Tensor) -> torch.Tensor:
    return u if function is None else function(u)


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean().sqrt()


@dataclass
class _Now:
    """Rates and dendritic potentials at one instant, per layer (index 0 is the input or unused).

    `prediction[k]` is lambda_k v_B,k and `interneuron[k]` is lambda_I v^I_k:
    the somatic potentials the dendrites alone would give.
    """
    rates: list
    interneuron_rates: list
    prediction: list
    apical: list
    interneuron: list


class _Circuit:
    """The weights of a net arranged for the Euler loop, and the loop's equations.

    Layers are 1-based: index 0 of every per-layer list is unused or the input.
    """

    def __init__(self, net: MicrocircuitNet, plastic_top_down: bool):
        self.net = net
        self.c = net.conductances
        self.n = net.depth
        self.phi = [None] + [_transfer(block.activation) for block in net.blocks]
        self.lam = [None] + [net.attenuation(k) for k in range(1, self.n + 1)]
        self.plastic = []
        for block in net.blocks:
            self.plastic += [block.layer.weight, block.layer.bias]
        for k in range(1, self.n):
            self.plastic += [net.interneurons[k - 1].weight, net.interneurons[k - 1].bias, net.inhibition[k - 1]]
            if plastic_top_down:
                self.plastic.append(net.top_down(k))
        self.refresh()

    def refresh(self) -> None:
        """Copy the current weights into the scaled, transposed forms the loop multiplies with."""
        net, lam_i = self.net, self.c.interneuron_attenuation
        self.basal = [None] + [(self.lam[k] * block.layer.bias, self.lam[k] * block.layer.weight.t())
                               for k, block in enumerate(net.blocks, start=1)]
        self.top_down = [None] + [net.top_down(k).t() for k in range(1, self.n)]
        self.inhibition = [None] + [w.t() for w in net.inhibition]
        self.dendrite = [None] + [(lam_i * layer.bias, lam_i * layer.weight.t()) for layer in net.interneurons]

    def bottom_up_basal(self, k: int, below: torch.Tensor) -> torch.Tensor:
        """lambda_k v_B,k, the potential the basal input alone gives the soma."""
        bias, weight = self.basal[k]
        return torch.addmm(bias, below, weight)

    def apical(self, k: int, above: torch.Tensor, interneuron_rates: torch.Tensor) -> torch.Tensor:
        """v_A,k = B_k r_k+1 + W^PI_k r^I_k."""
        return torch.addmm(above @ self.top_down[k], interneuron_rates, self.inhibition[k])

    def interneuron_prediction(self, k: int, rates: torch.Tensor) -> torch.Tensor:
        """lambda_I v^I_k, the potential the dendrite alone gives the interneuron."""
        bias, weight = self.dendrite[k]
        return torch.addmm(bias, rates, weight)

    def compartments(self, inputs: torch.Tensor, u: list, u_i: list, first_prediction: torch.Tensor) -> "_Now":
        """Rates and dendritic potentials of the state (u, u_i), from the current weights."""
        n, phi = self.n, self.phi
        r = [inputs] + [_apply(phi[k], u[k]) for k in range(1, n + 1)]
        r_i = [None] + [_apply(phi[k + 1], u_i[k]) for k in range(1, n)]
        prediction = [None, first_prediction] + [self.bottom_up_basal(k, r[k - 1]) for k in range(2, n + 1)]
        apical = [None] + [self.apical(k, r[k + 1], r_i[k]) for k in range(1, n)]
        interneuron = [None] + [self.interneuron_prediction(k, r[k]) for k in range(1, n)]
        return _Now(r, r_i, prediction, apical, interneuron)

    def euler_step(self, u: list, u_i: list, now: "_Now", target: torch.Tensor | None, dt: float,
                   noise_std: float) -> tuple[list, list]:
        """Advance every soma by dt; g_B v_B is written as (g_B / lambda) (lambda v_B)."""
        c, n = self.c, self.n
        new_u = [None]
        for k in range(1, n):
            decay = 1.0 - dt * (c.leak + c.basal + c.apical)
            new_u.append(u[k].mul(decay).add_(now.prediction[k], alpha=dt * c.basal / self.lam[k])
                         .add_(now.apical[k], alpha=dt * c.apical))
        output = u[n].mul(1.0 - dt * (c.leak + c.basal + (c.nudge if target is not None else 0.0)))
        output.add_(now.prediction[n], alpha=dt * c.basal / self.lam[n])
        if target is not None:
            output.add_(target, alpha=dt * c.nudge)
        new_u.append(output)
        new_ui = [None]
        for k in range(1, n):
            decay = 1.0 - dt * (c.leak + c.dendrite + c.interneuron_nudge)
            new_ui.append(u_i[k].mul(decay).add_(now.interneuron[k], alpha=dt * (c.leak + c.dendrite))
                          .add_(u[k + 1], alpha=dt * c.interneuron_nudge))
        if noise_std > 0:
            for v in new_u[1:] + new_ui[1:]:
                v.add_(torch.randn_like(v), alpha=noise_std * math.sqrt(dt))
        return new_u, new_ui

    def bottom_up_state(self, inputs: torch.Tensor) -> tuple[list, list]:
        """Return the potentials [None, u_1..u_N] and [None, u^I_1..u^I_N-1] a presentation starts from.

        Every pyramidal soma sits at its bottom-up potential and every
        interneuron at its fixed point given the pyramidal neurons above it.
        """
        c = self.c
        u, below = [None], inputs
        for k in range(1, self.n + 1):
            u.append(self.bottom_up_basal(k, below))
            below = _apply(self.phi[k], u[k])
        u_i = [None]
        for k in range(1, self.n):
            prediction = self.interneuron_prediction(k, _apply(self.phi[k], u[k]))
            u_i.append(((c.leak + c.dendrite) * prediction + c.interneuron_nudge * u[k + 1])
                       / (c.leak + c.dendrite + c.interneuron_nudge))
        return u, u_i


@torch.no_grad()
def bottom_up_apical(net: MicrocircuitNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Each hidden layer's apical potentials in the bottom-up state of `x`: zero when the circuit is self-predicting."""
    circuit = _Circuit(net, False)
    inputs = net.blocks[0].prepare(x)
    u, u_i = circuit.bottom_up_state(inputs)
    return [circuit.apical(k, _apply(circuit.phi[k + 1], u[k + 1]), _apply(circuit.phi[k + 1], u_i[k]))
            for k in range(1, net.depth)]


@torch.no_grad()
def present(net: MicrocircuitNet, x: torch.Tensor, target: torch.Tensor | None, duration: float, dt: float,
            rates: PlasticityRates, continuous: bool = False, noise_std: float = 0.0,
            record: bool = False) -> Presentation:
    """Simulate one presentation of the inputs `x` with forward Euler steps and integrate the plasticity.

    Each circuit starts at the bottom-up state of its input (every pyramidal
    soma at lambda_k v_B,k, every interneuron at its fixed point given the
    layer above) and the teacher, if any, nudges the output from t = 0 for
    `duration` ms. The plasticity is integrated with the same Euler steps,
    evaluated at the start of each step. With `continuous` the weights change
    at every step (by the mean change over the batch's circuits, which share
    them) and are put back at the end; otherwise they stay fixed during the
    presentation. Either way `changes` holds the total change and the weights
    are left as they were. With `record`, `trace` holds the rms apical
    potential of each hidden layer and the rms output error at every step.
    """
    circuit = _Circuit(net, rates.top_down > 0)
    n = circuit.n
    steps = max(1, round(duration / dt))
    inputs = net.blocks[0].prepare(x)
    start_values = [t.detach().clone() for t in circuit.plastic] if continuous else None
    u, u_i = circuit.bottom_up_state(inputs)
    output_start = u[n].clone()
    factors = _Factors(n, rates.top_down > 0)
    trace = {"dt": dt, "apical": [[] for _ in range(n - 1)], "output_error": []}
    apical_start: list[float] = []
    first_prediction = None

    for step in range(steps):
        if first_prediction is None:
            # The input and W_1 stay fixed, so lambda_1 v_B,1 is computed once (again after each change of W_1).
            first_prediction = circuit.bottom_up_basal(1, inputs)
        now = circuit.compartments(inputs, u, u_i, first_prediction)
        factors.append(circuit, now)
        if step == 0:
            apical_start = [float(_rms(a)) for a in now.apical[1:]]
        if record:
            for k in range(1, n):
                trace["apical"][k - 1].append(_rms(now.apical[k]))
            if target is not None:
                trace["output_error"].append(_rms(target - u[n]))
        if continuous:
            for tensor, change in zip(circuit.plastic, factors.changes(inputs, rates, dt, len(x))):
                tensor.add_(change)
            factors.clear()
            circuit.refresh()
            first_prediction = None
        u, u_i = circuit.euler_step(u, u_i, now, target, dt, noise_std)

    rates_end = [inputs] + [_apply(circuit.phi[k], u[k]) for k in range(1, n + 1)]
    apical_end = [circuit.apical(k, rates_end[k + 1], _apply(circuit.phi[k + 1], u_i[k])) for k in range(1, n)]
    if continuous:
        changes = []
        for tensor, start in zip(circuit.plastic, start_values):
            changes.append(tensor.detach() - start)
            tensor.copy_(start)
    else:
        changes = factors.changes(inputs, rates, dt, len(x))
    if record:
        trace["apical"] = [torch.stack(t).tolist() for t in trace["apical"]]
        trace["output_error"] = torch.stack(trace["output_error"]).tolist() if trace["output_error"] else []
    return Presentation(output_start, u[n], list(zip(circuit.plastic, changes)), apical_end, apical_start,
                        [float(_rms(a)) for a in apical_end], steps, trace if record else {})


class _Factors:
    """The post- and presynaptic factors of every Euler step since the last weight change."""

    def __init__(self, n: int, top_down: bool):
        self.n, self.top_down = n, top_down
        self.forward_post = [[] for _ in range(n + 1)]
        self.forward_pre = [[] for _ in range(n + 1)]
        self.inter_post = [[] for _ in range(n)]
        self.inter_pre = [[] for _ in range(n)]
        self.inhib_post = [[] for _ in range(n)]  # the apical potential; the rule uses minus it
        self.inhib_pre = [[] for _ in range(n)]
        self.top_post = [[] for _ in range(n)]
        self.top_pre = [[] for _ in range(n)]

    def append(self, circuit: _Circuit, now: _Now) -> None:
        """Record the factors of the plasticity rules at this step."""
        r, r_i, phi = now.rates, now.interneuron_rates, circuit.phi
        self.forward_post[1].append(r[1] - _apply(phi[1], now.prediction[1]))
        for k in range(2, self.n + 1):
            self.forward_post[k].append(r[k] - _apply(phi[k], now.prediction[k]))
            self.forward_pre[k].append(r[k - 1])
        for k in range(1, self.n):
            self.inter_post[k].append(r_i[k] - _apply(phi[k + 1], now.interneuron[k]))
            self.inter_pre[k].append(r[k])
            self.inhib_post[k].append(now.apical[k])
            self.inhib_pre[k].append(r_i[k])
            if self.top_down:
                self.top_post[k].append(r[k] - _apply(phi[k], r[k + 1] @ circuit.top_down[k]))
                self.top_pre[k].append(r[k + 1])

    def clear(self) -> None:
        for lists in vars(self).values():
            if isinstance(lists, list):
                for entries in lists:
                    entries.clear()

    def changes(self, inputs: torch.Tensor, rates: PlasticityRates, dt: float, batch: int) -> list[torch.Tensor]:
        """Integrate the plasticity: each change is dt eta sum_steps post^T pre / batch, in `_Circuit.plastic` order."""
        out = []
        for k in range(1, self.n + 1):
            factor = dt * rates.forward[k - 1] / batch
            total_post = torch.stack(self.forward_post[k]).sum(0)
            if k == 1:
                weight = total_post.t() @ inputs  # the input rates are the same at every step
            else:
                weight = _outer_sum(self.forward_post[k], self.forward_pre[k])
            out += [factor * weight, factor * total_post.sum(0)]
        for k in range(1, self.n):
            factor = dt * rates.interneuron / batch
            total_post = torch.stack(self.inter_post[k]).sum(0)
            out += [factor * _outer_sum(self.inter_post[k], self.inter_pre[k]), factor * total_post.sum(0)]
            out.append(-dt * rates.inhibition / batch * _outer_sum(self.inhib_post[k], self.inhib_pre[k]))
            if self.top_down:
                out.append(dt * rates.top_down / batch * _outer_sum(self.top_post[k], self.top_pre[k]))
        return out


def _outer_sum(post: list[torch.Tensor], pre: list[torch.Tensor]) -> torch.Tensor:
    """Sum over steps and circuits of post^T pre, as one product of the stacked steps."""
    if len(post) == 1:
        return post[0].t() @ pre[0]
    return torch.cat(post).t() @ torch.cat(pre)
