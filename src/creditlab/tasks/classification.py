"""Supervised classification: the rule receives each example's label, and the run is scored by error rate."""

import math

from .. import metrics, nets
from .base import Task, last


class Classification(Task):
    name = "classification"
    description = "supervised classification; the rule receives every label"

    @classmethod
    def default_net(cls, dataset):
        from ..train import DEFAULT_NETS

        return DEFAULT_NETS.get(dataset, "")

    @classmethod
    def check_fits(cls, spec, input_shape, num_classes, dataset):
        nets.check_fits(spec, input_shape, num_classes, dataset)

    def evaluate(self, rule, dataset, epoch):
        return {"val_error": metrics.error_rate(rule, dataset.val), "test_error": metrics.error_rate(rule, dataset.test)}

    def describe(self, record):
        return (f"loss {record['train_loss']:.4f}, val error {100 * record['val_error']:.2f}%, "
                f"test error {100 * record['test_error']:.2f}%")

    def summarise(self, history):
        # Early stopping on the validation set: the first epoch with the lowest validation error, and its test
        # error, the figure Meulemans et al. 2020 report.
        scored = [r for r in history if not math.isnan(r.get("val_error", math.nan))]
        best = min(scored, key=lambda r: r["val_error"], default={})
        return {
            "test_error": last(history, "test_error"),
            "val_error": last(history, "val_error"),
            "best_val_error": best.get("val_error", math.nan),
            "best_val_epoch": best.get("epoch"),
            "test_error_at_best_val": best.get("test_error", math.nan),
        }

    @staticmethod
    def headline(summary):
        return f"test error {100 * summary['test_error']:.2f}%, validation error {100 * summary['val_error']:.2f}%"

    @staticmethod
    def report_notes():
        return ("Errors are mean ± standard deviation over seeds, at the last epoch. Update angles are "
                "measured against the exact gradient of the same loss on the same batch, averaged over the last epoch. "
                "Weight angles, for rules with feedback weights, are between each layer's feedback matrix B and its "
                "forward matrix W (0° when B = W). A published figure is shown where one is recorded for the "
                "dataset, net and activation.")

    @staticmethod
    def report_table(records):
        from .. import report

        return report.table(records)

    @staticmethod
    def report_plots(out, records, histories):
        from .. import report

        return report.classification_plots(out, records, histories)
