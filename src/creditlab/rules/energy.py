"""Energy-based rules that learn from the difference of activity between two phases (NGRAD).

chl, generec, ep and ap train a layered continuous Hopfield network
(`creditlab.nets.EnergyNet`, symmetric weights, the same layer shapes as the
MLP or conv net of the spec). Every phase relaxes the network to a fixed point
of its energy; the rules differ in the second phase and in the update:

- chl: output clamped to the target; dW = rho(s+) rho(s+)^T - rho(s-) rho(s-)^T.
- generec: the same phases; dW = (y+ - y-) x-^T, or its symmetric midpoint form.
- ep: output nudged with strength beta; dW = -(dE/dW(s^beta) - dE/dW(s^0)) / beta.
- ap: a linear adjoint relaxation at the free fixed point gives the exact gradient.

pc relaxes the value nodes of the feedforward net (`creditlab.nets.LayeredNet`)
to minimise the sum of squared prediction errors, then updates each layer
from its own prediction error.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CreditlabError
from ..metrics import angle_deg
from ..nets.energy import SCHEDULES, EnergyNet, Phase, Relaxation, _grad_or_zeros
from . import register
from .base import OptimizerDefaults, Rule, check_number, option

# Budget and tolerance of the free and adjoint relaxations behind `reference_gradients`.
REFERENCE_STEPS = 500
REFERENCE_TOL = 1e-5


@dataclass
class RelaxationOptions:
    free_steps: int = option(20, "step budget of the free phase (relaxation steps); MNIST nets with two hidden "
                             "layers need about 40", "chosen: enough for the digits nets to converge to the tolerance")
    dt: float = option(1.0, "Euler step of the relaxation, the fraction of the way each potential moves to its "
                       "drive per step (dimensionless, in (0, 1])",
                       "Laborieux et al. 2021 iterate s <- rho(h), which is dt = 1")
    tol: float = option(1e-3, "a relaxation stops once no potential changes by more than this per unit dt "
                        "(units of the potentials)", "chosen")
    schedule: str = option("alternating", "alternating updates odd layers, then even layers from the new odd ones "
                           "(block coordinate descent on the energy); synchronous updates every layer from the old state",
                           "Scellier et al. 2023 minimise the energy with asynchronous updates", choices=SCHEDULES)


def _phase_stats(name: str, relaxation: Relaxation) -> dict[str, float]:
    return {f"{name}_steps": relaxation.steps, f"{name}_residual": relaxation.residual,
            f"{name}_energy": relaxation.energy}


def _mean_phase_stats(name: str, relaxations: list[Relaxation]) -> dict[str, float]:
    n = len(relaxations)
    return {f"{name}_steps": sum(r.steps for r in relaxations) / n,
            f"{name}_residual": sum(r.residual for r in relaxations) / n,
            f"{name}_energy": sum(r.energy for r in relaxations) / n}


def _passes(relaxation_steps: float, evaluations: int) -> dict[str, float]:
    # A relaxation step sends activity through every weight bottom-up and top-down,
    # two forward-pass equivalents. A weight-gradient evaluation costs one more.
    return {"relaxation_steps": relaxation_steps, "forward_passes": 2 * relaxation_steps + evaluations,
            "backward_passes": 0}


class _EnergyRule(Rule):
    """Common parts of the rules that train an EnergyNet: free phase, prediction, exact gradient."""
    kinds = ("mlp", "conv")
    Options = RelaxationOptions
    defaults = OptimizerDefaults("adam", lr=1e-3)

    @classmethod
    def make_net(cls, spec, activation, init="auto"):
        return EnergyNet(spec, activation, init)

    def __init__(self, net, options=None):
        if not isinstance(net, EnergyNet):
            raise CreditlabError(f"rule {self.name!r} trains an energy net, not a {type(net).__name__}; "
                                 f"build it with creditlab.rules.get({self.name!r}).make_net(spec, activation)")
        super().__init__(net, options)
        o = self.options
        net.readout = self.uses_readout()
        net.free_steps, net.dt, net.tol, net.schedule = o.free_steps, o.dt, o.tol, o.schedule
        net.feedback = None
        if getattr(o, "feedback", "symmetric") == "separate":
            # Only weights that carry activity down need a twin: a readout sends none in the free phase.
            carrying = net.weights()[1:-1] if net.readout else net.weights()[1:]
            self.feedback_weights = nn.ParameterList([nn.Parameter(_random_like(w.detach())) for w in carrying])
            net.feedback = list(self.feedback_weights)

    @classmethod
    def check_options(cls, options) -> None:
        check_number(cls.name, "free_steps", options.free_steps, integer=True)
        check_number(cls.name, "dt", options.dt, maximum=1.0)
        check_number(cls.name, "tol", options.tol, above=False)

    def uses_readout(self) -> bool:
        return getattr(self.options, "cost", "mse") == "ce"

    def target(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.net.spec.output_size).to(like.dtype)

    def loss(self, output, y):
        if self.net.readout:
            return F.cross_entropy(output, y)
        return 0.5 * ((output - self.target(y, output)) ** 2).sum(1).mean()

    def free_phase(self, x: torch.Tensor) -> Relaxation:
        with torch.no_grad():
            return self.net.relax(x)

    def energy_gradients(self, relaxation: Relaxation, phase: Phase) -> list[torch.Tensor]:
        """dF/dtheta (F = E + beta C, batch mean) at the relaxed state, aligned with `net.parameters()`."""
        activities = [a.detach() for a in relaxation.activities]
        with torch.enable_grad():
            energy = self.net.energy(activities, phase).mean()
            return _grad_or_zeros(energy, list(self.net.parameters()))

    def write_grads(self, grads: list[torch.Tensor]) -> None:
        """Store gradients aligned with `net.dynamics_parameters()` as the update."""
        for p, g in zip(self.net.dynamics_parameters(), grads):
            p.grad = g.detach()

    def weight_angles(self):
        if self.net.feedback is None:
            return None
        return [angle_deg(b, w) for b, w in zip(self.net.feedback, self.net.weights()[1:])]

    def reference_gradients(self, x, y):
        """Return the exact gradient of the mean cost at the free fixed point, per layer, by implicit differentiation."""
        net = self.net
        with torch.no_grad():
            free = net.relax(x, steps=max(REFERENCE_STEPS, net.free_steps), tol=REFERENCE_TOL)
        adjoint = net.adjoint_gradients(x, self.target(y, x), free, REFERENCE_STEPS, REFERENCE_TOL, net.dt, net.schedule)
        by_id = {id(p): g for p, g in zip(net.dynamics_parameters(), adjoint.gradients)}
        return [torch.cat([by_id[id(p)].flatten() for p in layer]) for layer in self.layers()]


def _random_like(weight: torch.Tensor) -> torch.Tensor:
    """Uniform in +-1/sqrt(fan_in) of `weight`, PyTorch's default init for it."""
    bound = 1.0 / weight[0].numel() ** 0.5
    return torch.empty_like(weight).uniform_(-bound, bound)


