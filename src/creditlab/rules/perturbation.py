"""Rules that learn from the loss change caused by random perturbations, and a Hebbian baseline.

wp (weight perturbation) adds Gaussian noise xi to the weights, measures the
change of the minibatch loss and estimates the gradient as (dL / sigma^2) xi.
np (node perturbation, Williams 1992) adds the noise to every layer's
preactivations instead and estimates the gradient of W_l as
(dL / sigma^2) xi_l h_{l-1}^T. Both are unbiased in the limit sigma -> 0, and
their variance grows with the number of perturbed weights or units.

The K perturbed networks of one update run as one batched computation: the
batch dimension becomes (perturbation, example), dense layers use batched
matrix products and conv layers use torch.func.vmap. With antithetic sampling
each noise draw xi is used twice, as +xi and -xi, and the loss change is half
the difference of the pair's losses, so K draws cost 2K forward passes and no
clean pass. One-sided sampling costs K perturbed passes plus one clean pass.

hebbian trains its hidden layers with a normalised Hebbian rule and no error
signal at all. Only the readout learns from the labels, by the delta rule.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import CreditlabError
from . import register
from .base import OptimizerDefaults, Rule, check_number, option

# -- batched forward passes ---------------------------------------------------
#
# Activities of K perturbed networks carry two leading dimensions (S, K): S is 2
# for an antithetic pair (+xi, -xi) and 1 for one-sided sampling. A tensor
# without them is the same for every perturbation (the input, or the activity
# below the first perturbed layer), so it is computed once.


def _merge(h: torch.Tensor) -> torch.Tensor:
    """Fold the (S, K, B) leading dimensions into one batch dimension."""
    return h.flatten(0, 2)


def _split(h: torch.Tensor, signs: int, draws: int) -> torch.Tensor:
    return h.unflatten(0, (signs, draws, -1))


def _weight_noise_effect(block, h: torch.Tensor, noise_w: torch.Tensor, noise_b: torch.Tensor,
                         shared: bool) -> torch.Tensor:
    """Return the change of the block's preactivation when weight and bias move by (noise_w[k], noise_b[k]).

    The affine map is linear in its parameters, so the perturbed preactivation is
    the clean one plus this term. `h` is (B, ...) when `shared`, else (S, K, B, ...);
    the result is (K, B, ...) or (S, K, B, ...).
    """
    h = block.prepare(h) if shared else block.prepare(h.flatten(0, 2)).unflatten(0, h.shape[:3])
    draws = noise_w.shape[0]
    if not block.is_conv:
        # (B, in) @ (K, in, out) -> (K, B, out); (S, K, B, in) @ (K, in, out) -> (S, K, B, out).
        return torch.matmul(h, noise_w.transpose(1, 2)) + noise_b.unsqueeze(-2)
    stride, padding = block.layer.stride, block.layer.padding
    if shared:
        # One convolution with the K noise kernels stacked as output channels.
        out = F.conv2d(h, noise_w.flatten(0, 1), noise_b.flatten(), stride, padding)
        return out.unflatten(1, (draws, -1)).transpose(0, 1)
    signs = h.shape[0]
    per_draw = h.transpose(0, 1).flatten(1, 2)  # (K, S*B, C, H, W)
    out = torch.func.vmap(lambda x, w, b: F.conv2d(x, w, b, stride, padding))(per_draw, noise_w, noise_b)
    return out.unflatten(1, (signs, -1)).transpose(0, 1)


@dataclass
class _PerturbationOptions:
    perturbations: int = option(32, "K, independent noise draws per update; each costs two forward passes with "
                                "antithetic sampling, one without (count)",
                                "chosen: 64 forward passes per update take wp under 12% and np under 5% test error "
                                "on MNIST with mlp:784-256-10 in 10 epochs")
    noise_std: float = option(1e-3, "sigma, standard deviation of the Gaussian perturbation (units of the perturbed "
                              "weight or preactivation)",
                              "chosen: small enough that the O(sigma^2) bias is negligible, large enough that "
                              "float32 loss differences stay well above rounding error")
    antithetic: bool = option(True, "use each draw as the pair +xi, -xi and half their loss difference; false: "
                              "compare each perturbed loss with one clean forward pass",
                              "antithetic (mirrored) sampling, as in Salimans et al. 2017")
    per_layer: bool = option(False, "perturb one layer at a time, each with its own K draws (costs L times the "
                             "forward passes of the joint form, for an L-layer net)",
                             "the joint form is the one Werfel, Xie & Seung 2005 analyse")


class _PerturbationRule(Rule):
    """Shared bookkeeping of wp and np: validation of options, signs and loss changes."""

    Options = _PerturbationOptions
    defaults = OptimizerDefaults("adam", lr=1e-3)
    # On the bandit the perturbed loss is the policy-gradient loss of the sampled actions and rewards.
    tasks = ("classification", "bandit")

    @classmethod
    def check_options(cls, options):
        check_number(cls.name, "perturbations", options.perturbations, integer=True, example="32")
        check_number(cls.name, "noise_std", options.noise_std, example="1e-3")

    def example_losses(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the cross-entropy of each example of each network: (..., B, C) logits -> (..., B).

        `y` contains class indices (B,) or the bandit's soft targets (B, C).
        """
        classes = output.shape[-1]
        if y.is_floating_point():
            target = y.expand(output.shape).reshape(-1, classes)
        else:
            target = y.expand(output.shape[:-1]).reshape(-1)
        losses = F.cross_entropy(output.reshape(-1, classes), target, reduction="none")
        return losses.view(output.shape[:-1])

    def loss(self, output, y):
        return self.example_losses(output, y).mean()

    @property
    def signs(self) -> int:
        return 2 if self.options.antithetic else 1

    def _sign_vector(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0, -1.0][: self.signs], device=like.device, dtype=like.dtype)

    def _loss_changes(self, losses: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
        """Return the loss change of each draw, (S, K, ...) losses -> (K, ...).

        Antithetic: half the difference of the pair, (L(+xi) - L(-xi)) / 2. One-sided:
        L(+xi) - L(clean). The estimate then pairs this change with +xi.
        """
        if self.options.antithetic:
            return (losses[0] - losses[1]) / 2
        return losses[0] - clean

    def _forward_passes(self, groups: int) -> int:
        """Forward passes of the estimator: 2K per group (antithetic) or K per group plus the clean pass."""
        per_group = self.options.perturbations * self.signs
        return groups * per_group + (1 if self._needs_clean_pass() else 0)

    def _needs_clean_pass(self) -> bool:
        return not self.options.antithetic or self.options.per_layer


# -- weight perturbation ------------------------------------------------------


@register
class WeightPerturbation(_PerturbationRule):
    name = "wp"
    description = "Weight perturbation: Gaussian noise on all weights, gradient estimated from the loss change"
    reference = "Jabri & Flower 1992; Werfel, Xie & Seung 2005"

    def draw_noise(self, draws: int, layers: list[int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Draw standard-normal noise (K, *shape) for the weight and bias of the given layers (all by default)."""
        chosen = range(len(self.net.blocks)) if layers is None else layers
        noise: list = [None] * len(self.net.blocks)
        for i in chosen:
            layer = self.net.blocks[i].layer
            w, b = layer.weight, layer.bias
            noise[i] = (torch.randn((draws, *w.shape), device=w.device, dtype=w.dtype),
                        torch.randn((draws, *b.shape), device=b.device, dtype=b.dtype))
        return noise

    @torch.no_grad()
    def perturbed_losses(self, x: torch.Tensor, y: torch.Tensor, noise: list, start: int = 0,
                         h: torch.Tensor | None = None) -> torch.Tensor:
        """Return the minibatch loss of every perturbed network, shape (S, K).

        The weights of each block from `start` on move by +-sigma * noise, and blocks
        whose noise is None stay clean. `h` is the clean input to block `start`.
        """
        sigma = self.options.noise_std
        h = x if h is None else h
        shared = True  # h is the same for every perturbation until the first perturbed block
        for i in range(start, len(self.net.blocks)):
            block = self.net.blocks[i]
            if shared and noise[i] is None:
                h = block(h)
                continue
            if shared:
                z = block.preactivation(h)
                effect = _weight_noise_effect(block, h, *noise[i], shared=True)
                signs = self._sign_vector(z).view(-1, 1, *[1] * z.dim())
                z = z + sigma * signs * effect
                shared = False
            else:
                z = _split(block.preactivation(_merge(h)), *h.shape[:2])
                if noise[i] is not None:
                    effect = _weight_noise_effect(block, h, *noise[i], shared=False)
                    z = z + sigma * self._sign_vector(z).view(-1, *[1] * (z.dim() - 1)) * effect
            h = _split(block.nonlinearity(_merge(z)), *z.shape[:2])
        if shared:
            raise CreditlabError("wp was given no noise for any layer; pass noise from draw_noise()")
        return self.example_losses(h, y).mean(-1)

    def estimate(self, changes: torch.Tensor, noise: list) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Return the gradient estimate mean_k (dL_k / sigma^2) xi_k for every perturbed weight and bias."""
        sigma, draws = self.options.noise_std, changes.shape[0]
        # xi_k = sigma * eps_k, so (dL_k / sigma^2) xi_k = (dL_k / sigma) eps_k.
        weights = changes / (sigma * draws)
        return [None if n is None else tuple(torch.tensordot(weights, part, dims=1) for part in n) for n in noise]

    @torch.no_grad()
    def step(self, x, y):
        self.clear_grads()
        draws = self.options.perturbations
        blocks = self.net.blocks
        grads: list = [None] * len(blocks)
        if self.options.per_layer:
            activities = self.net.activities(x)
            clean = self.loss(activities[-1], y)
            for i in range(len(blocks)):
                noise = self.draw_noise(draws, [i])
                losses = self.perturbed_losses(x, y, noise, start=i, h=activities[i])
                grads[i] = self.estimate(self._loss_changes(losses, clean), noise)[i]
            loss = clean
        else:
            clean = None if self.options.antithetic else self.loss(self.net(x), y)
            noise = self.draw_noise(draws)
            losses = self.perturbed_losses(x, y, noise)
            grads = self.estimate(self._loss_changes(losses, clean), noise)
            # Without a clean pass the mean loss of the perturbed networks stands for
            # the clean loss; it exceeds it by O(sigma^2).
            loss = losses.mean() if clean is None else clean
        for block, (gw, gb) in zip(blocks, grads):
            block.layer.weight.grad = gw
            block.layer.bias.grad = gb
        groups = len(blocks) if self.options.per_layer else 1
        return {"loss": loss, "forward_passes": self._forward_passes(groups), "backward_passes": 0}


# -- node perturbation --------------------------------------------------------


@dataclass
class NPOptions(_PerturbationOptions):
    noise: str = option("per-example", "per-example: each example has its own noise and its own loss change; shared: "
                        "one noise vector per draw for the whole minibatch and the minibatch loss change (unbiased "
                        "only for batch size 1)",
                        "Williams 1992 perturbs each trial on its own; the shared form mirrors wp",
                        choices=("per-example", "shared"))
    eligibility: str = option("perturbed", "input h_{l-1} in the update xi_l h_{l-1}^T: perturbed (each perturbed "
                              "network's own layer input, as for REINFORCE with noisy units) or clean (the input of "
                              "one extra clean forward pass; equal to O(sigma^2), with a K times smaller outer product)",
                              "Williams 1992 uses each unit's actual input", choices=("perturbed", "clean"))


@register
class NodePerturbation(_PerturbationRule):
    name = "np"
    description = "Node perturbation: noise on every preactivation, update (dL/sigma^2) xi_l h_{l-1}^T"
    reference = "Williams 1992; Werfel, Xie & Seung 2005"
    Options = NPOptions

    def draw_noise(self, draws: int, batch: int, layers: list[int] | None = None) -> list[torch.Tensor | None]:
        """Draw standard-normal noise (K, B or 1, *preactivation shape) for the given layers (all by default)."""
        chosen = range(len(self.net.blocks)) if layers is None else layers
        shapes = self._preactivation_shapes()
        rows = batch if self.options.noise == "per-example" else 1
        device, dtype = self.net.blocks[0].weight.device, self.net.blocks[0].weight.dtype
        noise: list = [None] * len(self.net.blocks)
        for i in chosen:
            noise[i] = torch.randn((draws, rows, *shapes[i]), device=device, dtype=dtype)
        return noise

    def _needs_clean_pass(self) -> bool:
        return super()._needs_clean_pass() or self.options.eligibility == "clean"

    def _preactivation_shapes(self) -> list[torch.Size]:
        if not hasattr(self, "_shapes"):
            with torch.no_grad():
                weight = self.net.blocks[0].weight
                h = torch.zeros(1, *self.net.spec.input_shape, device=weight.device, dtype=weight.dtype)
                shapes = []
                for block in self.net.blocks:
                    z = block.preactivation(h)
                    shapes.append(z.shape[1:])
                    h = block.nonlinearity(z)
            self._shapes = shapes
        return self._shapes

    @torch.no_grad()
    def perturbed_pass(self, x: torch.Tensor, y: torch.Tensor, noise: list, start: int = 0,
                       h: torch.Tensor | None = None) -> tuple[torch.Tensor, list]:
        """Run the perturbed networks; return per-example losses (S, K, B) and each perturbed block's input.

        Block i's preactivation moves by +-sigma * noise[i] (no change where
        noise[i] is None); `h` is the clean input to block `start`. A recorded
        input comes as (tensor, shared): (B, ...) and True while it is the same for
        every perturbation, else (S, K, B, ...) and False.
        """
        sigma = self.options.noise_std
        h = x if h is None else h
        shared = True
        inputs: list = [None] * len(self.net.blocks)
        for i in range(start, len(self.net.blocks)):
            block = self.net.blocks[i]
            if noise[i] is None and shared:
                h = block(h)
                continue
            if noise[i] is None:
                h = _split(block(_merge(h)), *h.shape[:2])
                continue
            inputs[i] = (h, shared)
            if shared:
                z = block.preactivation(h)
                signs = self._sign_vector(z).view(-1, 1, *[1] * z.dim())
                z = z + sigma * signs * noise[i]
                shared = False
            else:
                z = _split(block.preactivation(_merge(h)), *h.shape[:2])
                z = z + sigma * self._sign_vector(z).view(-1, *[1] * (z.dim() - 1)) * noise[i]
            h = _split(block.nonlinearity(_merge(z)), *z.shape[:2])
        if shared:
            raise CreditlabError("np was given no noise for any layer; pass noise from draw_noise()")
        return self.example_losses(h, y), inputs

    def estimate(self, changes: torch.Tensor, noise: list, inputs: list) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Return the mean over perturbed networks of (dL / sigma^2) xi_l h_{l-1}^T, and of (dL / sigma^2) xi_l for the bias.

        `changes` is (K, B) per example or (K,) for shared noise, from _loss_changes.
        Member s of an antithetic pair has noise s * xi and loss change s * dL, so
        the signs cancel. The pair then contributes dL / sigma^2 * xi times the
        mean of its two members' inputs.
        """
        sigma = self.options.noise_std
        if changes.dim() == 1:
            changes = changes[:, None]  # shared noise: one loss change for the whole minibatch
        else:
            changes = changes / changes.shape[1]  # the minibatch loss is the mean of the example losses
        out: list = [None] * len(self.net.blocks)
        for i, (block, eps) in enumerate(zip(self.net.blocks, noise)):
            if eps is None:
                continue
            # error[k, b] = (dL_kb / sigma^2) * xi_kb, with xi = sigma * eps.
            error = (changes / sigma).view(*changes.shape, *[1] * (eps.dim() - 2)) * eps
            h, shared = inputs[i]
            error = error.expand(error.shape[0], h.shape[0 if shared else 2], *error.shape[2:])
            out[i] = (self._weight_estimate(block, error, h, shared), self._bias_estimate(block, error))
        return out

    def _weight_estimate(self, block, error: torch.Tensor, h: torch.Tensor, shared: bool) -> torch.Tensor:
        if shared:
            # The same input for every perturbed network: average the error over draws first.
            return _weight_gradient(block, error.mean(0), block.prepare(h))
        # Both members of a pair share the error, so their inputs can be averaged
        # first: the outer product then runs over K * B rows instead of S * K * B.
        mean_input = h.mean(0).flatten(0, 1)
        return _weight_gradient(block, error.flatten(0, 1), block.prepare(mean_input)) / error.shape[0]

    @staticmethod
    def _bias_estimate(block, error: torch.Tensor) -> torch.Tensor:
        mean = error.mean(0)
        return mean.sum((0, 2, 3)) if block.is_conv else mean.sum(0)

    @torch.no_grad()
    def step(self, x, y):
        self.clear_grads()
        draws, batch = self.options.perturbations, len(y)
        blocks = self.net.blocks
        shared_noise = self.options.noise == "shared"
        grads: list = [None] * len(blocks)

        def changes(losses, clean):
            if shared_noise:
                return self._loss_changes(losses.mean(-1), None if clean is None else clean.mean())
            return self._loss_changes(losses, clean)

        if self.options.per_layer:
            activities = self.net.activities(x)
            clean = self.example_losses(activities[-1], y)
            for i in range(len(blocks)):
                noise = self.draw_noise(draws, batch, [i])
                losses, inputs = self.perturbed_pass(x, y, noise, start=i, h=activities[i])
                grads[i] = self.estimate(changes(losses, clean), noise, inputs)[i]
            loss = clean.mean()
        else:
            activities = self.net.activities(x) if self._needs_clean_pass() else None
            clean = None if self.options.antithetic else self.example_losses(activities[-1], y)
            noise = self.draw_noise(draws, batch)
            losses, inputs = self.perturbed_pass(x, y, noise)
            if self.options.eligibility == "clean":
                inputs = [(h, True) for h in activities[:-1]]
            grads = self.estimate(changes(losses, clean), noise, inputs)
            # Without a clean pass the mean loss of the perturbed networks stands for
            # the clean loss; it exceeds it by O(sigma^2).
            loss = losses.mean() if clean is None else clean.mean()
        for block, (gw, gb) in zip(blocks, grads):
            block.layer.weight.grad = gw
            block.layer.bias.grad = gb
        groups = len(blocks) if self.options.per_layer else 1
        return {"loss": loss, "forward_passes": self._forward_passes(groups), "backward_passes": 0}


def _weight_gradient(block, error: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Return the gradient the block's weight would get from `error` at its preactivation: sum_b error_b (x) input_b."""
    if block.is_conv:
        return torch.nn.grad.conv2d_weight(inp, block.weight.shape, error, block.layer.stride, block.layer.padding)
    return error.t() @ inp


# -- Hebbian baseline ---------------------------------------------------------


@dataclass
class HebbianOptions:
    hidden_rule: str = option("sanger", "rule of the hidden layers: sanger (Sanger's generalized Hebbian algorithm, "
                              "dW = y x^T - LT(y y^T) W; its first unit follows Oja's rule and the units converge to "
                              "the leading principal components of the input's second moment) or competitive (each "
                              "input moves the most active unit towards it and the rank-k unit away, with Oja's "
                              "normalisation)",
                              "Oja 1982; Sanger 1989; Krotov & Hopfield 2019 for the competitive form",
                              choices=("sanger", "competitive"))
    # NOTE: on standardised MNIST with tanh units the competitive form saturates
    # every hidden unit alike, so its readout stays near chance; sanger does not.
    anti_hebbian: float = option(0.4, "competitive rule: strength Delta of the anti-Hebbian update of the rank-k unit, "
                                 "relative to the winner's (dimensionless)", "chosen")
    rank: int = option(2, "competitive rule: rank k of the unit that gets the anti-Hebbian update (2 = runner-up)",
                       "chosen")


@register
class Hebbian(Rule):
    name = "hebbian"
    description = "Hebbian baseline: hidden layers learn without error (Sanger/Oja or competitive), readout by delta rule"
    reference = "Oja 1982; Sanger 1989; Krotov & Hopfield 2019"
    Options = HebbianOptions

    @classmethod
    def check_options(cls, options):
        # Rank 1 would be the winner itself.
        check_number(cls.name, "rank", options.rank, minimum=2, above=False, integer=True)
        check_number(cls.name, "anti_hebbian", options.anti_hebbian, above=False)

    @staticmethod
    def _patches(block, h: torch.Tensor) -> torch.Tensor:
        """Return the rows the block's weight multiplies: inputs (dense) or unfolded input patches (conv)."""
        if not block.is_conv:
            return block.prepare(h)
        layer = block.layer
        patches = F.unfold(h, layer.kernel_size, padding=layer.padding, stride=layer.stride)
        return patches.transpose(1, 2).flatten(0, 1)

    def hebbian_update(self, block, h: torch.Tensor) -> torch.Tensor:
        """Return the Hebbian weight change dW (shape of the block's weight) for block input h, without any label."""
        weight = block.weight.detach().flatten(1)
        x = self._patches(block, h)
        y = x @ weight.t()
        n = x.shape[0]
        if self.options.hidden_rule == "sanger":
            change = (y.t() @ x - torch.tril(y.t() @ y) @ weight) / n
        else:
            units = y.shape[1]
            top = y.topk(min(self.options.rank, units), dim=1).indices
            gate = torch.zeros_like(y)
            gate.scatter_(1, top[:, :1], 1.0)
            if units >= self.options.rank:
                gate.scatter_(1, top[:, -1:], -self.options.anti_hebbian)
            change = (gate.t() @ x - (gate * y).sum(0)[:, None] * weight) / n
        return change.view_as(block.weight)

    @torch.no_grad()
    def step(self, x, y):
        self.clear_grads()
        activities = self.net.activities(x)
        blocks = self.net.blocks
        for block, h in zip(blocks[:-1], activities[:-2]):
            block.layer.weight.grad = -self.hebbian_update(block, h)
            block.layer.bias.grad = torch.zeros_like(block.layer.bias)
        # Delta rule at the readout: error (softmax - one-hot) / B times the readout's input.
        # A soft target t (the bandit's) gives the cross-entropy gradient softmax * sum(t) - t.
        readout, output = blocks[-1], activities[-1]
        target = y if y.is_floating_point() else F.one_hot(y, output.shape[1]).to(output.dtype)
        error = (torch.softmax(output, 1) * target.sum(1, keepdim=True) - target) / len(y)
        readout.layer.weight.grad = _weight_gradient(readout, error, readout.prepare(activities[-2]))
        readout.layer.bias.grad = error.sum(0)
        return {"loss": self.loss(output, y), "forward_passes": 1, "backward_passes": 0}

    def epoch_metrics(self, dataset):
        """Return the mean norm of the hidden units' weight vectors per layer; Oja's normalisation drives it to 1."""
        return {"hidden_weight_norm": [float(b.weight.detach().flatten(1).norm(dim=1).mean()) for b in self.net.blocks[:-1]]}
