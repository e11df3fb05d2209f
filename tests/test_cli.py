import json

import yaml

from audit.cli import main


def test_run_writes_report_and_csv(tmp_path, tiny_config, capsys):
    tiny_config["cut_points"] = ["fc1"]
    tiny_config["defenses"] = ["none"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--set", "attacks.attribute.epochs=2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["attacks"]["attribute"]["epochs"] == 2
    assert (out / "results.csv").read_text().count("\n") == 1 + len(report["results"])
    err = capsys.readouterr().err
    assert "[1/1] synthetic/small_cnn seed=0 cut=fc1 defense=none attack=attribute: secret balanced_accuracy" in err


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml' does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {name: synthetik}\nmodel: {name: mlp}\ncut_points: [fc1]\ndefenses: [none]\nattacks: [attribute]\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'synthetik'" in err and "known datasets:" in err
    assert not (tmp_path / "o").exists()


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "utkface", "small_cnn", "resnet18", "none", "noise", "attribute"):
        assert f"  {name} " in out
    assert "scale: float = 1.0" in out


def test_version(capsys):
    from importlib.metadata import version

    import pytest

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"splitaudit {version('splitaudit')}"


def test_list_imports_no_plugin_module_on_a_warm_cache(tmp_path):
    """`list` prints from a description cache keyed by the plugin sources; a second call is fast because
    it imports no plugin (nor torch); its output is the same."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SPLITAUDIT_CACHE": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from audit.cli import main; code = main(['list']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr); sys.exit(code)")
    cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert cold.returncode == warm.returncode == 0, cold.stderr + warm.stderr
    assert warm.stdout == cold.stdout and "  small_cnn " in warm.stdout
    assert cold.stderr.strip() == "TORCH" and warm.stderr.strip() == "NO-TORCH"


def test_workers_auto_means_one_worker_per_usable_core(tmp_path, tiny_config, monkeypatch, capsys):
    import pytest

    import audit.executors.base

    monkeypatch.setattr(audit.executors.base, "default_workers", lambda: 2)  # as on a 2-core machine
    tiny_config["defenses"] = ["none"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--workers", "auto", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    executor = report["environment"]["executor"]
    assert (executor["name"], executor["workers"]) == ("local", 2)
    with pytest.raises(SystemExit) as stop:
        main(["run", str(path), "--workers", "two"])
    assert stop.value.code == 2 and "expected a number or 'auto', got 'two'" in capsys.readouterr().err
