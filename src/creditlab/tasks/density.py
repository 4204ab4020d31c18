"""Density modelling of binarized images, scored by the test log-likelihood in nats.

Training images are binarized afresh at every step: each pixel is 1 with
probability equal to its intensity in [0, 1] (dynamic binarization). The
validation and test images are binarized once, the same way, with a fixed
seed, so every run and epoch is scored on the same binary images.

log p(x) is estimated by importance sampling with the recognition net as
proposal, log (1/K) sum_k p(x, h_k) / q(h_k | x). The estimate is a stochastic
lower bound that tightens as K grows, so the per-epoch validation figure (K =
`eval_samples`) sits below the final test figure (K = `test_samples`). For
machines small enough, the exact log p(x), summed over every hidden
configuration, is recorded as well.
"""

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import data, io
from ..errors import CreditlabError
from ..rules.base import option
from .base import Task, last

log = logging.getLogger(__name__)

# Seed of the fixed binarization of the validation and test images.
BINARIZE_SEED = 2015
# Seed of the importance samples drawn for evaluation, so that every epoch's
# estimate uses the same random numbers and differences between epochs are the model's.
EVAL_SEED = 1995

DEFAULT_NETS = {
    "digits": "helmholtz:64-12-6",
    "mnist": "helmholtz:784-200-200",
    "fashion-mnist": "helmholtz:784-200-200",
}

# Published test log-likelihoods (nats) on binarized MNIST, keyed by (dataset, net) and rule.
# NOTE: empty because Bornschein & Bengio's 2015 figures could not be confirmed against the paper.
PUBLISHED: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}


@dataclass
class DensityOptions:
    eval_samples: int = option(100, "importance samples per example for the validation log-likelihood after "
                               "each epoch", "chosen: a quick estimate, tighter at the end of the run")
    test_samples: int = option(1000, "importance samples per example for the final test log-likelihood",
                               "chosen: the estimate's bias shrinks as the number of samples grows")
    exact_bits: int = option(20, "record the exact log-likelihood when no two adjacent hidden layers have more "
                             "units than this together (the enumeration visits 2^bits configurations)",
                             "chosen: 2^20 configurations take seconds on a CPU")
    grid: int = option(10, "rows and columns of the sample and reconstruction grids saved as PNG",
                       "chosen")


