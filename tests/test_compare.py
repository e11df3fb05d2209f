"""`splitaudit compare A.json B.json`: CI-aware table of what changed."""
import csv
import io

from audit.cli import main
from tests.test_gate import rec, report, write


def test_compare_lists_changes_beyond_the_noise(tmp_path, capsys):
    a = write(tmp_path / "a.json", report([
        rec(0.60, cut="conv1"), rec(0.60, cut="pool1"), rec(0.60, cut="pool2"), rec(0.60, cut="pool3", acc=0.85),
    ]))
    b = write(tmp_path / "b.json", report([
        rec(0.75, cut="conv1"),              # rose 0.15 > 0.042: regressed
        rec(0.62, cut="pool1"),              # within noise
        rec(0.45, cut="pool2"),              # fell: improved
        rec(0.60, cut="fc1"),                # new cell
    ]))
    assert main(["compare", a, b, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    leak = {(r["cut"], r["status"]) for r in rows if "utility" not in r["status"]}
    assert leak == {("conv1", "regressed"), ("pool2", "improved"), ("fc1", "added"), ("pool3", "removed")}
    conv1 = next(r for r in rows if r["cut"] == "conv1" and r["status"] == "regressed")
    assert conv1["A"] == "0.6 [0.57, 0.63]" and conv1["B"] == "0.75 [0.72, 0.78]" and conv1["change"] == "+0.15"
    # utility rows: same accuracy everywhere except removed/added groups
    assert {r["status"] for r in rows if r["cut"] in ("conv1", "pool2") and "utility" in r["status"]} == set()

    assert main(["compare", a, b, "--all"]) == 0
    out = capsys.readouterr().out
    assert "unchanged" in out and "1 regressed, 1 improved, 2 added, 2 removed, 4 unchanged" in out
    assert main(["compare", a, b, "--fail-on-regression"]) == 1
    capsys.readouterr()
    assert main(["compare", a, b, "--tolerance", "0.2", "--fail-on-regression"]) == 0  # 0.15 < 0.042 + 0.2


def test_compare_flags_a_utility_drop_and_renders_markdown(tmp_path, capsys):
    a = write(tmp_path / "a.json", report([rec(0.6, acc=0.90)]))
    b = write(tmp_path / "b.json", report([rec(0.6, acc=0.80)]))
    assert main(["compare", a, b, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| status | dataset |")
    line = next(l for l in out.splitlines() if "primary_accuracy" in l)
    assert "regressed (utility)" in line and "0.9 [0.88, 0.92]" in line and "0.8 [0.78, 0.82]" in line


def test_compare_of_a_report_with_itself_changes_nothing(tmp_path, capsys):
    a = write(tmp_path / "a.json", report([rec(0.6), rec(0.7, cut="pool1")]))
    assert main(["compare", a, a, "--fail-on-regression"]) == 0
    assert "4 unchanged" in capsys.readouterr().out


def test_compare_bad_input(tmp_path, capsys):
    a = write(tmp_path / "a.json", report([rec(0.6)]))
    assert main(["compare", a, str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
