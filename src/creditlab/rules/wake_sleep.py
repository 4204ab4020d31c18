"""Wake-sleep and reweighted wake-sleep: local delta rules that train Helmholtz machines.

Both rules update each weight from the activity of the two layers it joins,
with no error sent between layers. For a layer predicting targets t from
inputs u through logits z = W u + c, the delta rule is

    dW = sum_i w_i (t_i - sigmoid(z_i)) u_i^T,    dc = sum_i w_i (t_i - sigmoid(z_i)),

the gradient of the weighted log-likelihood sum_i w_i log Bernoulli(t_i; sigmoid(z_i)).

- wake-sleep (Hinton, Dayan, Frey & Neal 1995). Wake: sample h ~ q(h | x)
  upward and train the generative net, each layer predicting the one below
  (and the prior predicting h_L), with w_i = 1. Sleep: dream (x, h) ~ p
  downward and train the recognition net, each layer predicting the one above.
- rws (Bornschein & Bengio 2015). Wake: draw K samples h_k ~ q(h | x) and
  weight them by the normalised importance weights w_k = p(x, h_k) / q(h_k | x)
  / sum_j p(x, h_j) / q(h_j | x). The same delta rules, with these weights,
  train the generative net (an estimate of the gradient of log p(x)) and the
  recognition net (of -KL(p(h | x) || q(h | x))). A sleep phase may add the
  wake-sleep recognition update.

Every update is written into `.grad` as a descent direction, averaged over the
batch. The generative weights form the forward parameter group and the
recognition weights the feedback group, so `--feedback-lr` sets the
recognition net's learning rate.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..nets.helmholtz import HelmholtzMachine
from . import register
from .base import OptimizerDefaults, Rule, check_number, option

# Machines with at most this many configurations of two adjacent hidden
# layers get the exact gradient of log p(x) as the reference for update angles.
EXACT_REFERENCE_CONFIGURATIONS = 2**14


def _add_grad(parameter: torch.Tensor, value: torch.Tensor) -> None:
    parameter.grad = value if parameter.grad is None else parameter.grad + value


@torch.no_grad()
def delta_rule(layer: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
               scale: float) -> None:
    """Subtract scale * sum_i w_i (t_i - sigmoid(W u_i + c)) [u_i^T, 1] from the layer's `.grad`.

    `inputs` (..., n_in), `targets` (..., n_out) and `weights` (...) share their
    leading sample dimensions.
    """
    error = (targets - torch.sigmoid(layer(inputs))) * weights.unsqueeze(-1)
    error = error.reshape(-1, error.shape[-1])
    inputs = inputs.reshape(-1, inputs.shape[-1])
    _add_grad(layer.weight, -scale * (error.t() @ inputs))
    _add_grad(layer.bias, -scale * error.sum(0))


@torch.no_grad()
def prior_delta_rule(prior: nn.Parameter, top: torch.Tensor, weights: torch.Tensor, scale: float) -> None:
    """Subtract scale * sum_i w_i (h_L,i - sigmoid(b)) from the prior logits' `.grad`."""
    error = (top - torch.sigmoid(prior)) * weights.unsqueeze(-1)
    _add_grad(prior, -scale * error.reshape(-1, error.shape[-1]).sum(0))


def generative_update(net: HelmholtzMachine, layers: list[torch.Tensor], weights: torch.Tensor, scale: float) -> None:
    """Wake-phase update: each generative layer predicts the layer below it, the prior predicts the top."""
    for l, layer in enumerate(net.generative):
        delta_rule(layer, layers[l + 1], layers[l], weights, scale)
    prior_delta_rule(net.prior, layers[-1], weights, scale)


def recognition_update(net: HelmholtzMachine, layers: list[torch.Tensor], weights: torch.Tensor, scale: float) -> None:
    """Recognition update: each recognition layer predicts the layer above it."""
    for l, layer in enumerate(net.recognition):
        delta_rule(layer, layers[l], layers[l + 1], weights, scale)


