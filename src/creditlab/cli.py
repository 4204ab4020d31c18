"""The `creditlab` command: train, compare, autoencoder and rules."""

import argparse
import dataclasses
import logging
import sys

from . import __version__, data, nets, rules
from .errors import CreditlabError

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


def _add_run_options(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument("--data", default="digits", help=f"dataset: {', '.join(data.DATASETS)} (default: digits)")
    p.add_argument("--net", default=None, help="net spec, e.g. mlp:784-256-256-10 or conv:1x28x28-c32k5p-c64k5p-256-10 "
                   "(default: mlp:64-128-128-10 for digits, mlp:784-256-256-10 for MNIST and Fashion-MNIST, "
                   "conv:3x32x32-c32p-c64p-c128p-c256p-10 for CIFAR-10)")
    p.add_argument("--activation", default="tanh", help=f"hidden activation: {', '.join(nets.ACTIVATIONS)} (default: tanh)")
    p.add_argument("--init", default="auto", help="weight init: auto (Glorot for saturating units, He for rectifiers), "
                   "xavier, kaiming or torch (default: auto)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training set (default: {epochs})")
    p.add_argument("--batch-size", type=int, default=64, help="examples per update (default: 64)")
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
    p.add_argument("--angle-every", type=int, default=20,
                   help="steps between measurements of the update angle against the exact gradient (default: 20)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="rule option, repeatable; in compare prefix the rule: kp.decay=0.01 (see `creditlab rules -v`)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _base_config(args, rule: str = "bp", rule_options: dict | None = None):
    from .train import RunConfig

    return RunConfig(rule=rule, data=args.data, net=args.net, activation=args.activation, init=args.init,
                     epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                     feedback_lr=args.feedback_lr, momentum=args.momentum, weight_decay=args.weight_decay,
                     schedule=args.schedule, device=args.device, data_dir=args.data_dir, val_size=args.val_size,
                     angle_every=args.angle_every, rule_options=rule_options or {})


def cmd_train(args) -> int:
    from .train import train

    options = _rule_options(args.option, None).get("", {})
    config = dataclasses.replace(_base_config(args, args.rule, options), seed=args.seed)
    out = args.out or f"runs/{args.rule}-{args.data}-seed{args.seed}"
    summary = train(config, out, progress=not args.no_progress)
    print(f"{summary['rule']} on {summary['dataset']}: test error {100 * summary['test_error']:.2f}%, "
          f"validation error {100 * summary['val_error']:.2f}% after {summary['epochs']} epochs; results in {out}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare

    names = _split_list(args.rules) if args.rules else rules.names()
    options = _rule_options(args.option, names)
    out = args.out or f"runs/compare-{args.data}"
    records = compare(names, _base_config(args), _seeds(args.seeds), out, options, progress=not args.no_progress)
    diverged = sum(r["status"] != "finished" for r in records)
    print(f"{len(records)} runs ({diverged} diverged); report in {out}/report.md")
    return 0


def cmd_rules(args) -> int:
    for name in rules.names(args.task):
        cls = rules.get(name)
        print(f"{name:15s} {cls.description} ({cls.reference}); nets: {', '.join(cls.kinds)}")
        if args.verbose:
            d = cls.defaults
            print(f"{'':15s} default optimizer {d.name}, lr {d.lr:g}" + (f", feedback lr {d.feedback_lr:g}" if d.feedback_lr else ""))
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
    parser = argparse.ArgumentParser(prog="creditlab", description="Compare credit-assignment rules on real data.")
    parser.add_argument("--version", action="version", version=f"creditlab {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one rule on one dataset and net")
    p.add_argument("--rule", default="bp", help="rule name, see `creditlab rules` (default: bp)")
    p.add_argument("--seed", type=int, default=0, help="random seed of weights, feedback and batch order (default: 0)")
    p.add_argument("--out", default=None, help="run folder; a restart with the same folder resumes "
                   "(default: runs/RULE-DATA-seedSEED)")
    _add_run_options(p, epochs=20)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several rules and seeds on one task and write a report")
    p.add_argument("--rules", default=None, help="comma-separated rule names (default: every classification rule)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--out", default=None, help="output folder for summary.json, report.md, plots and one folder "
                   "per run (default: runs/compare-DATA)")
    _add_run_options(p, epochs=20)
    p.set_defaults(func=cmd_compare)

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
    p.add_argument("--task", default="classification", help="list the rules of this task (default: classification)")
    p.add_argument("--verbose", "-v", action="store_true", help="also show each rule's defaults and options")
    p.set_defaults(func=cmd_rules)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except CreditlabError as exc:
        print(f"creditlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("creditlab: interrupted; finished epochs are saved, run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
