"""The README's "Tabular data" commands run as written (in a scratch folder holding configs/adult_like.yaml)
and find what the Adult-like table plants: sex from relationship, occupation and hours."""
import json
import re
import runpy
import shlex
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def section() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8").split("## Tabular data", 1)[1].split("\n## ", 1)[0]


def run_line(line: str, monkeypatch) -> None:
    """One README shell line: ``python -m MODULE ...`` or ``splitaudit ...``, in this process."""
    argv = shlex.split(line.split("#", 1)[0])
    if argv[:2] == ["python", "-m"]:
        monkeypatch.setattr(sys, "argv", argv[2:])
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        from audit.cli import main

        assert argv[0] == "splitaudit" and main(argv[1:]) == 0, line


def bacc(report, cut, defense, target="sex"):
    (r,) = [r for r in report["results"] if (r["cut_point"], r["defense"], r["target"], r["metric"], r["attack"])
            == (cut, defense, target, "balanced_accuracy", "attribute_linear")]
    return r


def test_readme_tabular_commands_run_as_written(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "adult_like.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    lines = re.search(r"```bash\n(.*?)```", section(), re.S).group(1).strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        run_line(line, monkeypatch)
    report = json.loads((tmp_path / "adult_out" / "report.json").read_text())
    assert len(report["results"]) == 2 * 2 * 2 * 2 * 3 and all(r["status"] == "ok" for r in report["results"])
    none, noise = bacc(report, "fc1", "none"), bacc(report, "fc1", "noise")
    assert none["ci95"][0] > 0.65 and none["chance"] == 0.5, none  # the planted sex
    assert noise["value"] < none["value"], (noise["value"], none["value"])  # noise hides some of it
    assert report["tasks"][0]["classes"]["race"] == ["Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "White"]

    code = re.search(r"```python\n(.*?)```", section(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 8
    namespace = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), namespace)
    assert bacc(namespace["report"], "fc1", "none")["ci95"][0] > 0.65


@pytest.mark.parametrize("name", ["adult_like.yaml"])
def test_the_tabular_config_validates(name):
    from audit.config import load_config

    config = load_config(ROOT / "configs" / name)
    assert config.tasks[0].dataset.params["private"] == ["sex", "race"]
