"""Helmholtz machines: a generative and a recognition net of stochastic binary units.

Layers h_0 = x (visible), h_1, ..., h_L (top). The generative net is a sigmoid
belief net: p(h_L) = prod_j Bernoulli(sigmoid(b_j)) with a learned prior b, and
p(h_{l-1} | h_l) = Bernoulli(sigmoid(W_l h_l + c_l)). The recognition net runs
the other way: q(h_l | h_{l-1}) = Bernoulli(sigmoid(R_l h_{l-1} + d_l)).

Every method accepts leading sample dimensions: an input of shape (K, N, D)
contains K samples for each of N examples. Images (N, C, H, W) are flattened.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CreditlabError
from .feedforward import initialise
from .spec import NetSpec, parse


def bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Return log Bernoulli(value; sigmoid(logits)) summed over the last dimension."""
    return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


def _sample(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.bernoulli(torch.sigmoid(logits), generator=generator)


class HelmholtzMachine(nn.Module):
    """A sigmoid belief net (generative) paired with a recognition net, built from `helmholtz:784-200-200`."""

    def __init__(self, spec: NetSpec | str, init: str = "auto"):
        super().__init__()
        self.spec = parse(spec) if isinstance(spec, str) else spec
        if self.spec.kind != "helmholtz":
            raise CreditlabError(f"net {self.spec.text!r} is not a Helmholtz machine; "
                                 f"give layer sizes from visible to top, e.g. helmholtz:784-200-200")
        self.sizes = (self.spec.input_size, *self.spec.dense)
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        # recognition[l] maps h_l to the logits of h_{l+1}; generative[l] maps h_{l+1} to those of h_l.
        self.recognition = nn.ModuleList([nn.Linear(below, above) for below, above in pairs])
        self.generative = nn.ModuleList([nn.Linear(above, below) for below, above in pairs])
        self.prior = nn.Parameter(torch.zeros(self.sizes[-1]))
        initialise(self, "sigmoid", "xavier" if init == "auto" else init)

    @property
    def depth(self) -> int:
        """Number of hidden layers L."""
        return len(self.sizes) - 1

    @staticmethod
    def flatten(x: torch.Tensor) -> torch.Tensor:
        """Reshape images (N, C, H, W) to (N, D); leave other shapes as they are."""
        return x.flatten(1) if x.dim() == 4 else x

    # -- sampling -------------------------------------------------------------

    def recognise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Sample h_1, ..., h_L upward through q; return [x, h_1, ..., h_L]."""
        layers = [x]
        for layer in self.recognition:
            layers.append(_sample(layer(layers[-1]), generator))
        return layers

    def dream(self, n: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Sample n fantasies downward through p; return [x, h_1, ..., h_L]."""
        top = _sample(self.prior.expand(n, -1), generator)
        layers = [top]
        for layer in reversed(self.generative):
            layers.insert(0, _sample(layer(layers[0]), generator))
        return layers

    # -- log-probabilities ------------------------------------------------------

    def log_joint(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Return log p(x, h_1, ..., h_L) per sample."""
        total = bernoulli_log_prob(self.prior.expand_as(layers[-1]), layers[-1])
        for l, layer in enumerate(self.generative):
            total = total + bernoulli_log_prob(layer(layers[l + 1]), layers[l])
        return total

    def log_recognition(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Return log q(h_1, ..., h_L | x) per sample."""
        total = torch.zeros(layers[0].shape[:-1], device=layers[0].device, dtype=layers[0].dtype)
        for l, layer in enumerate(self.recognition):
            total = total + bernoulli_log_prob(layer(layers[l]), layers[l + 1])
        return total

    def log_weights(self, x: torch.Tensor, samples: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Draw `samples` posterior samples per example; return log p(x, h) - log q(h | x), shape (K, N), and the layers."""
        x = self.flatten(x)
        layers = self.recognise(x.unsqueeze(0).expand(samples, *x.shape), generator)
        return self.log_joint(layers) - self.log_recognition(layers), layers

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, samples: int, generator: torch.Generator | None = None,
                       chunk: int = 100) -> torch.Tensor:
        """Estimate log p(x) per example by importance sampling with q as proposal.

        log (1/K) sum_k p(x, h_k) / q(h_k | x), h_k ~ q(h | x). Its expectation is
        a lower bound that rises to log p(x) as K grows (Burda, Grosse &
        Salakhutdinov 2016). Samples are drawn `chunk` at a time to bound memory.
        """
        x = self.flatten(x)
        parts = []
        for start in range(0, samples, chunk):
            log_w, _ = self.log_weights(x, min(chunk, samples - start), generator)
            parts.append(torch.logsumexp(log_w, 0))
        return torch.logsumexp(torch.stack(parts), 0) - math.log(samples)

    # -- exact computation for small machines -------------------------------------

    def enumeration_size(self) -> int:
        """Largest number of joint configurations of two adjacent hidden layers; the cost of `exact_log_likelihood`."""
        hidden = list(self.sizes[1:]) + [0]
        return max(2 ** (a + b) for a, b in zip(hidden[:-1], hidden[1:]))

    def exact_log_likelihood(self, x: torch.Tensor, max_configurations: int = 2**20) -> torch.Tensor:
        """Return log p(x) per example, summing over every hidden configuration.

        The marginals log p(h_l) are computed from the top down, one pair of
        adjacent layers at a time, so the cost is set by the largest pair
        (`enumeration_size`). Differentiable with respect to the generative
        parameters.
        """
        if self.enumeration_size() > max_configurations:
            raise CreditlabError(f"machine {self.spec.text!r} has too many hidden configurations to enumerate "
                                 f"({self.enumeration_size()} > {max_configurations}); use the importance-sampled estimate")
        x = self.flatten(x)
        states = [all_states(n, x.device, x.dtype) for n in self.sizes[1:]]
        log_marginal = bernoulli_log_prob(self.prior.expand_as(states[-1]), states[-1])
        for l in range(self.depth - 1, 0, -1):
            # log p(h_l = s) = logsumexp_t [log p(h_l = s | h_{l+1} = t) + log p(h_{l+1} = t)]
            conditional = _log_prob_table(self.generative[l](states[l]), states[l - 1])   # (T, S)
            log_marginal = torch.logsumexp(conditional + log_marginal.unsqueeze(1), 0)
        # log p(x) = logsumexp_s [log p(x | h_1 = s) + log p(h_1 = s)], in blocks of s and of x.
        rows = max(1, 2**22 // self.sizes[0])
        out = []
        for start in range(0, len(x), 1024):
            batch = x[start:start + 1024]
            parts = []
            for first in range(0, len(states[0]), rows):
                logits = self.generative[0](states[0][first:first + rows])
                table = _log_prob_table(logits, batch) + log_marginal[first:first + rows].unsqueeze(1)
                parts.append(torch.logsumexp(table, 0))
            out.append(torch.logsumexp(torch.stack(parts), 0))
        return torch.cat(out)

    # -- pictures -----------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return the Bernoulli means p(x = 1 | h_1) for h_1 drawn from q(h_1 | x)."""
        layers = self.recognise(self.flatten(x), generator)
        return torch.sigmoid(self.generative[0](layers[1]))

    @torch.no_grad()
    def sample_means(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return the Bernoulli means p(x = 1 | h_1) of n dreams."""
        layers = self.dream(n, generator)
        return torch.sigmoid(self.generative[0](layers[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)


def _log_prob_table(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return log Bernoulli(values[j]; sigmoid(logits[i])) for every pair (i, j), shape (I, J)."""
    return logits @ values.t() - F.softplus(logits).sum(1, keepdim=True)


def all_states(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Return every binary vector of length n as the rows of a (2^n, n) tensor (one empty row for n = 0)."""
    codes = torch.arange(2**n, device=device).unsqueeze(1)
    bits = 2 ** torch.arange(n - 1, -1, -1, device=device) if n else torch.zeros(0, dtype=torch.long, device=device)
    return ((codes & bits) > 0).to(dtype)
