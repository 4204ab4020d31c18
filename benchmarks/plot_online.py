"""Draw the online learning curves of several results.json files (from online_mnist.py) in one figure.

    python benchmarks/plot_online.py OUT.png RUN_A/results.json RUN_B/results.json ...
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from creditlab import io  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="PNG file to write")
    p.add_argument("results", nargs="+", help="results.json files written by online_mnist.py")
    args = p.parse_args(argv)
    figure, ax = plt.subplots(figsize=(6.5, 4))
    for path in args.results:
        results = io.read_json(Path(path))
        curve = results["curve"]
        label = f"{results['rule']} ({results['net']}, lr {results['config']['lr']:g})"
        ax.plot([c["presentations"] for c in curve], [100 * c["test_error"] for c in curve], marker="o", ms=3,
                label=label)
    ax.set_xlabel("training examples presented, one update each")
    ax.set_ylabel("MNIST test error (%)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Online learning on MNIST")
    figure.tight_layout()
    io.save_figure(Path(args.out), figure)
    plt.close(figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
