"""Datasets held in memory as tensors, with a fixed validation split and index-slice batches.

`load(name)` returns a `Dataset` whose images have shape (N, C, H, W), scaled to
[0, 1] and then standardised with the mean and standard deviation of the
training pixels, and whose labels are int64 class indices.
"""

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import CreditlabError
from .idx import check_sha256, parse_idx, read_bytes
from .sources import RemoteFile, locate

log = logging.getLogger(__name__)

# The validation split is drawn with this fixed seed, so every run of a
# dataset holds out the same examples whatever its own seed.
SPLIT_SEED = 12345


@dataclass
class Split:
    """Inputs (N, C, H, W) float32 and labels (N,) int64 of one part of a dataset."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) batches; shuffled when a generator is given. The last batch may be smaller."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        order = order.to(self.x.device)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            yield self.x[index], self.y[index]


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    meta: dict = field(default_factory=dict)
    # Optional training-time augmentation, augment(x, generator) -> x, applied to each training batch.
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    def to(self, device) -> "Dataset":
        val = self.val.to(device) if self.val is not None else None
        return Dataset(self.name, self.train.to(device), val, self.test.to(device), self.num_classes, self.meta,
                       self.augment)


def _standardise(train: np.ndarray, others: list[np.ndarray], scale: float) -> tuple[list[torch.Tensor], dict]:
    """Scale to [0, 1], then standardise with the training pixels; also return that mean and std as meta."""
    train = train.astype(np.float32) / scale
    mean, std = float(train.mean()), float(train.std())
    out = [torch.from_numpy((train - mean) / std)]
    out += [torch.from_numpy((o.astype(np.float32) / scale - mean) / std) for o in others]
    return out, {"pixel_mean": mean, "pixel_std": std}


def unit_interval(x: torch.Tensor, meta: dict) -> torch.Tensor:
    """Undo the standardisation of a dataset's images, mapping them back to intensities in [0, 1]."""
    return (x * meta["pixel_std"] + meta["pixel_mean"]).clamp(0.0, 1.0)


def _hold_out(x: torch.Tensor, y: torch.Tensor, val_size: int) -> tuple[Split, Split | None]:
    if val_size < 0 or val_size >= len(y):
        raise CreditlabError(
            f"invalid validation size {val_size}: it must be between 0 and {len(y) - 1}, the training set size minus one")
    if val_size == 0:
        return Split(x, y), None
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = order[:val_size], order[val_size:]
    return Split(x[train], y[train]), Split(x[val], y[val])


def load_digits(val_size: int | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1,797 images, of which a fixed 360 form the test set."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test_index, train_index = order[:360], order[360:]
    (train_x, test_x), pixels = _standardise(images[train_index.numpy()], [images[test_index.numpy()]], 16.0)
    train, val = _hold_out(train_x, labels[train_index], 180 if val_size is None else val_size)
    return Dataset("digits", train, val, Split(test_x, labels[test_index]), 10, pixels)


_MNIST_LIKE = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
        "sha256": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    },
}


def load_mnist_like(name: str, data_dir: str | Path | None = None, val_size: int | None = None,
                    download: bool = True, verify: bool = True) -> Dataset:
    """MNIST or Fashion-MNIST from the four IDX files: 60,000 training and 10,000 test images."""
    info = _MNIST_LIKE[name]
    files = [RemoteFile(n, h) for n, h in info["sha256"].items()]
    paths = locate(name, files, data_dir, info["mirrors"], download)

    # Check the structure of all four files first: a wrong count or a bad magic
    # number describes a damaged copy better than a checksum mismatch.
    raw = {stem: read_bytes(path) for stem, path in paths.items()}
    train_images = parse_idx(raw["train-images-idx3-ubyte"], paths["train-images-idx3-ubyte"], 3, 60000, (28, 28))
    train_labels = parse_idx(raw["train-labels-idx1-ubyte"], paths["train-labels-idx1-ubyte"], 1, 60000, ())
    test_images = parse_idx(raw["t10k-images-idx3-ubyte"], paths["t10k-images-idx3-ubyte"], 3, 10000, (28, 28))
    test_labels = parse_idx(raw["t10k-labels-idx1-ubyte"], paths["t10k-labels-idx1-ubyte"], 1, 10000, ())
    if verify:
        for stem, data in raw.items():
            check_sha256(data, paths[stem], info["sha256"][stem])
    for stem, labels in (("train-labels-idx1-ubyte", train_labels), ("t10k-labels-idx1-ubyte", test_labels)):
        if labels.max() > 9:
            raise CreditlabError(f"{paths[stem]} has label {labels.max()}, expected 0-9; replace the file")
    (train_x, test_x), pixels = _standardise(train_images[:, None], [test_images[:, None]], 255.0)
    train, val = _hold_out(train_x, torch.from_numpy(train_labels.astype(np.int64)),
                           5000 if val_size is None else val_size)
    test = Split(test_x, torch.from_numpy(test_labels.astype(np.int64)))
    return Dataset(name, train, val, test, 10, {"files": {k: str(v) for k, v in paths.items()}, **pixels})


DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")

# Input shape (C, H, W), number of classes and training-set size (validation
# included) of each dataset, known without loading it.
SHAPES = {
    "digits": ((1, 8, 8), 10, 1437),
    "mnist": ((1, 28, 28), 10, 60000),
    "fashion-mnist": ((1, 28, 28), 10, 60000),
    "cifar10": ((3, 32, 32), 10, 50000),
}


@functools.lru_cache(maxsize=2)
def load(name: str, data_dir: str | Path | None = None, val_size: int | None = None,
         download: bool = True) -> Dataset:
    """Load dataset `name` (one of DATASETS) into memory; the last two loaded are kept for reuse.

    Callers must not modify the returned tensors in place, since later calls share them.
    """
    if name == "digits":
        dataset = load_digits(val_size)
    elif name in _MNIST_LIKE:
        dataset = load_mnist_like(name, data_dir, val_size, download)
    elif name == "cifar10":
        from .cifar import load_cifar10

        dataset = load_cifar10(data_dir, val_size)
    else:
        raise CreditlabError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    log.info("loaded %s: %d train, %d validation, %d test examples of shape %s", name, len(dataset.train),
             len(dataset.val) if dataset.val is not None else 0, len(dataset.test), dataset.input_shape)
    return dataset
