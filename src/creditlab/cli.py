"""The `creditlab` command: train, compare, autoencoder and rules."""

import argparse
import dataclasses
import logging
import sys

from . import __version__, data, distributed, nets, rules, tasks
from .errors import CreditlabError
from .train import RunInterrupted

log = logging.getLogger("creditlab")


def _split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _split_list(text)]
    except ValueError:
        raise CreditlabError(f"invalid seed list {text!r}: give integers separated by commas, e.g. 0,1,2") from None


def _rule_options(items: list[str], rule_names: list[str] | None) -> dict[str, dict]:
    """Parse --option values: KEY=VALUE for a single rule, or RULE.KEY=VALUE in a comparison."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CreditlabError(f"invalid --option {item!r}: expected KEY=VALUE (train) or RULE.KEY=VALUE (compare)")
        if rule_names is None:
            out.setdefault("", {})[key] = value
            continue
        rule, dot, name = key.partition(".")
        if not dot:
            raise CreditlabError(f"invalid --option {item!r}: in a comparison name the rule, e.g. kp.decay=0.01")
        out.setdefault(rule, {})[name] = value
    return out


def _task_options(items: list[str]) -> dict:
    """Parse --task-option values, KEY=VALUE each."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CreditlabError(f"invalid --task-option {item!r}: expected KEY=VALUE, e.g. baseline=learned")
        out[key] = value
    return out


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors take one line, like the tool's other errors."""

    def error(self, message):
        self.exit(2, f"creditlab: error: {message}; see `{self.prog} --help`\n")


