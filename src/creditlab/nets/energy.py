"""Layered energy networks (continuous Hopfield networks) and their relaxation to a fixed point.

The net has the blocks of a `LayeredNet` built from the same spec, so its
weights have the same shapes as the MLP's or conv net's. Layer l = 1..K has
potentials u_l and activities s_l = rho(u_l); s_0 = x is the clamped input.
Block l maps s_{l-1} to the drive A_l(s_{l-1}) + b_l, where A_l is a dense
layer, or a convolution followed by 2x2 max pooling. The energy, written in
activities as in Hopfield (1984), is

    E(s) = sum_l sum_i G(s_l,i) - sum_l s_l . (A_l(s_{l-1}) + b_l),   G' = rho^-1,

so each weight W_l is used bottom-up (A_l) and top-down (its transpose A_l^T):
the weights are symmetric. dE/ds_l = u_l - h_l with the total drive
h_l = A_l(s_{l-1}) + b_l + A_{l+1}^T(s_{l+1}), and a relaxation step is the
Euler step u <- u - dt dE/ds = u + dt (h - u). With the hard sigmoid and u
inside [0, 1], s = u and this is plain gradient descent on E; with dt = 1 it
is the fixed-point iteration s <- rho(h) of Laborieux et al. (2021).

Two output modes exist. With `readout` the last block is a softmax readout
outside the energy (logits = A_L(s_{L-1}) + b_L, cross-entropy cost), as in
Laborieux et al. (2021); without it the output units are layer L of the energy
and the cost is C = 1/2 |s_L - y|^2 on their activities (Scellier & Bengio
2017). A phase may add beta C to the energy (nudging) or hold s_L at the
target (clamping, output units in the energy only).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import CreditlabError
from .feedforward import LayeredNet
from .spec import NetSpec


def _hard_sigmoid_integral(u):
    inside = u.clamp(0.0, 1.0)
    return 0.5 * inside**2 + (u - inside).clamp(min=0.0)


def _hardtanh_integral(u):
    inside = u.clamp(-1.0, 1.0)
    return 0.5 * inside**2 + (u - inside).abs()


def _log_cosh(u):
    return u.abs() + F.softplus(-2.0 * u.abs()) - math.log(2.0)


# R(u) = integral of rho from 0 to u for every activation a LayeredNet accepts.
# G(s) = s u - R(u) with s = rho(u) is then the Legendre form of G(s) = integral
# of rho^-1, which stays finite where rho saturates.
_ACTIVATION_INTEGRALS = {
    "hard-sigmoid": _hard_sigmoid_integral,
    "hardtanh": _hardtanh_integral,
    "tanh": _log_cosh,
    "sigmoid": lambda u: F.softplus(u) - math.log(2.0),
    "relu": lambda u: 0.5 * u.clamp(min=0.0) ** 2,
    "leaky-relu": lambda u: torch.where(u >= 0, 0.5 * u**2, 0.005 * u**2),  # nn.LeakyReLU's slope 0.01
    "elu": lambda u: torch.where(u > 0, 0.5 * u**2, torch.expm1(u.clamp(max=0.0)) - u),
    "linear": lambda u: 0.5 * u**2,
}

# The activations as functions, equal to the modules of `ACTIVATIONS`, to save a module call per layer and step.
_ACTIVATION_FUNCTIONS = {
    "hard-sigmoid": lambda u: u.clamp(0.0, 1.0),
    "hardtanh": lambda u: u.clamp(-1.0, 1.0),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "leaky-relu": F.leaky_relu,
    "elu": F.elu,
    "linear": lambda u: u,
}

SCHEDULES = ("alternating", "synchronous")


@dataclass
class Phase:
    """A phase's change to the free dynamics: a nudge beta*C towards `target`, or the output held at it."""
    beta: float = 0.0
    target: torch.Tensor | None = None  # one-hot (N, outputs) for classification
    clamp: bool = False

    @property
    def nudged(self) -> bool:
        return self.beta != 0.0 and self.target is not None


@dataclass
class Relaxation:
    """The state a relaxation reached and how it got there."""
    potentials: list[torch.Tensor]  # u_1..u_K of the relaxed layers
    activities: list[torch.Tensor]  # [x, s_1, ..., s_K], then the clamped output when the phase clamps
    steps: int
    residual: float  # max |h - u| = |dE/ds| over units and examples at the last step
    energy: float  # batch mean of the energy this phase minimised (E + beta C when nudged)


