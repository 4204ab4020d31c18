"""Sweep files are validated, expanded as documented, and run on a local Ray that retries killed trials."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from creditlab import io
from creditlab.errors import CreditlabError
from creditlab.compare import run_recording_divergence
from creditlab.sweep import expand, load_sweep, trial_name
from creditlab.train import TIMING_FIELDS


def write(tmp_path, text) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_grid_with_rule_options_expands(tmp_path):
    spec = load_sweep(write(tmp_path, """
[base]
epochs = 2
[grid]
rule = ["bp", "kp"]
seed = [0, 1]
"kp.decay" = [0.001, 0.01]
"""))
    configs = expand(spec)
    assert len(configs) == 2 + 4  # bp: 2 seeds; kp: 2 seeds x 2 decays
    assert sorted(c.rule_options.get("decay", 0) for c in configs if c.rule == "kp") == [0.001, 0.001, 0.01, 0.01]
    assert all(c.epochs == 2 for c in configs)


def test_random_search_draws_within_bounds(tmp_path):
    spec = load_sweep(write(tmp_path, """
[random]
samples = 5
lr = { log_uniform = [1e-4, 1e-2] }
batch_size = { choice = [16, 32] }
"""))
    configs = expand(spec)
    assert len(configs) == 5
    assert all(1e-4 <= c.lr <= 1e-2 and c.batch_size in (16, 32) for c in configs)
    assert configs == expand(spec)  # the draws are reproducible


@pytest.mark.parametrize("text, message", [
    ("[grid]\nrul = ['bp']", "did you mean 'rule'"),
    ("[grid]\nrule = 'bp'", "must be a non-empty list"),
    ("[base]\nepochs = 1", "neither"),
    ("[grid]\n\"kp.decy\" = [1]", "unknown option 'decy' of rule 'kp'"),
    ("[random]\nlr = { uniform = [0, 1] }", "samples"),
    ("[grid\nrule = 1", "not valid TOML"),
    ("outt = 'x'\n[grid]\nrule = ['bp']", "did you mean 'out'"),
    ("[grid]\nrule = ['bp']\nlr = [nan]", "invalid lr"),
    ("[random]\nsamples = 2\nlr = { log_uniform = [1e-2, -1e-4] }", "low <= high"),
    ("[random]\nsamples = 2\nlr = { log_uniform = [0, 1e-2] }", "positive bounds"),
    ("[random]\nsamples = 2\nlr = { uniform = [1e-2] }", r"needs \[low, high\]"),
    ("[random]\nsamples = 2\nbatch_size = { choice = [] }", "non-empty list"),
    ("[grid]\nrule = ['bp', 'fa']\n\"kp.decay\" = [0.1]", "no trial runs rule 'kp'"),
    ("[base]\n\"kp.decay\" = 0.1\n[grid]\nseed = [0, 1]", "no trial runs rule 'kp'"),
])
def test_bad_sweep_files_raise(tmp_path, text, message):
    with pytest.raises(CreditlabError, match=message):
        expand(load_sweep(write(tmp_path, text)))


def ray_trial_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::run_recording_divergence"):
                pids.append(int(entry.name))
    return pids


def test_ray_sweep_retries_killed_trial(tmp_path):
    pytest.importorskip("ray")
    path = write(tmp_path, f"""
out = "{tmp_path / 'out'}"
[base]
rule = "bp"
epochs = 6
batch_size = 4
net = "mlp:64-32-10"
[grid]
rule = ["bp", "fa"]
seed = [0, 1]
""")
    configs = expand(load_sweep(path))
    folders = [tmp_path / "out" / "trials" / trial_name(c) for c in configs]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    process = subprocess.Popen([sys.executable, "-m", "creditlab", "sweep", str(path), "--no-progress",
                                "--checkpoint-interval", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    killed = []
    deadline = time.monotonic() + 300
    while not killed and time.monotonic() < deadline and process.poll() is None:
        running = [f for f in folders if (f / "checkpoint.pt").exists() and not (f / "summary.json").exists()]
        pids = ray_trial_pids()
        if running and pids:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed = running
        time.sleep(0.05)
    assert process.wait(timeout=600) == 0, process.stderr.read()
    assert killed, "no trial was caught in the middle of its run"
    torch.set_num_threads(1)  # Ray runs each one-CPU trial with one thread
    try:
        for config, folder in zip(configs, folders):
            reference = run_recording_divergence(config.to_dict(), str(tmp_path / "reference" / folder.name), 1e9)
            summary = io.read_json(folder / "summary.json")
            assert summary["status"] == "finished"
            for key in reference:
                if key not in TIMING_FIELDS:
                    assert summary[key] == reference[key], (folder.name, key)
    finally:
        torch.set_num_threads(2)
    records = io.read_json(tmp_path / "out" / "summary.json")["runs"]
    assert len(records) == 4
    assert (tmp_path / "out" / "report.md").exists()
    # A second start finds every trial finished and runs none again.
    before = {f: (f / "summary.json").stat().st_mtime_ns for f in folders}
    again = subprocess.run([sys.executable, "-m", "creditlab", "sweep", str(path), "--no-progress"],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert before == {f: (f / "summary.json").stat().st_mtime_ns for f in folders}
