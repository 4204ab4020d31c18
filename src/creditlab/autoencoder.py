"""Stacked denoising autoencoders, trained layer by layer with target propagation's learned inverses.

Layer l's encoder is block l of a net built from the spec (every block,
the last included, gets the activation) and its decoder is the inverse g_l
that target propagation uses (creditlab.rules.target.Inverse). Layer l learns
after the layers below it are frozen: it minimises
||g_l(f_l(h_{l-1} + sigma * noise)) - h_{l-1}||^2, summed over units and
averaged over the batch, where h_{l-1} is the clean code of the layers below.

`run` writes to its output folder `metrics.json` (training loss per layer and
epoch, test reconstruction error per depth) and `reconstructions.png` (test
images beside their reconstructions through 1, 2, ... layers).
"""

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import data, io, nets
from .errors import CreditlabError
from .rules.target import Inverse, make_inverse, run_block
from .train import validate_common

log = logging.getLogger(__name__)


@dataclass
class AutoencoderConfig:
    """Settings of a stacked-autoencoder run."""
    data: str = "digits"
    net: str = "mlp:64-48-32"
    activation: str = "tanh"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    noise: float = 0.1
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    examples: int = 8

    def validate(self) -> None:
        validate_common(self, ("epochs", "batch_size", "examples"))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise CreditlabError(f"invalid lr {self.lr!r}: give a positive finite number, e.g. 1e-3")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise CreditlabError(f"invalid noise {self.noise!r}: give a finite number >= 0")


class StackedAutoencoder(torch.nn.Module):
    """Encoder blocks of a layered net, each with its learned inverse as decoder."""

    def __init__(self, spec: str, activation: str = "tanh"):
        super().__init__()
        self.net = nets.LayeredNet(spec, activation)
        # Every code gets the activation, the last layer's included; the net has no classifier here.
        self.net.blocks[-1].activation = nets.make_activation(activation)
        self.decoders = torch.nn.ModuleList([make_inverse(self.net, i) for i in range(len(self.net.blocks))])

    @property
    def depth(self) -> int:
        return len(self.net.blocks)

    def encode(self, x: torch.Tensor, depth: int) -> tuple[torch.Tensor, list]:
        """Return the code after `depth` layers and the pooling indices met on the way."""
        indices = []
        for block in self.net.blocks[:depth]:
            x, index = run_block(block, x)
            indices.append(index)
        return x, indices

    def decode(self, code: torch.Tensor, indices: list) -> torch.Tensor:
        for decoder, index in zip(reversed(self.decoders[:len(indices)]), reversed(indices)):
            code = decoder(code, index)
        return code

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        code, indices = self.encode(x, depth)
        return self.decode(code, indices).reshape(x.shape)


def layer_loss(block: nets.Block, decoder: Inverse, h: torch.Tensor, noise: float) -> torch.Tensor:
    """Denoising loss of one layer: ||g(f(h + noise)) - h||^2 summed over units, averaged over the batch."""
    code, index = run_block(block, h + noise * torch.randn_like(h))
    # An MLP's first decoder returns flat vectors; the images keep their (C, H, W) shape.
    return (decoder(code, index).reshape(h.shape) - h).pow(2).flatten(1).sum(1).mean()


def train_layer(model: StackedAutoencoder, layer: int, split: data.Split, epochs: int, batch_size: int,
                lr: float, noise: float, generator: torch.Generator, progress: bool = True) -> list[float]:
    """Train encoder and decoder of `layer` (0-based) on the frozen codes below it; return the loss per epoch."""
    block, decoder = model.net.blocks[layer], model.decoders[layer]
    optimizer = torch.optim.Adam([*block.parameters(), *decoder.parameters()], lr=lr)
    history = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        steps = math.ceil(len(split) / batch_size)
        bar = tqdm(split.batches(batch_size, generator), total=steps, leave=False,
                   desc=f"layer {layer + 1} epoch {epoch + 1}", disable=not progress or None)
        for x, _ in bar:
            with torch.no_grad():
                h, _ = model.encode(x, layer)
            loss = layer_loss(block, decoder, h, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise CreditlabError(f"autoencoder layer {layer + 1} diverged at epoch {epoch + 1}; lower --lr")
            total += value * len(x)
            count += len(x)
        history.append(total / count)
        log.info("layer %d epoch %d/%d: reconstruction loss %.4f", layer + 1, epoch + 1, epochs, history[-1])
    return history


@torch.no_grad()
def reconstruction_error(model: StackedAutoencoder, split: data.Split, depth: int, batch_size: int = 500) -> float:
    """Mean squared error per input value of the reconstruction through `depth` layers."""
    total, count = 0.0, 0
    for x, _ in split.batches(batch_size):
        total += float((model.reconstruct(x, depth) - x).pow(2).sum())
        count += x.numel()
    return total / count


def save_grid(path: Path, originals: torch.Tensor, rows: list[torch.Tensor], labels: list[str]) -> None:
    """Save a PNG with the original images on top and one row of reconstructions per depth below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [originals, *rows]
    names = ["input", *labels]
    count = len(originals)
    figure, axes = plt.subplots(len(images), count, figsize=(1.1 * count, 1.2 * len(images)), squeeze=False)
    for r, (row, name) in enumerate(zip(images, names)):
        for c in range(count):
            ax = axes[r][c]
            # Each column shares the original's value range, so a reconstruction's contrast is comparable.
            low, high = float(originals[c].min()), float(originals[c].max())
            image = ((row[c] - low) / max(high - low, 1e-8)).clamp(0, 1).cpu()
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    figure.suptitle("Test images and their reconstructions through the stacked autoencoder", fontsize=9)
    figure.tight_layout()
    io.save_figure(path, figure)
    plt.close(figure)


def run(config: AutoencoderConfig, out: str | Path, progress: bool = True) -> dict:
    """Train a stacked autoencoder layer by layer; write metrics.json and reconstructions.png to `out`."""
    from .train import check_writable, pick_device

    config.validate()
    out = Path(out)
    check_writable(out)
    device = pick_device(config.device)
    dataset = data.load(config.data, config.data_dir).to(device)
    spec = nets.parse(config.net)
    shape = "x".join(str(d) for d in dataset.input_shape)
    if spec.kind == "conv" and tuple(spec.input_shape) != dataset.input_shape:
        raise CreditlabError(f"net {spec.text!r} takes input shape {spec.input_shape} but {dataset.name} has {shape}; "
                             f"start the spec with conv:{shape}")
    if spec.kind == "mlp" and spec.input_size != dataset.input_size:
        raise CreditlabError(f"net {spec.text!r} takes {spec.input_size} inputs but {dataset.name} images have "
                             f"{dataset.input_size} values; start the spec with {dataset.input_size}")
    torch.manual_seed(config.seed)
    model = StackedAutoencoder(config.net, config.activation).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    for layer in range(model.depth):
        losses.append(train_layer(model, layer, dataset.train, config.epochs, config.batch_size, config.lr,
                                  config.noise, generator, progress))
    errors = [reconstruction_error(model, dataset.test, depth) for depth in range(1, model.depth + 1)]
    originals = dataset.test.x[:config.examples]
    rows = [model.reconstruct(originals, depth) for depth in range(1, model.depth + 1)]
    save_grid(out / "reconstructions.png", originals, rows, [f"{d} layer{'s' * (d > 1)}" for d in
                                                             range(1, model.depth + 1)])
    summary = {"config": asdict(config), "train_loss": losses, "test_reconstruction_mse": errors}
    io.write_json(out / "metrics.json", summary)
    return summary
