"""Dendritic cortical microcircuit: errors as apical mismatches, learned online without phases.

The circuit (`creditlab.nets.microcircuit`) first learns a self-predicting
state, in which its interneurons predict the pyramidal neurons of the layer
above and cancel their top-down input, so every apical potential is zero. A
teacher then nudges the output somata toward the target. The nudge reaches the
hidden layers as apical mismatches, and each synapse follows its local
dendritic plasticity rule during the whole presentation. There is no backward
pass and no switch between phases.

A step presents each example of the batch to its own copy of the circuit for
`presentation_ms` of simulated time, all copies sharing the weights, and writes
minus the weight change each synapse accumulated (averaged over the copies)
into its `.grad`. With the default SGD, learning rate 1 and no momentum, the
optimizer applies exactly that change; any other learning rate multiplies every
plasticity rate eta, which with the default `plasticity="presentation"` is the
same as running the circuit with those rates.
"""

import logging
import math
from dataclasses import dataclass

import torch

from ..errors import CreditlabError
from ..metrics import angle_deg
from ..nets.microcircuit import Conductances, MicrocircuitNet, PlasticityRates, bottom_up_apical, present
from . import register
from .base import OptimizerDefaults, Rule, check_number, option

log = logging.getLogger(__name__)

PAPER = "Sacramento et al. 2018"
# The conductances as given in the public reimplementation github.com/phll/Neuro-Backprop of that paper.
PAPER_VALUE = "Sacramento et al. 2018, value as in the reimplementation phll/Neuro-Backprop"


@dataclass
class MicrocircuitOptions:
    dt: float = option(0.25, "Euler time step (ms)",
                       "chosen for speed; phll/Neuro-Backprop, reimplementing Sacramento et al. 2018, uses 0.1 ms. "
                       "The steady state does not depend on dt")
    presentation_ms: float = option(3.0, "simulated time each example is shown, teacher on (ms)",
                                    "chosen for speed: the somata settle within a few ms, while phll/Neuro-Backprop "
                                    "shows each pattern for 100 ms")
    eta_forward: float = option(0.05, "plasticity rate of the forward (basal) weights and biases (1/ms)",
                                "chosen on digits with batches of 64")
    eta_interneuron: float = option(0.1, "plasticity rate of the pyramidal-to-interneuron weights W^IP (1/ms)",
                                    "chosen on digits: about half the largest stable rate")
    eta_inhibition: float = option(0.05, "plasticity rate of the interneuron-to-pyramidal weights W^PI (1/ms)",
                                   "chosen on digits: about half the largest stable rate")
    eta_top_down: float = option(0.0, "plasticity rate of the top-down weights B (1/ms); 0 keeps them fixed and random",
                                 "chosen: fixed random feedback, as in feedback alignment")
    top_down_scale: float = option(4.0, "bound of the uniform random top-down weights, in units of the Glorot "
                                   "bound of their shape (dimensionless)", "chosen")
    g_leak: float = option(0.1, "somatic leak conductance g_lk (1/ms)", PAPER_VALUE)
    g_basal: float = option(1.0, "basal-to-soma coupling g_B (1/ms)", PAPER_VALUE)
    g_apical: float = option(0.8, "apical-to-soma coupling g_A (1/ms)", PAPER_VALUE)
    g_dendrite: float = option(1.0, "interneuron dendrite-to-soma coupling g_D (1/ms)", PAPER_VALUE)
    g_nudge: float = option(0.8, "teacher conductance g_som onto the output somata (1/ms); small values nudge weakly",
                            PAPER_VALUE)
    g_interneuron_nudge: float = option(0.8, "conductance g_som^I from the pyramidal neurons above onto the "
                                        "interneurons (1/ms)", PAPER_VALUE)
    target_high: float = option(1.0, "target potential of the output neuron of the true class", "chosen (one-hot)")
    target_low: float = option(0.0, "target potential of the other output neurons", "chosen (one-hot)")
    self_predicting: str = option("learn", "how the self-predicting state is reached before the task: learn it "
                                  "from random inputs without a teacher, or set it exactly (W^PI = -B and "
                                  "lambda_I W^IP = lambda W)", f"{PAPER} start the task from a self-predicting state",
                                  choices=("learn", "exact"))
    eta_self_predicting: float = option(0.8, "plasticity rate of W^IP and W^PI while the self-predicting state "
                                        "is learned from random inputs (1/ms)",
                                        "chosen: random inputs give weakly correlated rates, so a rate that would "
                                        "be unstable on data is stable here")
    self_predicting_presentations: int = option(10000, "random input patterns shown to learn the self-predicting "
                                                "state before the first task example (examples)", "chosen")
    self_predicting_batch: int = option(100, "circuits simulated in parallel while learning the self-predicting "
                                        "state (examples)", "chosen for speed")
    plasticity: str = option("presentation", "presentation: weights stay fixed while an example is shown and "
                             "change by the accumulated amount at its end; continuous: they change at every "
                             "Euler step (copies in a batch then share the mean change)", "chosen",
                             choices=("presentation", "continuous"))
    noise_std: float = option(0.0, "standard deviation of the somatic noise per sqrt(ms) (potential units)",
                              "chosen: no noise, so runs repeat exactly")


