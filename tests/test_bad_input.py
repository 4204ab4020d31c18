"""A table of bad inputs: each gets a one-line error and exit status 2, and earlier results stay intact."""

import gzip
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from creditlab import cli

DIGITS_CASES = [
    (["train", "--rule", "bpp"], "unknown rule 'bpp'; did you mean 'bp'"),
    (["train", "--rule", "fa", "-o", "scal=2"], "did you mean 'scale'"),
    (["train", "--rule", "fa", "-o", "scale=big"], "invalid value 'big' for option 'scale'"),
    (["train", "--rule", "fa", "-o", "scale"], "invalid --option 'scale'"),
    (["train", "--rule", "sign-symmetry", "-o", "scale=huge"], "choose one of mean-abs, none"),
    (["train", "--lr", "-1"], "invalid lr -1.0"),
    (["train", "--lr", "nan"], "invalid lr nan"),
    (["train", "--lr", "inf"], "invalid lr inf"),
    (["train", "--lr", "0"], "invalid lr 0.0"),
    (["train", "--feedback-lr", "-2"], "invalid feedback lr"),
    (["train", "--epochs", "0"], "invalid epochs 0"),
    (["train", "--epochs", "-5"], "invalid epochs -5"),
    (["train", "--batch-size", "0"], "invalid batch size 0"),
    (["train", "--online", "--batch-size", "8"], "online mode trains on one example per update, but batch size is 8"),
    (["train", "--angle-every", "0"], "invalid angle every 0"),
    (["train", "--net", "mlp:784-256-10"], "start the spec with 64"),
    (["train", "--net", "mlp:64-256-7"], "end the spec with 10"),
    (["train", "--net", "mlp:64-0-10"], "invalid size '0'"),
    (["train", "--net", "cnn:1-2"], "unknown net kind 'cnn'"),
    (["train", "--net", "conv:1x28x28-c8p-10"], "start the spec with conv:1x8x8"),
    (["train", "--net", "conv:1x8x8-c4p-c4p-c4p-c4p-10"], "pools the"),
    (["train", "--data", "cifar100"], "unknown dataset 'cifar100'"),
    (["train", "--activation", "swish"], "unknown activation 'swish'"),
    (["train", "--optimizer", "adagrad"], "unknown optimizer 'adagrad'"),
    (["train", "--schedule", "step"], "unknown schedule 'step'"),
    (["train", "--momentum", "1.5"], "invalid momentum 1.5"),
    (["train", "--weight-decay", "-1"], "invalid weight decay"),
    (["train", "--rule", "kp", "-o", "decay=-1"], "invalid decay -1.0 for rule 'kp'"),
    (["train", "--val-size", "-5"], "invalid validation size -5"),
    (["train", "--val-size", "99999"], "invalid validation size 99999"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "--checkpoint-interval", "0"], "invalid checkpoint interval"),
    (["compare", "--seeds", "a,b"], "invalid seed list 'a,b'"),
    (["compare", "--rules", "bp,nope"], "unknown rule 'nope'"),
    (["compare", "--rules", "bp", "-o", "kp.decay=1"], "options given for rule 'kp'"),
    (["compare", "--rules", "bp", "-o", "decay=1"], "name the rule"),
    (["compare", "--rules", "bp", "--lr", "nan"], "invalid lr nan"),
    (["compare", "--rules", "bp", "--jobs", "0"], "invalid jobs 0"),
    (["sweep", "does-not-exist.toml"], "not found"),
    (["train", "--task", "densty"], "unknown task 'densty'; did you mean 'density'"),
    (["train", "--task", "density"], "rule 'bp' does not serve the density task"),
    (["train", "--task", "bandit", "--rule", "wake-sleep"], "rule 'wake-sleep' does not serve the bandit task"),
    (["train", "--task", "density", "--rule", "rws", "--net", "mlp:64-10"], "does not support mlp nets"),
    (["train", "--task", "density", "--rule", "rws", "--net", "helmholtz:784-200"], "start the spec with helmholtz:64"),
    (["train", "--task", "density", "--rule", "rws", "-o", "samples=0"], "invalid samples 0 for rule 'rws'"),
    (["train", "--task", "density", "--rule", "rws", "--task-option", "test_samples=0"],
     "invalid value 0 for option 'test_samples' of task 'density'"),
    (["train", "--task", "bandit", "--task-option", "baseline=best"], "choose one of mean, learned, none"),
    (["train", "--task", "bandit", "--task-option", "basline=mean"], "did you mean 'baseline'"),
    (["train", "--task", "bandit", "--task-option", "baseline_rate=2"], "invalid value 2.0 for option 'baseline_rate'"),
    (["train", "--task-option", "baseline"], "invalid --task-option 'baseline'"),
    (["compare", "--task", "density", "--rules", "rws,bp"], "rule 'bp' does not serve the density task"),
]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("earlier") / "run"
    assert cli.main(["train", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    return out


def check_error(args, message, capsys):
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("creditlab: error: ")
    assert "\n" not in err
    assert message in err, err


@pytest.mark.parametrize("args, message", DIGITS_CASES, ids=[" ".join(a) for a, _ in DIGITS_CASES])
def test_bad_option(args, message, finished_run, capsys):
    before = snapshot(finished_run)
    check_error(args + ["--out", str(finished_run), "--no-progress"] if args[0] != "sweep" else args, message, capsys)
    assert snapshot(finished_run) == before


def idx(array, magic_ndim=None):
    array = np.asarray(array, dtype=np.uint8)
    ndim = magic_ndim or array.ndim
    return struct.pack(">I", 0x0800 | ndim) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def mnist_folder(tmp_path, damage: str):
    folder = tmp_path / "mnist-copy"
    folder.mkdir()
    files = {
        "train-images-idx3-ubyte": idx(np.zeros((60000, 28, 28))),
        "train-labels-idx1-ubyte": idx(np.zeros(60000)),
        "t10k-images-idx3-ubyte": idx(np.zeros((10000, 28, 28))),
        "t10k-labels-idx1-ubyte": idx(np.zeros(10000)),
    }
    if damage == "count":
        files["t10k-labels-idx1-ubyte"] = idx(np.zeros(9999))
    elif damage == "magic":
        files["train-images-idx3-ubyte"] = b"\x00\x00\x0d\x03" + files["train-images-idx3-ubyte"][4:]
    elif damage == "truncated":
        files["train-images-idx3-ubyte"] = files["train-images-idx3-ubyte"][:-1000]
    elif damage == "gzip":
        files["train-labels-idx1-ubyte.gz"] = gzip.compress(files.pop("train-labels-idx1-ubyte"))[:-30]
    elif damage == "checksum":
        pass  # zero images are well formed but are not the official files
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    return folder


@pytest.mark.parametrize("damage, message", [
    ("count", "has 9999 items, expected 10000"),
    ("magic", "magic number 0x00000d03"),
    ("truncated", "truncated or padded"),
    ("gzip", "corrupt or truncated gzip"),
    ("checksum", "fails its checksum"),
])
def test_corrupt_dataset_files(tmp_path, damage, message, finished_run, capsys):
    folder = mnist_folder(tmp_path, damage)
    before = snapshot(finished_run)
    check_error(["train", "--data", "mnist", "--net", "mlp:784-10", "--data-dir", str(folder),
                 "--out", str(tmp_path / "new"), "--no-progress"], message, capsys)
    assert snapshot(finished_run) == before


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


def test_malicious_checkpoint_is_refused(tmp_path, finished_run, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    (out / "summary.json").unlink()
    Exploit.marker = tmp_path / "pwned"
    (out / "checkpoint.pt").write_bytes(pickle.dumps(Exploit()))
    check_error(["train", "--epochs", "2", "--out", str(out), "--no-progress"], "cannot load checkpoint", capsys)
    assert not Exploit.marker.exists()


def test_checkpoint_of_other_net_is_refused(tmp_path, finished_run, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--net", "mlp:64-20-10", "--out", str(out), "--no-progress"]) == 0
    (out / "summary.json").unlink()
    (out / "checkpoint.pt").write_bytes((finished_run / "checkpoint.pt").read_bytes())
    check_error(["train", "--epochs", "2", "--net", "mlp:64-20-10", "--out", str(out), "--no-progress"],
                "has tensor 'net.blocks.0.layer.weight' of shape (128, 64), expected (20, 64)", capsys)


def test_folder_of_other_run_is_refused(finished_run, capsys):
    before = snapshot(finished_run)
    check_error(["train", "--rule", "fa", "--epochs", "1", "--out", str(finished_run), "--no-progress"],
                "contains a different run (rule='bp', not 'fa')", capsys)
    assert snapshot(finished_run) == before


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    check_error(["train", "--out", str(blocker / "run"), "--no-progress"], "cannot write to output folder", capsys)


def test_command_line_exit_status_is_2():
    result = subprocess.run([sys.executable, "-m", "creditlab", "train", "--lr", "nan"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "creditlab: error: invalid lr nan: give a positive finite number, e.g. 1e-3"


@pytest.mark.parametrize("args,message", [
    (["--rules", ","], "no rules to compare"),
    (["--rules", "bp,bp"], "rule bp is listed twice"),
    (["--rules", "bp", "--seeds", "1,1"], "seed 1 is listed twice"),
])
def test_compare_rejects_empty_or_repeated_lists(args, message, tmp_path, capsys):
    out = tmp_path / "cmp"
    check_error(["compare", *args, "--epochs", "1", "--out", str(out), "--no-progress"], message, capsys)
    assert not (out / "report.md").exists()


def test_autoencoder_rejects_file_as_out_before_training(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    check_error(["autoencoder", "--epochs", "1", "--out", str(target), "--no-progress"],
                "cannot write to output folder", capsys)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("rule, option, message", [
    ("ep", "dt=2", "invalid dt 2.0 for rule 'ep'"),
    ("ep", "beta=0", "invalid beta 0.0 for rule 'ep'"),
    ("pc", "inference_steps=0", "invalid inference_steps 0 for rule 'pc'"),
    ("ddtp", "damping=-1", "invalid damping -1.0 for rule 'ddtp'"),
    ("dtp", "noise=0", "invalid noise 0.0 for rule 'dtp'"),
    ("np", "perturbations=0", "invalid perturbations 0 for rule 'np'"),
    ("hebbian", "rank=1", "invalid rank 1 for rule 'hebbian'"),
    ("microcircuit", "dt=0", "invalid dt 0.0 for rule 'microcircuit'"),
])
def test_rule_option_rejected_before_run_folder(rule, option, message, tmp_path, capsys):
    out = tmp_path / "run"
    check_error(["train", "--rule", rule, "-o", option, "--epochs", "1", "--out", str(out), "--no-progress"],
                message, capsys)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'; see `creditlab train --help`"),
    (["scaling", "--task", "density"], "unrecognized arguments: --task density; see `creditlab scaling --help`"),
    (["scaling", "--online"], "unrecognized arguments: --online"),
    (["compare", "--bogus"], "unrecognized arguments: --bogus; see `creditlab compare --help`"),
])
def test_argument_errors_take_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "creditlab", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("creditlab: error: "), result.stderr
    assert message in result.stderr, result.stderr