@dataclass
class Adjoint:
    """Gradients from the adjoint relaxation, aligned with `net.dynamics_parameters()`, and how it converged."""
    gradients: list[torch.Tensor]
    loss: float
    steps: int
    residual: float


def _grad_or_zeros(outputs, inputs, grad_outputs=None, retain_graph=False) -> list[torch.Tensor]:
    """torch.autograd.grad that returns zeros for inputs the outputs do not depend on."""
    if not inputs:
        return []
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


class EnergyNet(LayeredNet):
    """A layered continuous Hopfield network on the blocks of a LayeredNet; `forward` returns the relaxed output."""

    def __init__(self, spec: NetSpec | str, activation: str = "hard-sigmoid", init: str = "auto"):
        # PyTorch's default init, uniform in +-1/sqrt(fan_in) (Laborieux et al. 2021), is about half as large
        # as Glorot's, so the relaxation contracts faster from the start.
        super().__init__(spec, activation, "torch" if init == "auto" else init)
        if activation not in _ACTIVATION_INTEGRALS:
            raise CreditlabError(f"activation {activation!r} has no energy; choose one of {', '.join(_ACTIVATION_INTEGRALS)}")
        self._integral = _ACTIVATION_INTEGRALS[activation]
        self.rho = _ACTIVATION_FUNCTIONS[activation]
        # Output mode and free-phase settings; the rule that owns the net sets them.
        self.readout = True
        self.free_steps = 30
        self.dt = 1.0
        self.tol = 1e-4
        self.schedule = "alternating"
        # Top-down weights B_2..B_L that replace W_l^T when the weights are not symmetric. The rule that owns
        # them sets this list. The relaxation then descends no energy, so `energy` returns NaN.
        self.feedback: list[torch.Tensor] | None = None

    # -- structure -----------------------------------------------------------

    def relaxed_layers(self, phase: Phase | None = None) -> int:
        """Return the number K of layers that relax: L - 1 with a readout or a clamped output, else L."""
        clamp = phase is not None and phase.clamp
        return len(self.blocks) - 1 if self.readout or clamp else len(self.blocks)

    def _up(self, i: int, s_in: torch.Tensor):
        """Bottom-up drive A_i(s_in) + b_i of block i, with the pooling indices its transpose needs."""
        block = self.blocks[i]
        if not block.is_conv:
            layer = block.layer
            return F.linear(s_in.flatten(1) if block.flatten else s_in, layer.weight, layer.bias), None
        z = block.preactivation(s_in)
        if block.pool is None:
            return z, None
        pooled, indices = F.max_pool2d(z, 2, return_indices=True)
        return pooled, (indices, z.shape[-2:])

    def top_down_weight(self, i: int) -> torch.Tensor:
        """Return the weight block i sends activity down with: W_i, or B_i when the net has separate feedback."""
        if self.feedback is not None and 1 <= i <= len(self.feedback):
            return self.feedback[i - 1]
        return self.blocks[i].layer.weight

    def _down(self, i: int, s_out: torch.Tensor, s_in: torch.Tensor, pool) -> torch.Tensor:
        """Top-down drive A_i^T(s_out) into block i's input, shaped like s_in: the gradient of s_out . A_i(s_in)."""
        block = self.blocks[i]
        if pool is not None:
            indices, size = pool
            s_out = F.max_unpool2d(s_out, indices, 2, output_size=size)
        weight = self.top_down_weight(i)
        if block.is_conv:
            return torch.nn.grad.conv2d_input(s_in.shape, weight, s_out, block.layer.stride, block.layer.padding)
        down = s_out @ weight
        return down.view(s_in.shape) if s_in.dim() != 2 else down

    def readout_logits(self, s_top: torch.Tensor) -> torch.Tensor:
        return self._up(len(self.blocks) - 1, s_top)[0]

    # -- state -----------------------------------------------------------------

    def feedforward_state(self, x: torch.Tensor, phase: Phase | None = None) -> list[torch.Tensor]:
        """Return the potentials of a bottom-up sweep (top-down drive ignored), the usual start of the free phase."""
        potentials, s = [], x
        for i in range(self.relaxed_layers(phase)):
            u = self._up(i, s)[0]
            potentials.append(u)
            s = self.rho(u)
        return potentials

    def state_activities(self, x: torch.Tensor, potentials: list[torch.Tensor],
                         phase: Phase | None = None) -> list[torch.Tensor]:
        """Return [x, s_1, ..., s_K] for `potentials`, with the clamped output last when the phase clamps."""
        out = [x] + [self.rho(u) for u in potentials]
        if phase is not None and phase.clamp:
            out.append(phase.target)
        return out

    def output(self, activities: list[torch.Tensor]) -> torch.Tensor:
        """Return the network's output at a state: readout logits, or the output layer's activities."""
        if self.readout:
            return self.readout_logits(activities[-1])
        return activities[-1]

    def cost(self, activities: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Return the per-example cost C: cross-entropy of the readout, or 1/2 |s_L - y|^2 of the output activities."""
        output = self.output(activities)
        if self.readout:
            return -(target * F.log_softmax(output, 1)).sum(1)
        return 0.5 * ((output - target) ** 2).sum(1)

    # -- dynamics ----------------------------------------------------------------

    def drive(self, layer: int, activities: list[torch.Tensor], phase: Phase | None = None,
              bottom_up: torch.Tensor | None = None) -> torch.Tensor:
        """Total drive h_l (plus the nudging force -beta dC/ds_l) of relaxed layer `layer` (1-based).

        `bottom_up` may hold A_l(s_{l-1}) + b_l when it is already known (layer 1's, from the clamped input).
        """
        h = bottom_up if bottom_up is not None else self._up(layer - 1, activities[layer - 1])[0]
        s = activities[layer]
        if layer + 1 < len(activities):
            block = self.blocks[layer]
            if s.dim() == 2:  # a dense block between dense layers: one fused multiply-add
                h = torch.addmm(h, activities[layer + 1], self.top_down_weight(layer))
            else:
                pool = self._up(layer, s)[1] if block.pool is not None else None
                h = h + self._down(layer, activities[layer + 1], s, pool)
        if phase is not None and phase.nudged and layer == len(activities) - 1:
            if self.readout:
                error = torch.softmax(self.readout_logits(s), 1) - phase.target
                if s.dim() == 2:
                    h = torch.addmm(h, error, self.blocks[-1].layer.weight, alpha=-phase.beta)
                else:
                    h = h - phase.beta * self._down(len(self.blocks) - 1, error, s, None)
            else:
                h = h + phase.beta * (phase.target - s)
        return h

    def relax(self, x: torch.Tensor, potentials: list[torch.Tensor] | None = None, phase: Phase | None = None,
              steps: int | None = None, dt: float | None = None, tol: float | None = None,
              schedule: str | None = None) -> Relaxation:
        """Relax from `potentials` (default: a bottom-up sweep) until the residual is below `tol` or `steps` run out.

        Vectorised over the batch. `alternating` updates odd layers, then even
        layers from the new odd ones. `synchronous` updates every layer from
        the old state. Without torch.no_grad the steps stay differentiable.
        """
        steps = self.free_steps if steps is None else steps
        dt = self.dt if dt is None else dt
        tol = self.tol if tol is None else tol
        schedule = self.schedule if schedule is None else schedule
        if schedule not in SCHEDULES:
            raise CreditlabError(f"unknown relaxation schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        count = self.relaxed_layers(phase)
        u = list(potentials) if potentials is not None else self.feedforward_state(x, phase)
        if len(u) != count:
            raise CreditlabError(f"got {len(u)} layers of potentials for a phase that relaxes {count}; "
                                 f"start from this phase's own state or from None")
        acts = self.state_activities(x, u, phase)
        input_drive = self._up(0, x)[0] if count else None
        groups = [range(1, count + 1, 2), range(2, count + 1, 2)] if schedule == "alternating" else [range(1, count + 1)]
        residual, done = math.inf if count else 0.0, 0
        for done in range(1, steps + 1 if count else 1):
            changes = []
            for group in groups:
                new = {}
                for layer in group:
                    h = self.drive(layer, acts, phase, input_drive if layer == 1 else None)
                    change = h - u[layer - 1]
                    new[layer] = h if dt == 1.0 else u[layer - 1] + dt * change
                    changes.append(torch.linalg.vector_norm(change.detach(), math.inf))
                for layer, value in new.items():
                    u[layer - 1] = value
                    acts[layer] = self.rho(value)
            residual = float(torch.stack(changes).max())
            if residual < tol:
                break
        return Relaxation(u, acts, done, residual, float(self.energy(acts, phase, u).detach().mean()))

    def energy(self, activities: list[torch.Tensor], phase: Phase | None = None,
               potentials: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Per-example energy E(s) (+ beta C(s) when the phase nudges) at a state.

        `potentials` give G(s) = s u - R(u) exactly; without them u is taken as
        rho^-1(s) where rho is the identity on its range (hard sigmoid, hardtanh, relu, linear).
        """
        count = len(activities) - 1
        relaxed = count - (1 if phase is not None and phase.clamp else 0)
        total = torch.zeros(len(activities[0]), device=activities[0].device, dtype=activities[0].dtype)
        if self.feedback is not None:
            return total + math.nan
        for layer in range(1, relaxed + 1):
            s = activities[layer]
            u = potentials[layer - 1] if potentials is not None else s
            total = total + (s * u - self._integral(u)).flatten(1).sum(1)
        for layer in range(1, count + 1):
            drive = self._up(layer - 1, activities[layer - 1])[0]
            total = total - (activities[layer] * drive).flatten(1).sum(1)
        if phase is not None and phase.nudged:
            total = total + phase.beta * self.cost(activities, phase.target)
        return total

    def adjoint_gradients(self, x: torch.Tensor, target: torch.Tensor, relaxation: Relaxation, steps: int,
                          tol: float, dt: float = 1.0, schedule: str = "alternating") -> "Adjoint":
        """Return the gradient of the mean cost at a free fixed point, by the adjoint of the relaxation.

        The gradients are aligned with `dynamics_parameters()`.

        At a fixed point u = f(u, theta) (f: the drives), dL/dtheta = lambda^T
        df/dtheta where lambda = dL/du + (df/du)^T lambda. lambda relaxes with
        the same Euler steps and schedule as the state, each step one
        vector-Jacobian product through a single application of f, so memory
        does not grow with the number of steps (Almeida 1987; Pineda 1987).
        """
        params = self.dynamics_parameters()
        count = len(relaxation.potentials)
        u = [p.detach().requires_grad_() for p in relaxation.potentials]
        groups = [range(1, count + 1, 2), range(2, count + 1, 2)] if schedule == "alternating" else [range(1, count + 1)]
        with torch.enable_grad():
            acts = [x] + [self.rho(v) for v in u]
            input_drive = self._up(0, x)[0] if count else None
            drives = [self.drive(layer, acts, None, input_drive if layer == 1 else None) for layer in range(1, count + 1)]
            # lambda is the adjoint of the summed cost, so the tolerance applies per example.
            total_cost = self.cost(acts, target).sum()
            source = _grad_or_zeros(total_cost, u, retain_graph=True)
            lam = [g.clone() for g in source]
            done, residual = 0, 0.0
            for done in range(1, steps + 1 if count else 1):
                changes = []
                for group in groups:
                    others = [layer for layer in range(1, count + 1) if layer not in group] or list(group)
                    back = _grad_or_zeros([drives[layer - 1] for layer in others], [u[m - 1] for m in group],
                                          [lam[layer - 1] for layer in others], retain_graph=True)
                    for m, contribution in zip(group, back):
                        change = dt * (source[m - 1] + contribution - lam[m - 1])
                        lam[m - 1] = lam[m - 1] + change
                        changes.append(change.detach().abs().max())
                residual = float(torch.stack(changes).max()) / dt
                if residual < tol:
                    break
            total = total_cost + sum((f * l.detach()).sum() for f, l in zip(drives, lam))
            grads = [g / len(x) for g in _grad_or_zeros(total, params)]
        return Adjoint(grads, float(total_cost.detach()) / len(x), done, residual)

    def dynamics_parameters(self) -> list[torch.Tensor]:
        """The parameters the relaxation depends on: the net's own, then the separate feedback weights if any."""
        return list(self.parameters()) + list(self.feedback or [])

    def forward(self, x: torch.Tensor, feedback=None) -> torch.Tensor:
        """The output at the free fixed point (relaxed with the net's own step budget)."""
        if feedback is not None:
            raise CreditlabError("an energy net has no feedback path to replace; use a LayeredNet for feedback rules")
        return self.output(self.relax(x).activities)