def _feedback_option():
    return option("symmetric", "symmetric: activity goes down through W_l^T; separate: through top-down weights B_l "
                  "of their own, drawn at random like W_l and learned by the rule", "O'Reilly 1996 lets the "
                  "reciprocal weights differ; symmetric is the energy-based default", choices=("symmetric", "separate"))


def _check_nudge(rule: str, options) -> None:
    check_number(rule, "nudged_steps", options.nudged_steps, integer=True)
    check_number(rule, "beta", options.beta)


@dataclass
class EPOptions(RelaxationOptions):
    beta: float = option(0.5, "nudging strength beta: the second phase minimises E + beta C (dimensionless)",
                         "chosen: with symmetric nudging the bias is O(beta^2), and a larger beta lifts the nudged "
                         "states further above float32 rounding")
    nudging: str = option("symmetric", "symmetric: phases at +beta and -beta, error O(beta^2); one-sided: one phase "
                          "at +beta, error O(beta); random-sign: one phase at +beta or -beta drawn per batch",
                          "Laborieux et al. 2021 (symmetric); Scellier & Bengio 2017 (one-sided, random sign)",
                          choices=("symmetric", "one-sided", "random-sign"))
    nudged_steps: int = option(10, "step budget of each nudged phase, which starts from the free fixed point "
                               "(relaxation steps)", "the MNIST script of Laborieux et al. 2021 relaxes 30 free and 10 nudged steps")
    cost: str = option("ce", "ce: softmax readout outside the energy with cross-entropy; mse: output units in the "
                       "energy with C = 1/2 |s_L - y|^2", "Laborieux et al. 2021 (ce); Scellier & Bengio 2017 (mse)",
                       choices=("ce", "mse"))


