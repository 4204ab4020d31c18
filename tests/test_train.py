import json
import math

import pytest
import torch

from creditlab import io, metrics, rules
from creditlab.errors import CreditlabError, DivergenceError
from creditlab.train import Run, RunConfig, train


def test_run_folder_contents(tmp_path):
    summary = train(RunConfig(rule="fa", epochs=2), tmp_path / "run", progress=False)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"}
    assert summary["epochs"] == 2
    for key in ("test_error", "val_error", "train_loss", "update_angle_deg", "weight_angle_deg",
                "examples_per_second", "forward_pass_equivalents_per_update"):
        assert key in summary
    lines = io.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [1, 2]
    config = io.read_json(tmp_path / "run" / "config.json")
    assert config["config"]["optimizer"] == rules.get("fa").defaults.name
    assert config["environment"]["torch"] == torch.__version__


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch):
    config = RunConfig(rule="weight-mirror", epochs=4)
    reference = train(config, tmp_path / "a", progress=False)

    calls = {"n": 0}
    real_error_rate = metrics.error_rate

    def interrupt_in_third_epoch(rule, split, batch_size=1000):
        calls["n"] += 1
        if calls["n"] == 5:  # two evaluations (val, test) per epoch: the fifth is in epoch 3
            raise KeyboardInterrupt
        return real_error_rate(rule, split, batch_size)

    monkeypatch.setattr(metrics, "error_rate", interrupt_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", progress=False)
    assert len(io.read_jsonl(tmp_path / "b" / "metrics.jsonl")) == 2
    monkeypatch.setattr(metrics, "error_rate", real_error_rate)
    resumed = train(config, tmp_path / "b", progress=False)
    for key in ("test_error", "val_error", "train_loss", "update_angle_deg", "weight_angle_deg"):
        assert resumed[key] == reference[key], key
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["rule"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["rule"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_finished_run_is_not_repeated(tmp_path):
    first = train(RunConfig(epochs=1), tmp_path / "r", progress=False)
    before = (tmp_path / "r" / "checkpoint.pt").stat().st_mtime_ns
    second = train(RunConfig(epochs=1), tmp_path / "r", progress=False)
    assert second == json.loads(json.dumps(first))
    assert (tmp_path / "r" / "checkpoint.pt").stat().st_mtime_ns == before


def test_folder_of_another_run_is_rejected(tmp_path):
    train(RunConfig(epochs=1), tmp_path / "r", progress=False)
    with pytest.raises(CreditlabError, match="contains a different run"):
        train(RunConfig(epochs=1, rule="fa"), tmp_path / "r", progress=False)


def test_checkpoint_of_other_shape_is_rejected(tmp_path):
    train(RunConfig(epochs=1), tmp_path / "small", progress=False)
    train(RunConfig(epochs=2, net="mlp:64-20-10"), tmp_path / "other", progress=False)
    # Put the checkpoint of a different net into an unfinished run's folder.
    (tmp_path / "other" / "summary.json").unlink()
    (tmp_path / "small" / "checkpoint.pt").replace(tmp_path / "other" / "checkpoint.pt")
    with pytest.raises(CreditlabError, match="shape"):
        train(RunConfig(epochs=2, net="mlp:64-20-10"), tmp_path / "other", progress=False)


def test_divergence_names_rule_and_step(tmp_path):
    with pytest.raises(DivergenceError, match=r"rule 'bp' diverged: .* at epoch 1, step \d+"):
        train(RunConfig(lr=1e10, optimizer="sgd", activation="linear", epochs=1), tmp_path / "r", progress=False)


@pytest.mark.parametrize("changes, message", [
    ({"lr": -1.0}, "invalid lr"),
    ({"lr": float("nan")}, "invalid lr"),
    ({"epochs": 0}, "invalid epochs"),
    ({"batch_size": -3}, "invalid batch size"),
    ({"optimizer": "adagrad"}, "unknown optimizer"),
    ({"data": "cifar"}, "unknown dataset"),
    ({"activation": "swish"}, "unknown activation"),
    ({"rule": "ffa"}, "unknown rule"),
    ({"rule_options": {"bogus": 1}}, "unknown option"),
    ({"net": "mlp:784-10"}, "start the spec with 64"),
])
def test_bad_config_raises_before_work(tmp_path, changes, message):
    with pytest.raises(CreditlabError, match=message):
        Run(RunConfig(**changes), tmp_path / "r", progress=False).run()
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_online_mode_uses_online_defaults():
    config = RunConfig(rule="bp", online=True, batch_size=1).resolved()
    assert config.optimizer == "sgd"
    assert config.lr == 0.01
    assert config.momentum == 0.0
    assert RunConfig(rule="bp", online=True, batch_size=1, lr=0.05).resolved().lr == 0.05
    with pytest.raises(CreditlabError, match="online mode trains on one example per update"):
        RunConfig(rule="bp", online=True, batch_size=64).resolved()


def test_config_without_online_key_still_resumes(tmp_path):
    # Run folders written before the online field existed must still be recognised as the same run.
    first = train(RunConfig(epochs=1), tmp_path / "r", progress=False)
    path = tmp_path / "r" / "config.json"
    saved = io.read_json(path)
    del saved["config"]["online"]
    io.write_json(path, saved)
    assert train(RunConfig(epochs=1), tmp_path / "r", progress=False) == json.loads(json.dumps(first))


def test_epoch_angle_skips_warmup_steps(tmp_path):
    # dtp's forward update is zero for 4 warm-up steps, so their angles are NaN. The epoch mean skips them.
    config = RunConfig(rule="dtp", epochs=1, angle_every=1, rule_options={"warmup_steps": 4})
    summary = train(config, tmp_path / "run", progress=False)
    angles = summary["update_angle_deg"]
    assert len(angles) == 3
    assert all(math.isfinite(a) for a in angles), angles
    assert angles[-1] < 1.0  # the output block gets bp's update


def test_summary_early_stopped_test_error():
    from creditlab.tasks.classification import Classification

    history = [
        {"epoch": 1, "val_error": 0.05, "test_error": 0.06},
        {"epoch": 2, "val_error": 0.02, "test_error": 0.03},
        {"epoch": 3, "val_error": 0.02, "test_error": 0.01},
        {"epoch": 4, "val_error": 0.04, "test_error": 0.02},
    ]
    summary = Classification().summarise(history)
    assert summary["test_error"] == 0.02
    assert summary["best_val_error"] == 0.02
    # Ties go to the earlier epoch, as an early-stopping run would have stopped there.
    assert summary["best_val_epoch"] == 2
    assert summary["test_error_at_best_val"] == 0.03


@pytest.mark.parametrize("augment, expected_calls", [(True, 3), (False, 0)])
def test_augment_flag_controls_dataset_augmentation(augment, expected_calls, monkeypatch):
    import dataclasses

    from creditlab import data

    calls = []

    def record_batch(x, generator):
        calls.append(len(x))
        return x

    digits = data.load("digits")
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: dataclasses.replace(digits, augment=record_batch))
    # 1,617 training examples in batches of 600 take 3 steps.
    train(RunConfig(epochs=1, batch_size=600, augment=augment), None, progress=False)
    assert len(calls) == expected_calls
