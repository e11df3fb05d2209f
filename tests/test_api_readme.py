"""The README's Python API example runs as written, in under 15 lines, and finds what it plants."""
import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_is_short():
    assert len(readme_api_example().strip().splitlines()) < 15


def test_readme_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_api_example(), "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.strip().splitlines()
    report = json.loads((tmp_path / "audit_api_out" / "report.json").read_text())
    assert len(printed) == len(report["results"]) == 2 * 2 * 3  # cut points x defenses x metrics
    assert all(r["status"] == "ok" and r["model"] == "ResNet" for r in report["results"])
    found = [r for r in report["results"] if r["defense"] == "none" and r["metric"] == "balanced_accuracy"]
    assert min(r["ci95"][0] for r in found) > 1 / 3  # the planted race is found above chance at both cuts