@register
class EquilibriumPropagation(_EnergyRule):
    name = "ep"
    description = "Equilibrium propagation: contrast the free fixed point with one nudged towards the target"
    reference = "Scellier & Bengio 2017; Laborieux et al. 2021"
    Options = EPOptions

    @classmethod
    def check_options(cls, options):
        super().check_options(options)
        _check_nudge(cls.name, options)

    def betas(self) -> list[float]:
        beta, nudging = self.options.beta, self.options.nudging
        if nudging == "symmetric":
            return [beta, -beta]
        if nudging == "random-sign":
            sign = 1.0 if torch.randint(2, (1,)).item() else -1.0
            return [sign * beta]
        return [beta]

    def step(self, x, y):
        self.clear_grads()
        target = self.target(y, x)
        free = self.free_phase(x)
        betas = self.betas()
        nudged, nudged_grads = [], []
        for beta in betas:
            phase = Phase(beta, target)
            with torch.no_grad():
                relaxation = self.net.relax(x, free.potentials, phase, steps=self.options.nudged_steps)
            nudged.append(relaxation)
            nudged_grads.append(self.energy_gradients(relaxation, phase))
        if len(betas) == 2:
            grads = [(a - b) / (betas[0] - betas[1]) for a, b in zip(*nudged_grads)]
        else:
            free_grads = self.energy_gradients(free, Phase())
            grads = [(a - b) / betas[0] for a, b in zip(nudged_grads[0], free_grads)]
        self.write_grads(grads)
        with torch.no_grad():
            loss = self.net.cost(free.activities, target).mean()
        steps = free.steps + sum(r.steps for r in nudged)
        return {"loss": loss, **_passes(steps, 2), "beta": betas[0],
                **_phase_stats("free", free), **_mean_phase_stats("nudged", nudged)}


@dataclass
class ClampedOptions(RelaxationOptions):
    clamped_steps: int = option(10, "step budget of the clamped phase, which starts from the free fixed point "
                                "(relaxation steps)", "chosen")


@dataclass
class CHLOptions(ClampedOptions):
    free_steps: int = option(40, "step budget of the free phase (relaxation steps)",
                             "chosen: chl diverges on digits when the phases stop short of their fixed points")
    clamped_steps: int = option(20, "step budget of the clamped phase, which starts from the free fixed point "
                                "(relaxation steps)", "chosen, as free_steps")


class _ClampedRule(_EnergyRule):
    """Free phase, then a phase with the output units held at the target (the output is in the energy)."""
    Options = ClampedOptions

    @classmethod
    def check_options(cls, options):
        super().check_options(options)
        check_number(cls.name, "clamped_steps", options.clamped_steps, integer=True)

    def phases(self, x, y) -> tuple[Relaxation, Relaxation, Phase]:
        target = self.target(y, x)
        free = self.free_phase(x)
        clamped_phase = Phase(target=target, clamp=True)
        with torch.no_grad():
            clamped = self.net.relax(x, free.potentials[:-1], clamped_phase, steps=self.options.clamped_steps)
        return free, clamped, clamped_phase

    def stats(self, free, clamped, target) -> dict:
        with torch.no_grad():
            loss = self.net.cost(free.activities, target).mean()
        return {"loss": loss, **_passes(free.steps + clamped.steps, 2),
                **_phase_stats("free", free), **_phase_stats("clamped", clamped)}


@register
class ContrastiveHebbian(_ClampedRule):
    name = "chl"
    description = "Contrastive Hebbian learning: clamped minus free correlations of the settled activities"
    reference = "Movellan 1991"
    Options = CHLOptions

    def step(self, x, y):
        self.clear_grads()
        free, clamped, phase = self.phases(x, y)
        clamped_grads = self.energy_gradients(clamped, phase)
        free_grads = self.energy_gradients(free, Phase())
        self.write_grads([c - f for c, f in zip(clamped_grads, free_grads)])
        return self.stats(free, clamped, phase.target)


@dataclass
class GeneRecOptions(ClampedOptions):
    variant: str = option("basic", "basic: dW = (y+ - y-) x-^T; symmetric-midpoint: dW = (y+ - y-) m(x)^T + "
                          "m(y) (x+ - x-)^T with m the mean of both phases, which equals chl",
                          "O'Reilly 1996", choices=("basic", "symmetric-midpoint"))
    feedback: str = _feedback_option()