def _add_run_options(p: argparse.ArgumentParser, epochs: int, task: bool = True) -> None:
    """Add the options of a run. With task=False, leave out --task, --task-option and --online.

    Commands that train only minibatch classifiers, such as scaling, pass task=False.
    """
    if task:
        p.add_argument("--task", default="classification",
                       help=f"what the rules learn: {', '.join(tasks.TASKS)} (default: classification); density "
                       "models binarized images without labels, bandit learns classes from a reward of 1 or 0 alone")
        p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                       help="task option, repeatable, e.g. test_samples=1000 (density) or baseline=learned (bandit); "
                       "see docs/rules/wake-sleep.md and docs/tasks/bandit.md")
    else:
        p.set_defaults(task="classification", task_option=[], online=False)
    p.add_argument("--data", default="digits", help=f"dataset: {', '.join(data.DATASETS)} (default: digits)")
    p.add_argument("--net", default=None, help="net spec, e.g. mlp:784-256-256-10, conv:1x28x28-c32k5p-c64k5p-256-10 "
                   "or helmholtz:784-200-200 (default: mlp:64-128-128-10 for digits, mlp:784-256-256-10 for MNIST "
                   "and Fashion-MNIST, conv:3x32x32-c32p-c64p-c128p-c256p-10 for CIFAR-10; for the density task "
                   "helmholtz:64-12-6 and helmholtz:784-200-200)")
    p.add_argument("--activation", default="tanh", help=f"hidden activation: {', '.join(nets.ACTIVATIONS)} (default: tanh); "
                   "Helmholtz machines always have stochastic binary units")
    p.add_argument("--init", default="auto", help="weight init: auto (Glorot for saturating units, He for rectifiers), "
                   "xavier, kaiming or torch (default: auto)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training set (default: {epochs})")
    p.add_argument("--batch-size", type=int, default=None, help="examples per update (default: 64, or 1 with --online)")
    if task:
        p.add_argument("--online", action="store_true",
                       help="online mode: stream one example per update with each rule's online optimizer "
                       "(SGD, no momentum; lr 0.01 unless the rule sets its own, see `creditlab rules -v`) "
                       "(default: off)")
    p.add_argument("--optimizer", default=None, help="adam, adamw or sgd (default: the rule's own, see `creditlab rules`)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of the forward weights (default: the rule's own)")
    p.add_argument("--feedback-lr", type=float, default=None,
                   help="learning rate of feedback or inverse weights (default: the rule's own, else --lr)")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: the rule's own, 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="optimizer weight decay per unit learning rate (default: 0)")
    p.add_argument("--schedule", default="cosine", help="learning-rate schedule over epochs: cosine or constant (default: cosine)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")
    p.add_argument("--data-dir", default=None, help="folder searched first for dataset files "
                   "(default: $CREDITLAB_DATA, then ~/.cache/creditlab/NAME, then /usr/share/datasets/NAME)")
    p.add_argument("--val-size", type=int, default=None,
                   help="training examples held out for validation (default: 5000 for MNIST-like sets, 180 for digits)")
    p.add_argument("--no-augment", action="store_true",
                   help="train without the dataset's augmentation, random crops and flips on CIFAR-10; the other "
                   "datasets have none (default: augment)")
    p.add_argument("--angle-every", type=int, default=20,
                   help="steps between measurements of the update angle against the exact gradient (default: 20)")
    p.add_argument("--checkpoint-interval", type=float, default=300.0,
                   help="seconds between mid-epoch checkpoints; one is also written after every epoch (default: 300)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="rule option, repeatable; in compare prefix the rule: kp.decay=0.01 (see `creditlab rules -v`)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _base_config(args, rule: str = "bp", rule_options: dict | None = None):
    from .train import RunConfig

    batch_size = args.batch_size if args.batch_size is not None else (1 if args.online else 64)
    return RunConfig(rule=rule, data=args.data, net=args.net, activation=args.activation, init=args.init,
                     epochs=args.epochs, batch_size=batch_size, online=args.online, optimizer=args.optimizer, lr=args.lr,
                     feedback_lr=args.feedback_lr, momentum=args.momentum, weight_decay=args.weight_decay,
                     schedule=args.schedule, device=args.device, data_dir=args.data_dir, val_size=args.val_size,
                     angle_every=args.angle_every, augment=not args.no_augment, rule_options=rule_options or {},
                     task=args.task, task_options=_task_options(args.task_option))


def cmd_train(args) -> int:
    from .train import train

    options = _rule_options(args.option, None).get("", {})
    config = dataclasses.replace(_base_config(args, args.rule, options), seed=args.seed)
    out = args.out or f"runs/{args.rule}-{_task_prefix(args.task)}{args.data}-seed{args.seed}"
    if not args.checkpoint_interval > 0:
        raise CreditlabError(f"invalid checkpoint interval {args.checkpoint_interval}: give a positive number of seconds")
    summary = train(config, out, progress=not args.no_progress, checkpoint_interval=args.checkpoint_interval)
    main_process = distributed.is_main()
    distributed.teardown()
    if not main_process:
        return 0
    headline = tasks.get(config.task).headline(summary)
    print(f"{summary['rule']} on {summary['dataset']}: {headline} after {summary['epochs']} epochs; results in {out}")
    return 0


def _task_prefix(task: str) -> str:
    """Return '' for classification, else 'TASK-', for default folder names."""
    return "" if task == "classification" else f"{task}-"


def cmd_compare(args) -> int:
    from .compare import compare

    names = _split_list(args.rules) if args.rules else tasks.rule_names(args.task)
    options = _rule_options(args.option, names)
    out = args.out or f"runs/compare-{_task_prefix(args.task)}{args.data}"
    records = compare(names, _base_config(args), _seeds(args.seeds), out, options, progress=not args.no_progress,
                      checkpoint_interval=args.checkpoint_interval, jobs=args.jobs)
    diverged = sum(r["status"] != "finished" for r in records)
    print(f"{len(records)} runs ({diverged} diverged); report in {out}/report.md")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import sweep

    records = sweep(args.file, address=args.address, out=args.out, cpus_per_trial=args.cpus_per_trial,
                    max_retries=args.max_retries, checkpoint_interval=args.checkpoint_interval,
                    progress=not args.no_progress)
    failed = sum(r["status"] == "failed" for r in records)
    diverged = sum(r["status"] == "diverged" for r in records)
    print(f"{len(records)} trials ({diverged} diverged, {failed} failed)")
    return 1 if failed else 0


def cmd_scaling(args) -> int:
    from . import scaling

    def integers(text, name):
        try:
            values = [int(v) for v in _split_list(text)]
        except ValueError:
            raise CreditlabError(f"invalid {name} {text!r}: give positive integers separated by commas") from None
        if not values or min(values) <= 0:
            raise CreditlabError(f"invalid {name} {text!r}: give positive integers separated by commas")
        return values

    for name in ("repeats", "draws", "base_width"):
        if getattr(args, name) <= 0:
            raise CreditlabError(f"invalid --{name.replace('_', '-')} {getattr(args, name)}: give a positive integer")
    if not (args.budget > 0 and args.budget != float("inf")):
        raise CreditlabError(f"invalid --budget {args.budget}: give a positive number of forward passes, e.g. 640")
    options = _rule_options(args.option, ["wp", "np", "hebbian", "bp", "linear"])
    budget_config = None
    if not args.skip_budget:
        budget_config = dataclasses.replace(_base_config(args), data=args.budget_data,
                                            net=args.budget_net)
    out = args.out or "runs/scaling"
    scaling.run(out, args.data, args.batch_size, args.repeats, integers(args.k_values, "--k-values"),
                integers(args.widths, "--widths"), integers(args.depths, "--depths"), args.draws,
                args.base_width, budget_config, args.budget, args.epochs, options, args.data_dir,
                args.skip_cosine, progress=not args.no_progress)
    print(f"scaling study written to {out}/report.md")
    return 0


def cmd_rules(args) -> int:
    for name in tasks.rule_names(args.task):
        cls = rules.get(name)
        print(f"{name:15s} {cls.description} ({cls.reference}); nets: {', '.join(cls.kinds)}")
        if args.verbose:
            for mode, d in (("default", cls.defaults), ("online", cls.online_defaults)):
                print(f"{'':15s} {mode} optimizer {d.name}, lr {d.lr:g}, momentum {d.momentum:g}"
                      + (f", feedback lr {d.feedback_lr:g}" if d.feedback_lr else ""))
            for f in dataclasses.fields(cls.Options):
                source = f.metadata.get("source")
                print(f"{'':15s} {f.name} = {f.default!r}: {f.metadata.get('help', '')}" + (f" [{source}]" if source else ""))
    return 0


def cmd_autoencoder(args) -> int:
    from .autoencoder import AutoencoderConfig, run

    config = AutoencoderConfig(data=args.data, net=args.net, activation=args.activation, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, noise=args.noise, seed=args.seed,
                               device=args.device, data_dir=args.data_dir, examples=args.examples)
    out = args.out or f"runs/autoencoder-{args.data}"
    summary = run(config, out, progress=not args.no_progress)
    errors = ", ".join(f"{e:.4f}" for e in summary["test_reconstruction_mse"])
    print(f"stacked autoencoder on {args.data}: test reconstruction error per value through 1..N layers: {errors}; "
          f"results in {out}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="creditlab", description="Compare credit-assignment rules on real data.")
    parser.add_argument("--version", action="version", version=f"creditlab {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # name -> subcommand parser, so main() can point at the subcommand's help

    p = sub.add_parser("train", help="train one rule on one dataset and net")
    p.add_argument("--rule", default="bp", help="rule name, see `creditlab rules` (default: bp)")
    p.add_argument("--seed", type=int, default=0, help="random seed of weights, feedback and batch order (default: 0)")
    p.add_argument("--out", default=None, help="run folder; a restart with the same folder resumes "
                   "(default: runs/RULE-DATA-seedSEED, runs/RULE-TASK-DATA-seedSEED for other tasks than classification)")
    _add_run_options(p, epochs=20)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several rules and seeds on one task and write a report")
    p.add_argument("--rules", default=None, help="comma-separated rule names (default: every rule that serves --task)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once in separate processes, which share the CPU threads (default: 1)")
    p.add_argument("--out", default=None, help="output folder for summary.json, report.md, plots and one folder "
                   "per run (default: runs/compare-DATA, runs/compare-TASK-DATA for other tasks than classification)")
    _add_run_options(p, epochs=20)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="run a grid or random search from a TOML file with Ray")
    p.add_argument("file", help="sweep file (TOML) with [base], [grid] and/or [random] tables; see docs/runs.md")
    p.add_argument("--address", default=None, help="Ray cluster to join, e.g. auto or HOST:6379 (default: start a local Ray)")
    p.add_argument("--out", default=None, help="output folder (default: the file's `out`, else runs/sweep-STEM)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs Ray reserves for each trial (default: 1)")
    p.add_argument("--max-retries", type=int, default=3,
                   help="times a trial whose worker dies is restarted; it resumes from its checkpoint (default: 3)")
    p.add_argument("--checkpoint-interval", type=float, default=60.0,
                   help="seconds between mid-epoch checkpoints of each trial (default: 60)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("scaling", help="scaling study of wp and np: cosine with the gradient against K, width and "
                       "depth, and test error at a fixed budget of forward passes")
    p.add_argument("--out", default=None, help="output folder for report.md, scaling.json and plots "
                   "(default: runs/scaling)")
    p.add_argument("--repeats", type=int, default=10, help="independent estimates per point of the cosine sweeps "
                   "(default: 10)")
    p.add_argument("--k-values", default="1,2,4,8,16,32,64,128,256,512",
                   help="numbers of draws K of the K sweep (default: 1,2,4,...,512)")
    p.add_argument("--widths", default="16,32,64,128,256,512",
                   help="hidden widths of the width sweep, two hidden layers (default: 16,32,64,128,256,512)")
    p.add_argument("--depths", default="1,2,3,4,6,8", help="hidden layers of the depth sweep (default: 1,2,3,4,6,8)")
    p.add_argument("--draws", type=int, default=16, help="draws K in the width and depth sweeps (default: 16)")
    p.add_argument("--base-width", type=int, default=64,
                   help="hidden width of the K and depth sweeps, units (default: 64)")
    p.add_argument("--skip-cosine", action="store_true", help="skip the cosine sweeps")
    p.add_argument("--skip-budget", action="store_true", help="skip the training runs at a fixed budget")
    p.add_argument("--budget", type=float, default=640.0, help="forward-pass equivalents per training example that "
                   "each rule may spend; a backward pass counts as two (default: 640)")
    p.add_argument("--budget-data", default="mnist", help="dataset of the budget study (default: mnist)")
    p.add_argument("--budget-net", default="mlp:784-256-10", help="net of the budget study; the linear "
                   "classifier uses its input and output sizes (default: mlp:784-256-10)")
    _add_run_options(p, epochs=20, task=False)
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("autoencoder", help="train a stacked denoising autoencoder layer by layer and save "
                       "reconstructions")
    p.add_argument("--data", default="digits", help=f"dataset: {', '.join(data.DATASETS)} (default: digits)")
    p.add_argument("--net", default="mlp:64-48-32", help="encoder layers as a net spec, every layer a code, e.g. "
                   "mlp:784-512-256 or conv:1x28x28-c16p-c32p-64 (default: mlp:64-48-32)")
    p.add_argument("--activation", default="tanh", help=f"activation of every code: {', '.join(nets.ACTIVATIONS)} "
                   "(default: tanh)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training set per layer (default: 20)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per update (default: 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    p.add_argument("--noise", type=float, default=0.1, help="standard deviation of the Gaussian corruption of each "
                   "layer's input, in units of that input (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="random seed of weights, noise and batch order (default: 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")
    p.add_argument("--data-dir", default=None, help="folder searched first for dataset files (default: "
                   "$CREDITLAB_DATA, then ~/.cache/creditlab/NAME, then /usr/share/datasets/NAME)")
    p.add_argument("--examples", type=int, default=8, help="test images shown in reconstructions.png (default: 8)")
    p.add_argument("--out", default=None, help="output folder for metrics.json and reconstructions.png "
                   "(default: runs/autoencoder-DATA)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_autoencoder)

    p = sub.add_parser("rules", help="list the learning rules")
    p.add_argument("--task", default="classification",
                   help=f"list the rules that serve this task: {', '.join(tasks.TASKS)} (default: classification)")
    p.add_argument("--verbose", "-v", action="store_true", help="also show each rule's defaults and options")
    p.set_defaults(func=cmd_rules)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except RunInterrupted as exc:
        print(f"creditlab: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except CreditlabError as exc:
        print(f"creditlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("creditlab: interrupted; work up to the last checkpoint is saved, run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
