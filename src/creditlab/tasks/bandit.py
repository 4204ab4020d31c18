"""Classification as a contextual bandit: the net picks a class and learns from a reward alone.

For each image x the policy pi(a | x) = softmax(f(x))_a draws an action a, and
the environment returns the reward r = 1 if a is the label, else 0. The label
itself never reaches the rule. REINFORCE (Williams 1992) follows the gradient
of the expected reward J = E_x E_a[r] through the surrogate loss

    L = -(r - b) log pi(a | x),    E[grad L] = -grad J,

for any baseline b that does not depend on a. The task hands this loss to an
unchanged classification rule through its ordinary `rule.loss(output, target)`:
the target is the soft label t = (r - b) onehot(a), for which the cross-entropy
-sum_c t_c log softmax(f(x))_c equals L. bp then computes the exact gradient of
L, and fa, dfa and their relatives send the same output error,
dL/df = (r - b) (pi - onehot(a)), through their own feedback paths.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import CreditlabError
from ..rules.base import Rule, option
from .base import last
from .classification import Classification


@dataclass
class BanditOptions:
    baseline: str = option("mean", "baseline b subtracted from the reward: mean (running mean of the rewards), "
                           "learned (logistic regression of the reward on the image, a per-image estimate) or none",
                           "Williams 1992 shows any baseline independent of the action keeps the estimate unbiased",
                           choices=("mean", "learned", "none"))
    baseline_rate: float = option(0.01, "step size of the baseline per batch: the running mean moves this fraction of "
                                  "the way to the batch's mean reward, the learned baseline takes an SGD step this size",
                                  "chosen")


class Bandit(Classification):
    name = "bandit"
    description = "classification as a contextual bandit; the rule sees only a reward of 1 for the right class, else 0"
    Options = BanditOptions

    def __init__(self, options=None):
        super().__init__(options)
        rate = self.options.baseline_rate
        if not (math.isfinite(rate) and 0 < rate <= 1):
            raise CreditlabError(f"invalid value {rate!r} for option 'baseline_rate' of task 'bandit': "
                                 f"give a number in (0, 1]")
        self.register_buffer("reward_mean", torch.zeros(()))
        self.value: nn.Linear | None = None

    @classmethod
    def serves(cls, rule_cls):
        # A classification rule serves the bandit if every loss it computes goes
        # through the cross-entropy of Rule.loss, which the soft target turns into L.
        return cls.name in rule_cls.tasks or ("classification" in rule_cls.tasks and rule_cls.loss is Rule.loss)

    def setup(self, rule, dataset) -> None:
        """Create the baseline's state for this dataset; called before the checkpoint is loaded."""
        self.reward_mean.fill_(1.0 / dataset.num_classes)  # the expected reward of guessing
        if self.options.baseline == "learned":
            self.value = nn.Linear(dataset.input_size, 1)
            nn.init.zeros_(self.value.weight)
            nn.init.constant_(self.value.bias, -math.log(dataset.num_classes - 1))

    # -- the bandit step ----------------------------------------------------------

    @torch.no_grad()
    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        """Return b(x) for each example; it never depends on the action."""
        if self.options.baseline == "learned":
            return torch.sigmoid(self.value(x.flatten(1))).squeeze(1)
        if self.options.baseline == "mean":
            return self.reward_mean.expand(len(x))
        return torch.zeros(len(x), device=x.device)

    def policy_target(self, logits: torch.Tensor, y: torch.Tensor, baseline: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a ~ softmax(logits), reward it against y; return the soft target (r - b) onehot(a) and r."""
        action = torch.multinomial(torch.softmax(logits.float(), 1), 1).squeeze(1)
        reward = (action == y).to(logits.dtype)
        target = F.one_hot(action, logits.shape[1]).to(logits.dtype) * (reward - baseline).unsqueeze(1)
        return target, reward

    def step(self, rule, x, y):
        with torch.no_grad():
            target, reward = self.policy_target(rule.predict(x), y, self.baseline(x))
        stats = dict(rule.step(x, target))
        self.update_baseline(x, reward)
        # The action took one forward pass of its own before the rule's step.
        stats["forward_passes"] = stats.get("forward_passes", 1) + 1
        stats["reward"] = reward.mean()
        return stats, target

    def update_baseline(self, x: torch.Tensor, reward: torch.Tensor) -> None:
        rate = self.options.baseline_rate
        if self.options.baseline == "mean":
            total, count = distributed.all_sum([reward.sum().item(), len(reward)])
            self.reward_mean.add_(rate * (total / count - self.reward_mean))
        elif self.options.baseline == "learned":
            self.value.zero_grad()
            with torch.enable_grad():
                loss = F.binary_cross_entropy_with_logits(self.value(x.flatten(1)).squeeze(1), reward)
                loss.backward()
            distributed.average_gradients(self.value.parameters(), float(len(x)))
            with torch.no_grad():
                for p in self.value.parameters():
                    p.sub_(rate * p.grad)

    # -- measurements ---------------------------------------------------------------

    def evaluate(self, rule, dataset, epoch):
        record = super().evaluate(rule, dataset, epoch)
        record["rewards_seen"] = epoch * len(dataset.train)
        return record

    def describe(self, record):
        reward = record.get("rule_stats", {}).get("reward", math.nan)
        return (f"training reward {100 * reward:.1f}%, val error {100 * record['val_error']:.2f}%, "
                f"test error {100 * record['test_error']:.2f}% after {record['rewards_seen']:,} rewards")

    def summarise(self, history):
        out = super().summarise(history)
        out["rewards_seen"] = last(history, "rewards_seen")
        out["train_reward"] = history[-1].get("rule_stats", {}).get("reward", math.nan) if history else math.nan
        return out

    @staticmethod
    def headline(summary):
        return (f"test error {100 * summary['test_error']:.2f}%, validation error {100 * summary['val_error']:.2f}%, "
                f"{summary['rewards_seen']:,} rewards seen")

    # -- comparisons ------------------------------------------------------------------

    @classmethod
    def reference_runs(cls, base):
        import dataclasses

        supervised = dataclasses.replace(base, rule="bp", task="classification", task_options={}, rule_options={})
        return [(SUPERVISED_LABEL, supervised)]

    @staticmethod
    def report_notes():
        return ("Every rule but the supervised reference learns from rewards alone (1 for the right class, else 0), "
                "through REINFORCE's policy-gradient loss; the reference trains bp on the labels of the same images. "
                "Errors are mean ± standard deviation over seeds, at the last epoch, for the greedy policy "
                "(the most probable class). Update angles are measured against the exact gradient of the "
                "policy-gradient loss on the same batch and actions, averaged over the last epoch.")

    @staticmethod
    def report_table(records):
        from ..report import _angles, _mean_std, _pct, finished_runs, group_by_rule

        header = ("| rule | learns from | runs | test error % | val error % | examples seen | training reward % "
                  "| update angle per layer (°) | examples/s | forward-pass equivalents |")
        lines = [header, "|" + "---|" * (header.count("|") - 1)]
        # The supervised reference gets one label per training image, as many as the bandit runs get rewards.
        per_epoch = next((r["rewards_seen"] / r["epochs"] for r in records if r.get("rewards_seen")), math.nan)
        for rule, group in group_by_rule(records).items():
            finished, runs = finished_runs(group)
            supervised = group[0].get("task") == "classification"
            seen = _mean_std([r.get("rewards_seen", r["epochs"] * per_epoch) for r in finished])[0]
            reward = _pct([r.get("train_reward") for r in finished])
            lines.append(
                f"| {rule} | {'labels' if supervised else 'rewards'} | {runs} | {_pct([r['test_error'] for r in finished])} "
                f"| {_pct([r['val_error'] for r in finished])} | {'—' if math.isnan(seen) else f'{seen:,.0f}'} "
                f"| {'—' if supervised else reward} | {_angles(finished, 'update_angle_deg')} "
                f"| {_mean_std([r['examples_per_second'] for r in finished])[0]:,.0f} "
                f"| {_mean_std([r['forward_pass_equivalents_per_update'] for r in finished])[0]:.1f} |")
        return "\n".join(lines)

    @staticmethod
    def report_plots(out, records, histories):
        from .. import report

        names = list(report.group_by_rule(records))
        per_epoch = examples_per_epoch(histories)
        plots = []
        if report.plot_curves(histories, names, "test_error", out / "test_error_vs_rewards.png",
                              ylabel="test error (%)", title="Test error against rewards (labels for the reference) seen",
                              x=lambda h: h.get("rewards_seen", h["epoch"] * per_epoch), xlabel="examples seen",
                              scale=100.0, log_y=True):
            plots.append("test_error_vs_rewards.png")
        if report.plot_angles(histories, names, "update_angle_deg",
                              "Angle between each rule's update and the exact policy gradient", out / "update_angle.png"):
            plots.append("update_angle.png")
        return plots


SUPERVISED_LABEL = "bp (supervised)"


def examples_per_epoch(histories: dict) -> int:
    """Training examples per epoch, read from any bandit history (they all share the dataset); 1 if none."""
    for history in histories.values():
        if history and "rewards_seen" in history[0]:
            return int(history[0]["rewards_seen"] // history[0]["epoch"])
    return 1
