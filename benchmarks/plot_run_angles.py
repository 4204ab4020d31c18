"""Plot the per-layer update angles of several run folders over their epochs, one panel per layer.

    python benchmarks/plot_run_angles.py OUT.png "dtp, AdamW 0.1=RUN_A" "ddtp=RUN_B" ... [--key update_angle_gn_deg]

Each RUN is a folder written by `creditlab train` or one of `creditlab compare`'s run folders; the
label before `=` names its curves. Runs from different comparisons (other settings, other
optimizers) can share one figure this way.
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from creditlab import io, report  # noqa: E402

TITLES = {
    "update_angle_deg": "Angle between each update and the exact gradient",
    "update_angle_gn_deg": "Angle between each update and the Gauss-Newton update",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="PNG file to write")
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN", help="a label and a run folder that contains metrics.jsonl")
    p.add_argument("--key", default="update_angle_deg", choices=sorted(TITLES),
                   help="per-layer metric to plot, in degrees (default: update_angle_deg)")
    args = p.parse_args(argv)
    histories, labels = {}, []
    for item in args.runs:
        label, sep, folder = item.rpartition("=")
        if not sep or not label:
            p.error(f"invalid run {item!r}: expected LABEL=RUN")
        metrics = Path(folder) / "metrics.jsonl"
        if not metrics.is_file():
            p.error(f"run folder {folder!r} has no metrics.jsonl; give a folder written by creditlab train")
        histories[(label, 0)] = io.read_jsonl(metrics)
        labels.append(label)
    if not report.plot_angles(histories, labels, args.key, TITLES[args.key], Path(args.out)):
        p.error(f"no run recorded {args.key}")
    plt.close("all")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