@register
class GeneRec(_ClampedRule):
    name = "generec"
    description = "GeneRec: postsynaptic plus-minus difference times presynaptic minus-phase activity"
    reference = "O'Reilly 1996"
    kinds = ("mlp",)
    Options = GeneRecOptions

    def step(self, x, y):
        self.clear_grads()
        free, clamped, phase = self.phases(x, y)
        minus = [a.detach() for a in free.activities]
        plus = [a.detach() for a in clamped.activities]
        midpoint = self.options.variant == "symmetric-midpoint"
        with torch.enable_grad():
            surrogate = 0.0
            for layer, block in enumerate(self.net.blocks, start=1):
                post = plus[layer] - minus[layer]
                pre = 0.5 * (plus[layer - 1] + minus[layer - 1]) if midpoint else minus[layer - 1]
                surrogate = surrogate - (post * block.preactivation(pre)).sum()
                if midpoint and layer > 1:
                    mean_post = 0.5 * (plus[layer] + minus[layer])
                    pre_change = block.prepare(plus[layer - 1] - minus[layer - 1])
                    surrogate = surrogate - (mean_post * F.linear(pre_change, block.weight)).sum()
                if self.net.feedback is not None and layer > 1:
                    surrogate = surrogate - self.feedback_surrogate(block, self.net.feedback[layer - 2],
                                                                    plus[layer - 1:layer + 1], minus[layer - 1:layer + 1])
            grads = _grad_or_zeros(surrogate / len(x), self.net.dynamics_parameters())
        self.write_grads(grads)
        return self.stats(free, clamped, phase.target)


    def feedback_surrogate(self, block, feedback, plus, minus) -> torch.Tensor:
        """The term whose gradient is -dB for a top-down weight B, whose postsynaptic layer is the lower one."""
        (below_plus, above_plus), (below_minus, above_minus) = plus, minus
        below_change = block.prepare(below_plus - below_minus)
        if self.options.variant == "basic":
            return (F.linear(above_minus, feedback.t()) * below_change).sum()
        mean_above = 0.5 * (above_plus + above_minus)
        mean_below = block.prepare(0.5 * (below_plus + below_minus))
        return ((F.linear(mean_above, feedback.t()) * below_change).sum()
                + (F.linear(above_plus - above_minus, feedback.t()) * mean_below).sum())


@dataclass
class APOptions(RelaxationOptions):
    free_steps: int = option(40, "step budget of the free phase (relaxation steps)",
                             "chosen: the adjoint diverges on digits when the free phase stops 20 steps short of its "
                             "fixed point")
    adjoint_steps: int = option(30, "step budget of the adjoint relaxation (steps, each one vector-Jacobian product)",
                                "chosen: the adjoint converges at the rate of the free phase, from a larger start")
    cost: str = option("ce", "ce: softmax readout with cross-entropy; mse: output units in the energy with "
                       "C = 1/2 |s_L - y|^2", "chosen to match ep's default", choices=("ce", "mse"))
    feedback: str = _feedback_option()


@register
class AlmeidaPineda(_EnergyRule):
    name = "ap"
    description = "Almeida-Pineda recurrent backprop: adjoint relaxation at the free fixed point"
    reference = "Almeida 1987; Pineda 1987"
    Options = APOptions

    @classmethod
    def check_options(cls, options):
        super().check_options(options)
        check_number(cls.name, "adjoint_steps", options.adjoint_steps, integer=True)

    def step(self, x, y):
        self.clear_grads()
        free = self.free_phase(x)
        o = self.options
        adjoint = self.net.adjoint_gradients(x, self.target(y, x), free, o.adjoint_steps, o.tol, o.dt, o.schedule)
        self.write_grads(adjoint.gradients)
        return {"loss": adjoint.loss, **_passes(free.steps + adjoint.steps, 1), **_phase_stats("free", free),
                "adjoint_steps": adjoint.steps, "adjoint_residual": adjoint.residual}


@dataclass
class PCOptions:
    inference_steps: int = option(20, "step budget of the inference relaxation of the value nodes (steps)",
                                  "chosen: enough for the digits nets to settle at the default rate")
    inference_rate: float = option(0.1, "Euler step of the value nodes: v <- v - rate dF/dv (dimensionless)",
                                   "chosen: rates above about 0.3 made inference diverge on small test nets")
    tol: float = option(1e-3, "inference stops once no component of dF/dv exceeds this (units of the value nodes)",
                        "chosen")
    output_weight: float = option(1.0, "weight gamma of the output cost in F; the update is divided by gamma, so as "
                                  "gamma -> 0 (small output error) it tends to the backprop gradient "
                                  "(dimensionless)", "Whittington & Bogacz 2017 clamp the output, gamma = 1 with mse")
    cost: str = option("mse", "mse: C = 1/2 |mu_L - y|^2, the output clamped at the target; ce: C = cross-entropy "
                       "of the output prediction", "Whittington & Bogacz 2017 (mse)", choices=("mse", "ce"))