@register
class Microcircuit(Rule):
    name = "microcircuit"
    description = ("Dendritic cortical microcircuit: interneurons cancel top-down input, the teacher's "
                   "nudge becomes an apical error, and local plasticity runs during every presentation")
    reference = "Sacramento, Costa, Bengio & Senn 2018"
    kinds = ("mlp",)
    Options = MicrocircuitOptions
    defaults = OptimizerDefaults("sgd", lr=1.0, momentum=0.0)
    # One example per update moves the weights as far as a whole batch's mean change, so online mode scales
    # every plasticity rate by 0.03 (exactly, with plasticity="presentation"). With 256-wide layers on MNIST
    # a scale of 0.1 let the lateral weights W^PI drift away from -B within 30000 examples.
    online_defaults = OptimizerDefaults("sgd", lr=0.03, momentum=0.0)

    @classmethod
    def make_net(cls, spec, activation, init="auto"):
        return MicrocircuitNet(spec, activation, init)

    @classmethod
    def check_options(cls, options):
        check_number("microcircuit", "dt", options.dt, example="0.25 (ms)")
        check_number("microcircuit", "presentation_ms", options.presentation_ms, example="3 (ms)")
        if options.presentation_ms < options.dt:
            raise CreditlabError(f"option presentation_ms={options.presentation_ms} is shorter than dt={options.dt}; "
                                 f"show each example for at least one Euler step")
        for name in ("eta_forward", "eta_interneuron", "eta_inhibition", "eta_top_down", "eta_self_predicting", "noise_std"):
            check_number("microcircuit", name, getattr(options, name), above=False)
        check_number("microcircuit", "top_down_scale", options.top_down_scale)
        for name in ("self_predicting_presentations", "self_predicting_batch"):
            check_number("microcircuit", name, getattr(options, name), integer=True)

    def __init__(self, net, options=None):
        super().__init__(net, options)
        if not isinstance(net, MicrocircuitNet):
            raise CreditlabError("the microcircuit rule needs a MicrocircuitNet; build it with "
                                 "Microcircuit.make_net(spec, activation) or rules.build on that net")
        o = self.options
        net.conductances = Conductances(o.g_leak, o.g_basal, o.g_apical, o.g_dendrite, o.g_nudge,
                                        o.g_interneuron_nudge)
        net.conductances.validate()
        if o.top_down_scale != 1.0:
            with torch.no_grad():
                for k in range(1, net.depth):
                    net.top_down(k).mul_(o.top_down_scale)
                    net.inhibition[k - 1].mul_(o.top_down_scale)
        if o.eta_top_down > 0:
            net.make_top_down_plastic()
        # Set once the self-predicting state has been learned (or set); saved in checkpoints.
        self.register_buffer("self_predicting_ready", torch.zeros((), dtype=torch.bool))

    # -- the contract -----------------------------------------------------------

    def rates(self) -> PlasticityRates:
        """Return the plasticity rates used during the task."""
        o = self.options
        return PlasticityRates((o.eta_forward,) * self.net.depth, o.eta_interneuron, o.eta_inhibition, o.eta_top_down)

    def lateral_rates(self, eta: float) -> PlasticityRates:
        """Return rates with only W^IP and W^PI plastic, both at `eta` (the self-predicting phase uses these)."""
        return PlasticityRates((0.0,) * self.net.depth, eta, eta, 0.0)

    def forward_parameters(self):
        return [p for block in self.net.blocks for p in block.parameters()]

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Return the target potentials of the output somata: `y` itself if real-valued, else one-hot class targets."""
        n_out = self.net.sizes[-1]
        if y.is_floating_point():
            if y.shape != (len(y), n_out):
                raise CreditlabError(f"regression targets must have shape (batch, {n_out}), not {tuple(y.shape)}")
            return y
        o = self.options
        weight = self.net.blocks[-1].weight
        target = torch.full((len(y), n_out), o.target_low, dtype=weight.dtype, device=weight.device)
        target.scatter_(1, y.view(-1, 1), o.target_high)
        return target

    def loss(self, output, y):
        """Return half the squared distance between output and target potentials, summed over outputs, batch mean."""
        return 0.5 * (output - self.targets(y)).pow(2).sum(1).mean()

    def step(self, x, y):
        self.clear_grads()
        stats = {}
        if not bool(self.self_predicting_ready):
            stats.update(self.reach_self_predicting(len(x)))
        o = self.options
        result = present(self.net, x, self.targets(y), o.presentation_ms, o.dt, self.rates(),
                         continuous=o.plasticity == "continuous", noise_std=o.noise_std)
        changes = {id(tensor): change for tensor, change in result.changes}
        for p in self.parameters():
            change = changes.get(id(p))
            p.grad = -change if change is not None else torch.zeros_like(p)
        stats["loss"] = self.loss(result.output_start, y).detach()
        stats["forward_passes"] = stats.get("forward_passes", 0.0) + self.cost_in_forward_passes(result.steps)
        stats["backward_passes"] = 0
        for k, (start, end) in enumerate(zip(result.apical_start, result.apical_end), start=1):
            stats[f"apical_rms_start_{k}"] = start
            stats[f"apical_rms_end_{k}"] = end
        return stats

    @torch.no_grad()
    def predict(self, x):
        return self.net(x)

    # -- the self-predicting state ----------------------------------------------

    @torch.no_grad()
    def reach_self_predicting(self, batch_size: int = 1) -> dict:
        """Learn (or set) the self-predicting state before the first task example; return step statistics.

        The cost is returned as `forward_passes` of a batch of `batch_size`,
        the unit in which the task's steps count theirs.
        """
        o = self.options
        if o.self_predicting == "exact" or self.net.depth == 1:
            self.net.set_self_predicting()
            self.self_predicting_ready.fill_(True)
            return {}
        curve = self.learn_self_predicting(o.self_predicting_presentations, o.self_predicting_batch)
        self.self_predicting_ready.fill_(True)
        log.info("learned the self-predicting state from %d random patterns: apical rms per hidden layer %s",
                 o.self_predicting_presentations, ", ".join(f"{a:.2e}" for a in curve[-1]))
        per_example = self.cost_in_forward_passes(round(o.presentation_ms / o.dt))
        return {"forward_passes": per_example * o.self_predicting_presentations / batch_size}

    @torch.no_grad()
    def learn_self_predicting(self, presentations: int, batch: int) -> list[list[float]]:
        """Show random inputs without a teacher, only the lateral weights plastic; return apical rms per round.

        The inputs are standard normal, like standardised data; the changes are
        applied to the weights directly, before the task and its optimizer start.
        Row i of the returned list contains the rms apical potential of every
        hidden layer at the start of round i, a round being `batch` parallel presentations.
        """
        o = self.options
        weight = self.net.blocks[0].weight
        curve = []
        for start in range(0, presentations, batch):
            n = min(batch, presentations - start)
            x = torch.randn(n, self.net.sizes[0], dtype=weight.dtype, device=weight.device)
            result = present(self.net, x, None, o.presentation_ms, o.dt, self.lateral_rates(o.eta_self_predicting),
                             continuous=o.plasticity == "continuous", noise_std=o.noise_std)
            for tensor, change in result.changes:
                tensor.add_(change)
            curve.append(result.apical_start)
        return curve

    # -- measurements -------------------------------------------------------------

    def cost_in_forward_passes(self, steps: int) -> float:
        """Multiply-accumulates of `steps` Euler steps with their plasticity, in forward passes of the net.

        One forward pass of the matching feedforward net costs sum_k n_k n_k-1.
        Each step recomputes the basal potentials above layer 1 and the apical
        and interneuron potentials, and forms the outer products of the plasticity.
        """
        sizes = self.net.sizes
        forward = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        basal = forward - sizes[0] * sizes[1]
        lateral = sum(3 * n * above for n, above in zip(sizes[1:-1], sizes[2:]))
        per_step = basal + lateral + forward + lateral
        return 1.0 + steps * per_step / forward

    def weight_angles(self):
        """Return, per layer k, the angle between W_k^T and the top-down matrix B_k-1 that carries its errors.

        Backprop would send layer k's error down through W_k^T. Layer 1 sends
        no error down, so its entry is NaN.
        """
        if self.net.depth == 1:
            return None
        angles = [angle_deg(self.net.top_down(k), self.net.blocks[k].weight.t()) for k in range(1, self.net.depth)]
        return [math.nan] + angles

    @torch.no_grad()
    def epoch_metrics(self, dataset):
        """Measure the self-prediction error on up to 256 held-out inputs, and how near the lateral weights are to it.

        `self_prediction_apical_rms` is the rms apical potential of each hidden
        layer in the bottom-up state, which is zero when self-predicting. The
        angles compare W^PI_k with -B_k and W^IP_k with W_k+1, to which the
        self-predicting state makes it proportional.
        """
        if self.net.depth == 1:
            return {}
        split = dataset.val if dataset.val is not None and len(dataset.val) else dataset.test
        apical = bottom_up_apical(self.net, split.x[:256])
        net = self.net
        return {
            "self_prediction_apical_rms": [float(a.pow(2).mean().sqrt()) for a in apical],
            "inhibition_angle_deg": [angle_deg(net.inhibition[k - 1], -net.top_down(k)) for k in range(1, net.depth)],
            "interneuron_angle_deg": [angle_deg(net.interneurons[k - 1].weight, net.blocks[k].weight)
                                      for k in range(1, net.depth)],
        }
