import json
import subprocess
import sys

from creditlab import cli, rules


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "creditlab", *args], capture_output=True, text=True, cwd=cwd)


def test_rules_lists_every_rule(capsys):
    assert cli.main(["rules", "-v"]) == 0
    out = capsys.readouterr().out
    for name in rules.names():
        assert name in out
    assert "Lillicrap" in out


def test_unknown_rule_is_one_line_exit_2():
    result = run_cli("train", "--rule", "bpp")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown rule 'bpp'" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_writes_report_and_plots(tmp_path):
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--rules", "bp,fa", "--seeds", "0,1", "--epochs", "2", "--out", str(out),
                     "--no-progress", "-o", "fa.scale=0.5"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["rule"], r["seed"]) for r in summary["runs"]] == [("bp", 0), ("bp", 1), ("fa", 0), ("fa", 1)]
    assert summary["runs"][2]["rule_options"] == {"scale": "0.5"}
    report = (out / "report.md").read_text()
    assert "| bp | 2 |" in report and "| fa | 2 |" in report
    for plot in ("test_error.png", "update_angle.png", "weight_angle.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


def test_compare_records_diverged_run_and_goes_on(tmp_path):
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--rules", "bp,fa", "--epochs", "1", "--optimizer", "sgd", "--lr", "1e10", "--activation", "linear",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["diverged", "diverged"]
    assert "diverged" in (out / "report.md").read_text()


def test_compare_with_two_jobs_keeps_order(tmp_path):
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--rules", "bp,dfa", "--seeds", "0,1", "--epochs", "1", "--jobs", "2",
                     "--out", str(out), "--no-progress"]) == 0
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [(r["rule"], r["seed"], r["status"]) for r in runs] == [
        ("bp", 0, "finished"), ("bp", 1, "finished"), ("dfa", 0, "finished"), ("dfa", 1, "finished")]


def test_report_plots_rules_with_fewer_angle_layers(tmp_path):
    # One rule records weight angles for three layers, another for two: the plot pads the shorter one.
    from creditlab import report

    records = [{"rule": name, "seed": 0, "status": "finished", "dataset": "digits", "net": "mlp:64-8-8-10",
                "activation": "tanh", "epochs": 1, "test_error": 0.1, "val_error": 0.1, "train_loss": 0.3,
                "update_angle_deg": [1.0, 2.0, 3.0], "weight_angle_deg": angles, "examples_per_second": 10.0,
                "forward_pass_equivalents_per_update": 3.0}
               for name, angles in (("fa", [50.0, 60.0, 70.0]), ("microcircuit", [80.0, 85.0]))]
    histories = {(r["rule"], 0): [{"epoch": 1, "test_error": 0.1, "update_angle_deg": r["update_angle_deg"],
                                   "weight_angle_deg": r["weight_angle_deg"]}] for r in records}
    report.write_report(tmp_path, records, histories)
    assert (tmp_path / "weight_angle.png").read_bytes()[:4] == b"\x89PNG"
    assert "| microcircuit | 1 |" in (tmp_path / "report.md").read_text()