class Density(Task):
    name = "density"
    description = "density modelling of binarized images; scored by the test log-likelihood in nats"
    Options = DensityOptions
    uses_activation = False

    def __init__(self, options=None):
        super().__init__(options)
        for key in ("eval_samples", "test_samples", "grid"):
            if getattr(self.options, key) < 1:
                raise CreditlabError(f"invalid value {getattr(self.options, key)} for option {key!r} of task "
                                     f"'density': give a positive integer")
        if not 0 <= self.options.exact_bits <= 30:
            raise CreditlabError(f"invalid value {self.options.exact_bits} for option 'exact_bits' of task "
                                 f"'density': give an integer from 0 to 30")

    @classmethod
    def default_net(cls, dataset):
        return DEFAULT_NETS.get(dataset, "")

    @classmethod
    def check_fits(cls, spec, input_shape, num_classes, dataset):
        size = int(np.prod(input_shape))
        if spec.kind != "helmholtz":
            raise CreditlabError(f"net {spec.text!r} is not a Helmholtz machine; the density task needs one, "
                                 f"e.g. helmholtz:{size}-200-200")
        if spec.input_size != size:
            raise CreditlabError(f"net {spec.text!r} has {spec.input_size} visible units but {dataset} images "
                                 f"have {size} pixels; start the spec with helmholtz:{size}")

    def load(self, name, data_dir, val_size):
        source = data.load(name, data_dir, val_size)
        generator = torch.Generator().manual_seed(BINARIZE_SEED)

        def fixed(split):
            if split is None:
                return None
            return data.Split(torch.bernoulli(data.unit_interval(split.x, source.meta), generator=generator), split.y)

        train = data.Split(data.unit_interval(source.train.x, source.meta), source.train.y)
        meta = {**source.meta, "binarization": f"dynamic for training, fixed (seed {BINARIZE_SEED}) for validation and test"}
        return data.Dataset(source.name, train, fixed(source.val), fixed(source.test), source.num_classes, meta)

    def prepare(self, x, y):
        return torch.bernoulli(x), y

    # -- measurements -------------------------------------------------------------

    def exact_available(self, net) -> bool:
        return net.enumeration_size() <= 2**self.options.exact_bits

    def log_likelihood(self, net, split, samples: int, progress: str | None = None) -> float:
        """Return the mean importance-sampled log-likelihood of a split (nats), with fixed random numbers."""
        if split is None or len(split) == 0:
            return math.nan
        device = split.x.device
        generator = torch.Generator(device=device).manual_seed(EVAL_SEED)
        # About 10^7 sampled visible units at once bounds the memory of each batch.
        batch = max(1, min(len(split), 10**7 // (min(samples, 100) * net.sizes[0])))
        total = 0.0
        starts = range(0, len(split), batch)
        for start in tqdm(starts, desc=progress, leave=False, disable=progress is None or None):
            x = split.x[start:start + batch]
            total += net.log_likelihood(x, samples, generator).sum().item()
        return total / len(split)

    @torch.no_grad()
    def exact_log_likelihood(self, net, split) -> float:
        if split is None or len(split) == 0:
            return math.nan
        return net.exact_log_likelihood(split.x, 2**self.options.exact_bits).mean().item()

    def evaluate(self, rule, dataset, epoch):
        record = {"val_log_likelihood": self.log_likelihood(rule.net, dataset.val, self.options.eval_samples)}
        if self.exact_available(rule.net):
            record["val_exact_log_likelihood"] = self.exact_log_likelihood(rule.net, dataset.val)
        return record

    def describe(self, record):
        text = (f"train bound {-record['train_loss']:.2f}, val log-likelihood {record['val_log_likelihood']:.2f} "
                f"nats (K={self.options.eval_samples})")
        if "val_exact_log_likelihood" in record:
            text += f", exact {record['val_exact_log_likelihood']:.2f}"
        return text

    def summarise(self, history):
        return {
            "val_log_likelihood": last(history, "val_log_likelihood"),
            "best_val_log_likelihood": max((r["val_log_likelihood"] for r in history), default=math.nan),
            "val_exact_log_likelihood": last(history, "val_exact_log_likelihood"),
        }

    def finish(self, rule, dataset, out):
        net = rule.net
        samples = self.options.test_samples
        result = {"test_samples": samples,
                  "test_log_likelihood": self.log_likelihood(net, dataset.test, samples, f"test log-likelihood K={samples}")}
        if self.exact_available(net):
            result["test_exact_log_likelihood"] = self.exact_log_likelihood(net, dataset.test)
        log.info("%s: test log-likelihood %.2f nats (K=%d)", rule.name, result["test_log_likelihood"], samples)
        if out is not None:
            self.save_pictures(net, dataset, out)
        return result

    @torch.no_grad()
    def save_pictures(self, net, dataset, out) -> None:
        """Write samples.png (dreams) and reconstructions.png (test images above their reconstructions)."""
        shape = dataset.input_shape[-2:]
        n = self.options.grid
        generator = torch.Generator(device=dataset.test.x.device).manual_seed(EVAL_SEED)
        dreams = net.sample_means(n * n, generator)
        save_image_grid(out / "samples.png", dreams.reshape(-1, *shape), n, f"{net.spec.text}: dreams p(x=1 | h)")
        originals = dataset.test.x[: n * (n // 2 or 1)]
        pairs = []
        for row in range(0, len(originals), n):
            chunk = originals[row:row + n]
            pairs += [chunk.flatten(1), net.reconstruct(chunk, generator)]
        images = torch.cat(pairs).reshape(-1, *shape)
        save_image_grid(out / "reconstructions.png", images, n, "test images (odd rows) and reconstructions (even rows)")

    @staticmethod
    def headline(summary):
        text = f"test log-likelihood {summary['test_log_likelihood']:.2f} nats (K={summary['test_samples']})"
        exact = summary.get("test_exact_log_likelihood")
        if exact is not None and not math.isnan(exact):
            text += f", exact {exact:.2f}"
        return text

    # -- comparisons ----------------------------------------------------------------

    @staticmethod
    def report_notes():
        return ("Log-likelihoods are in nats per image, mean ± standard deviation over seeds, estimated by importance "
                "sampling with the recognition net as proposal (K samples per image); exact values sum over every "
                "hidden configuration. The train bound is the last epoch's mean of the rule's own training estimate: "
                "the single-sample ELBO for wake-sleep, the K-sample importance-weighted bound for rws. Update angles "
                "compare each generative layer's update with the gradient of log p(x) (exact for small machines, else "
                "an importance-sampled estimate), averaged over the last epoch.")

    @staticmethod
    def report_table(records):
        from ..report import _angles, _mean_std, finished_runs, group_by_rule

        def nats(values):
            mean, std = _mean_std(values)
            return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"

        header = ("| rule | runs | test log-likelihood (nats) | K | exact test log-likelihood | best val log-likelihood "
                  "| train bound | update angle per generative layer (°) | examples/s | forward-pass equivalents "
                  "| published |")
        lines = [header, "|" + "---|" * (header.count("|") - 1)]
        for rule, group in group_by_rule(records).items():
            finished, runs = finished_runs(group)
            first = group[0]
            ref = PUBLISHED.get((first["dataset"], first["net"]), {}).get(first["rule"])
            samples = sorted({r.get("test_samples") for r in finished if r.get("test_samples")})
            lines.append(
                f"| {rule} | {runs} | {nats([r.get('test_log_likelihood') for r in finished])} "
                f"| {', '.join(map(str, samples)) or 'n/a'} "
                f"| {nats([r.get('test_exact_log_likelihood') for r in finished])} "
                f"| {nats([r.get('best_val_log_likelihood') for r in finished])} "
                f"| {nats([-r['train_loss'] for r in finished])} | {_angles(finished, 'update_angle_deg')} "
                f"| {_mean_std([r['examples_per_second'] for r in finished])[0]:,.0f} "
                f"| {_mean_std([r['forward_pass_equivalents_per_update'] for r in finished])[0]:.1f} "
                f"| {f'{ref[0]:.2f} ({ref[1]})' if ref else '—'} |")
        return "\n".join(lines)

    @staticmethod
    def report_plots(out, records, histories):
        from .. import report

        names = list(report.group_by_rule(records))
        plots = []
        if report.plot_curves(histories, names, "val_log_likelihood", out / "val_log_likelihood.png",
                              ylabel="validation log-likelihood (nats)",
                              title="Validation log-likelihood per epoch (mean ± std over seeds)"):
            plots.append("val_log_likelihood.png")
        if report.plot_angles(histories, names, "update_angle_deg",
                              "Angle between each generative layer's update and the gradient of log p(x)",
                              out / "update_angle.png"):
            plots.append("update_angle.png")
        labels_shown = set()
        for record in records:
            label, folder = record.get("label") or record["rule"], record.get("folder")
            if label not in labels_shown and folder and (out / folder / "samples.png").exists():
                plots.append(f"{folder}/samples.png")
                labels_shown.add(label)
        return plots


def save_image_grid(path, images: torch.Tensor, columns: int, title: str) -> None:
    """Save images (N, H, W) with values in [0, 1] as one PNG grid, `columns` images per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().float().cpu().numpy()
    count, height, width = images.shape
    rows = math.ceil(count / columns)
    canvas = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1), dtype=np.float32)
    for i, image in enumerate(images):
        top, left = 1 + (i // columns) * (height + 1), 1 + (i % columns) * (width + 1)
        canvas[top:top + height, left:left + width] = image
    figure, ax = plt.subplots(figsize=(columns * 0.5 + 0.5, rows * 0.5 + 0.8))
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    figure.tight_layout()
    io.save_figure(path, figure)
    plt.close(figure)