@dataclass
class Inference:
    """The value nodes after inference and how they got there."""
    values: list[torch.Tensor]  # v_1..v_{L-1}: the hidden layers' preactivations
    steps: int
    residual: float  # max |dF/dv| at the last step
    energy: float  # batch mean of F at the end
    initial_energy: float  # batch mean of F at the feedforward state


@register
class PredictiveCoding(Rule):
    name = "pc"
    description = "Predictive coding: value nodes settle to minimise prediction errors, then each layer learns locally"
    reference = "Whittington & Bogacz 2017"
    Options = PCOptions
    defaults = OptimizerDefaults("adam", lr=1e-3)

    @classmethod
    def check_options(cls, options):
        check_number(cls.name, "inference_steps", options.inference_steps, integer=True)
        check_number(cls.name, "inference_rate", options.inference_rate, maximum=1.0)
        check_number(cls.name, "output_weight", options.output_weight)
        check_number(cls.name, "tol", options.tol, above=False)

    def output_cost(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example cost C of the output prediction mu_L."""
        if self.options.cost == "ce":
            return F.cross_entropy(output, y, reduction="none")
        return 0.5 * ((output - F.one_hot(y, output.shape[1]).to(output.dtype)) ** 2).sum(1)

    def loss(self, output, y):
        return self.output_cost(output, y).mean()

    def free_energy(self, x: torch.Tensor, values: list[torch.Tensor], y: torch.Tensor | None,
                    first_prediction: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example F = sum_l 1/2 |v_l - mu_l|^2 + gamma C(mu_L, y); without y the output is free (no cost term).

        `first_prediction` may hold mu_1 = W_1 x + b_1, which the value nodes do not change.
        """
        blocks = self.net.blocks
        total = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        below = x
        for i, (block, value) in enumerate(zip(blocks[:-1], values)):
            prediction = first_prediction if i == 0 and first_prediction is not None else block.preactivation(below)
            error = value - prediction
            total = total + 0.5 * (error**2).flatten(1).sum(1)
            below = block.nonlinearity(value)
        if y is not None:
            output = blocks[-1].preactivation(below)
            total = total + self.options.output_weight * self.output_cost(output, y)
        return total

    def infer(self, x: torch.Tensor, y: torch.Tensor | None) -> Inference:
        """Relax the value nodes from the feedforward state by gradient descent on F, vectorised over the batch."""
        o = self.options
        with torch.no_grad():
            values, below = [], x
            for block in self.net.blocks[:-1]:
                value = block.preactivation(below)
                values.append(value)
                below = block.nonlinearity(value)
        first = values[0] if values else None
        initial = math.nan
        residual, done = 0.0, 0
        for done in range(1, o.inference_steps + 1 if values else 1):
            values = [v.detach().requires_grad_() for v in values]
            with torch.enable_grad():
                energy = self.free_energy(x, values, y, first)
                grads = torch.autograd.grad(energy.sum(), values)
            if done == 1:
                initial = float(energy.detach().mean())
            residual = float(torch.stack([g.abs().max() for g in grads]).max())
            if residual < o.tol:
                break
            values = [v.detach() - o.inference_rate * g for v, g in zip(values, grads)]
        values = [v.detach() for v in values]
        with torch.no_grad():
            final = float(self.free_energy(x, values, y, first).mean())
        return Inference(values, done, residual, final, final if math.isnan(initial) else initial)

    def step(self, x, y):
        self.clear_grads()
        inference = self.infer(x, y)
        with torch.enable_grad():
            energy = self.free_energy(x, inference.values, y).mean() / self.options.output_weight
            grads = _grad_or_zeros(energy, list(self.net.parameters()))
        for p, g in zip(self.net.parameters(), grads):
            p.grad = g
        with torch.no_grad():
            loss = self.loss(self.net(x), y)
        return {"loss": loss, "forward_passes": 2 * inference.steps + 2, "backward_passes": 0,
                "relaxation_steps": inference.steps, "inference_steps": inference.steps,
                "inference_residual": inference.residual, "inference_energy": inference.energy,
                "inference_initial_energy": inference.initial_energy}