class HelmholtzRule(Rule):
    """Common structure: the net is a Helmholtz machine; update angles cover the generative layers."""

    kinds = ("helmholtz",)
    tasks = ("density",)

    @classmethod
    def check_options(cls, options):
        for name, least in (("samples", 1), ("reference_samples", 1), ("dreams", 0)):
            check_number(cls.name, name, getattr(options, name, least), minimum=least, above=False, integer=True)

    @classmethod
    def make_net(cls, spec, activation, init="auto"):
        # Helmholtz machines have stochastic binary units, so `activation` does not apply.
        return HelmholtzMachine(spec, init)

    def forward_parameters(self) -> list[nn.Parameter]:
        return [*self.net.generative.parameters(), self.net.prior]

    def layers(self) -> list[list[nn.Parameter]]:
        """Return the generative parameters of each layer, bottom first, then the prior."""
        return [list(layer.parameters()) for layer in self.net.generative] + [[self.net.prior]]

    def reference_gradients(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Return the gradient of -mean log p(x) for each generative layer, without touching `.grad`.

        Exact (by enumeration) for machines small enough, otherwise the
        self-normalised importance-sampling estimate with `reference_samples` samples.
        """
        layers = self.layers()
        params = [p for layer in layers for p in layer]
        with torch.enable_grad():
            if self.net.enumeration_size() <= EXACT_REFERENCE_CONFIGURATIONS:
                loss = -self.net.exact_log_likelihood(x).mean()
            else:
                x = self.net.flatten(x)
                samples = self.options.reference_samples
                with torch.no_grad():
                    hidden = self.net.recognise(x.unsqueeze(0).expand(samples, *x.shape))
                    log_q = self.net.log_recognition(hidden)
                log_w = self.net.log_joint(hidden) - log_q
                loss = -(torch.logsumexp(log_w, 0) - math.log(samples)).mean()
            grads = torch.autograd.grad(loss, params)
        out, i = [], 0
        for layer in layers:
            out.append(torch.cat([g.flatten() for g in grads[i:i + len(layer)]]))
            i += len(layer)
        return out

    def dream_count(self, batch: int) -> int:
        return self.options.dreams or batch

    def sleep_phase(self, n: int, scale: float = 1.0) -> torch.Tensor:
        """Dream n samples from p and add the recognition update times `scale`; return -mean log q(h | x) of the dreams."""
        with torch.no_grad():
            dreams = self.net.dream(n)
            loss = -self.net.log_recognition(dreams).mean()
        recognition_update(self.net, dreams, torch.ones(dreams[0].shape[:-1], device=dreams[0].device), scale / n)
        return loss


@dataclass
class WakeSleepOptions:
    dreams: int = option(0, "dreams sampled from the generative net in each sleep phase (samples); 0 uses the "
                         "batch size", "Hinton et al. 1995 alternate one wake and one sleep sample")
    reference_samples: int = option(100, "importance samples per example behind the reference gradient of log p(x) "
                                    "that update angles are measured against, for machines too large to enumerate",
                                    "chosen")


@register
class WakeSleep(HelmholtzRule):
    name = "wake-sleep"
    description = "Wake-sleep: a wake phase trains the generative net on recognised samples, a sleep phase the recognition net on dreams"
    reference = "Hinton, Dayan, Frey & Neal 1995"
    Options = WakeSleepOptions
    defaults = OptimizerDefaults("adam", lr=1e-3)

    def wake_phase(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Sample h ~ q(h | x) and add the generative update; return the layers and log p(x, h) - log q(h | x)."""
        x = self.net.flatten(x)
        with torch.no_grad():
            layers = self.net.recognise(x)
            log_w = self.net.log_joint(layers) - self.net.log_recognition(layers)
        generative_update(self.net, layers, torch.ones_like(log_w), 1.0 / len(x))
        return layers, log_w

    def step(self, x, y):
        self.clear_grads()
        _, log_w = self.wake_phase(x)
        dreams = self.dream_count(len(x))
        sleep_loss = self.sleep_phase(dreams)
        # The loss is the single-sample estimate of -ELBO = -E_q[log p(x, h) - log q(h | x)].
        return {"loss": -log_w.mean(), "sleep_loss": sleep_loss,
                "forward_passes": 1 + dreams / len(x), "backward_passes": 0}


@dataclass
class RWSOptions(WakeSleepOptions):
    samples: int = option(5, "importance samples K drawn from q(h | x) per example in the wake phase",
                          "Bornschein & Bengio 2015 train their MNIST models with K = 5")
    sleep: bool = option(True, "also train the recognition net on dreams; the recognition update is then the mean of "
                         "the wake- and sleep-phase updates",
                         "Bornschein & Bengio 2015 use both recognition updates in their MNIST experiments")


@register
class ReweightedWakeSleep(HelmholtzRule):
    name = "rws"
    description = "Reweighted wake-sleep: K importance-weighted posterior samples train both nets in the wake phase"
    reference = "Bornschein & Bengio 2015"
    Options = RWSOptions
    defaults = OptimizerDefaults("adam", lr=1e-3)

    def wake_phase(self, x: torch.Tensor, recognition_scale: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Draw K samples per example, add both wake-phase updates; return the layers and log-weights (K, N)."""
        x = self.net.flatten(x)
        with torch.no_grad():
            log_w, layers = self.net.log_weights(x, self.options.samples)
            weights = torch.softmax(log_w, 0)
        generative_update(self.net, layers, weights, 1.0 / len(x))
        recognition_update(self.net, layers, weights, recognition_scale / len(x))
        return layers, log_w

    def step(self, x, y):
        self.clear_grads()
        sleep = self.options.sleep
        _, log_w = self.wake_phase(x, 0.5 if sleep else 1.0)
        stats = {}
        dreams = 0
        if sleep:
            dreams = self.dream_count(len(x))
            stats["sleep_loss"] = self.sleep_phase(dreams, 0.5)
        weights = torch.softmax(log_w, 0)
        stats.update({
            # -log (1/K) sum_k p(x, h_k) / q(h_k | x), the negative K-sample importance-weighted bound (nats).
            "loss": -(torch.logsumexp(log_w, 0) - math.log(self.options.samples)).mean(),
            "effective_samples": (1.0 / (weights**2).sum(0)).mean(),
            "forward_passes": self.options.samples + dreams / len(x),
            "backward_passes": 0,
        })
        return stats

