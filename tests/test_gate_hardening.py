"""The gate cannot be fooled (issue 18): removed records, partial reports, NaN/inf values and a retuned
defense fail `check` / `compare --fail-on-regression` unless explicitly allowed; `check FOLDER`; policy
keys get a "did you mean"."""
import csv
import io
import xml.etree.ElementTree as ET

from audit.cli import main
from tests.test_gate import failures_in, keeping_records, rec, report, write

TARGETS = ("race", "gender", "age")


def twelve_records():
    return [rec(0.52, cut=cut, target=t) for cut in ("conv1", "pool1", "pool2", "pool3") for t in TARGETS]


def policy(tmp_path, text="rules: [{select: {target: race, metric: balanced_accuracy}, quantity: advantage, max: 0.05}]\n"):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def test_records_removed_since_the_baseline_fail_the_check_unless_allowed(tmp_path, capsys):
    baseline = write(tmp_path / "base.json", report(twelve_records()))
    nine = [r for r in twelve_records() if r["cut_point"] != "pool3"]  # a partial merge: 9 of 12 records
    path = write(tmp_path / "r.json", report(nine))
    junit = tmp_path / "j.xml"
    assert main(["check", path, "--policy", policy(tmp_path), "--baseline", baseline, "--junit", str(junit)]) == 1
    fails = failures_in(capsys.readouterr().out)
    assert len(fails) == 3 and all(f.startswith("FAIL [removed-records]") for f in fails)
    assert any("cut=pool3 defense=siamese attack=attribute target=gender metric=balanced_accuracy: in the baseline, "
               "missing from the report (removed)" in f for f in fails)
    assert {s.get("name"): s.get("failures") for s in ET.parse(junit).getroot()}["removed-records"] == "3"

    assert main(["check", path, "--policy", policy(tmp_path), "--baseline", baseline, "--allow-removed"]) == 0
    captured = capsys.readouterr()
    assert failures_in(captured.out) == [] and captured.err.count("(allowed: --allow-removed)") == 3


def test_a_record_whose_cell_failed_is_reported_as_failed_not_also_as_removed(tmp_path, capsys):
    baseline = write(tmp_path / "base.json", report([rec(0.52), rec(0.52, cut="pool1")]))
    broken = {**rec(0.5, cut="pool1"), "status": "failed", "error": "RuntimeError: boom", "value": None,
              "ci95": None, "target": None, "metric": None}
    path = write(tmp_path / "r.json", report([rec(0.52), broken]))
    assert main(["check", path, "--policy", policy(tmp_path), "--baseline", baseline]) == 1
    fails = failures_in(capsys.readouterr().out)
    assert len(fails) == 1 and fails[0].startswith("FAIL [failed-cells]")


def test_a_partial_report_fails_the_check_unless_allowed(tmp_path, capsys):
    partial = report(keeping_records())
    partial["environment"].update(partial=True, missing_cells=["c1", "c2"], missing_shards=["2/2"], shard=None)
    path = write(tmp_path / "r.json", partial)
    assert main(["check", path, "--policy", policy(tmp_path)]) == 1
    fails = failures_in(capsys.readouterr().out)
    assert fails == ["FAIL [partial-report] the report is partial (merged with --partial): 2 cell(s) missing, "
                     "in shard(s) 2/2 (e.g. c1, c2); pass --allow-partial to accept a partial report"]
    assert main(["check", path, "--policy", policy(tmp_path), "--allow-partial"]) == 0
    assert "the report is partial" in capsys.readouterr().err

    one_shard = report(keeping_records())
    one_shard["environment"]["shard"] = [1, 2]  # one shard's own report.json covers half the grid
    path = write(tmp_path / "shard.json", one_shard)
    assert main(["check", path, "--policy", policy(tmp_path)]) == 1
    assert "covers shard 1/2 of the grid only" in capsys.readouterr().out


def test_nan_and_inf_fail_policy_rules_naming_the_cell(tmp_path, capsys):
    nan_value = rec(0.52)
    nan_value["value"] = float("nan")
    inf_ci = rec(0.52, cut="pool1")
    inf_ci["ci95"] = [0.49, float("inf")]
    path = write(tmp_path / "r.json", report([nan_value, inf_ci, rec(0.52, cut="pool2")]))  # json writes NaN, Infinity
    assert main(["check", path, "--policy", policy(tmp_path, "rules: [{select: {target: race}, max: 0.9}]\n")]) == 1
    fails = failures_in(capsys.readouterr().out)
    conv1 = "utkface/small_cnn seed=0 cut=conv1 defense=siamese attack=attribute target=race metric=balanced_accuracy"
    assert f"FAIL [non-finite] {conv1}: not finite (NaN/inf) at value" in fails
    assert any(f.startswith("FAIL [non-finite]") and "cut=pool1" in f and "ci95.1" in f for f in fails)
    assert any(f.startswith("FAIL [rule1]") and conv1 in f and "not finite" in f for f in fails)
    assert not any("cut=pool2" in f for f in fails)

    # --allow-non-finite: warned about and left out
    assert main(["check", path, "--policy", policy(tmp_path, "rules: [{select: {target: race}, max: 0.9}]\n"),
                 "--allow-non-finite"]) == 0
    assert capsys.readouterr().err.count("(left out: --allow-non-finite)") == 2


def test_nan_fails_a_baseline_comparison_on_either_side(tmp_path, capsys):
    finite = write(tmp_path / "finite.json", report([rec(0.60), rec(0.60, cut="pool1")]))
    with_nan = report([rec(0.60), rec(0.60, cut="pool1")])
    with_nan["results"][0]["value"] = float("nan")
    with_nan = write(tmp_path / "nan.json", with_nan)
    no_rules = policy(tmp_path, "rules: []\n")
    assert main(["check", with_nan, "--policy", no_rules, "--baseline", finite]) == 1
    fails = failures_in(capsys.readouterr().out)
    assert any(f.startswith("FAIL [regression]") and "cut=conv1" in f
               and "the report's value or CI is not finite (NaN/inf)" in f for f in fails)
    # a NaN in the baseline cannot vouch for the report either
    assert main(["check", finite, "--policy", no_rules, "--baseline", with_nan]) == 1
    fails = failures_in(capsys.readouterr().out)
    assert len(fails) == 1 and "the baseline's value or CI is not finite" in fails[0] and "cut=conv1" in fails[0]
    # --allow-non-finite leaves the comparison out, without calling the record removed
    assert main(["check", with_nan, "--policy", no_rules, "--baseline", finite, "--allow-non-finite"]) == 0
    assert "removed" not in capsys.readouterr().out


def test_check_and_compare_take_an_output_folder(tmp_path, capsys):
    folder = tmp_path / "audit_out"
    folder.mkdir()
    write(folder / "report.json", report([rec(0.52)]))
    assert main(["check", str(folder), "--policy", policy(tmp_path), "--baseline", str(folder)]) == 0
    assert main(["compare", str(folder), str(folder), "--fail-on-regression"]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["check", str(empty), "--policy", policy(tmp_path)]) == 2
    assert f"'{empty}' is a folder without a report.json" in capsys.readouterr().err


def test_unknown_policy_keys_suggest_the_known_one(tmp_path, capsys):
    path = policy(tmp_path, "rules: [{select: {metrc: mi}, max: 1}]\nregresion: {tolerance: 0.1}\n")
    good = write(tmp_path / "r.json", report([rec(0.52)]))
    assert main(["check", good, "--policy", path]) == 2
    err = capsys.readouterr().err
    assert "rules.0.select.metrc: unknown key; did you mean 'metric'?" in err
    assert "regresion: unknown key; did you mean 'regression'?" in err


def noise_records(scale, conv1_race):
    """18 measurements of a noise defense: 3 cut points x 3 targets x 2 metrics."""
    out = []
    for cut in ("conv1", "pool1", "pool3"):
        for target in TARGETS:
            for metric in ("balanced_accuracy", "auroc"):
                value = conv1_race if (cut, target, metric) == ("conv1", "race", "balanced_accuracy") else 0.5
                out.append(rec(value, half=0.02, cut=cut, defense="noise", target=target, metric=metric,
                               params={"scale": scale, "distribution": "gaussian"}))
    return out


def test_compare_pairs_a_retuned_defense_and_catches_the_rise(tmp_path, capsys):
    a = write(tmp_path / "a.json", report(noise_records(10.0, 0.499)))
    b = write(tmp_path / "b.json", report(noise_records(3.0, 0.628)))
    assert main(["compare", a, b, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert not [r for r in rows if r["status"] in ("added", "removed")]
    rise = [r for r in rows if r["status"] == "regressed"]
    assert len(rise) == 1 and (rise[0]["cut"], rise[0]["target"], rise[0]["metric"]) == ("conv1", "race", "balanced_accuracy")
    assert rise[0]["A"] == "0.499 [0.479, 0.519]" and rise[0]["B"] == "0.628 [0.608, 0.648]"
    assert rise[0]["defense_params"] == "scale 10.0 -> 3.0"
    assert main(["compare", a, b, "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    assert "1 regressed" in out and "added" not in out.splitlines()[-1]
    assert "18 compared across changed defense parameters" not in out  # utility groups count too
    assert "21 compared across changed defense parameters" in out

    # the gate pairs them the same way: a regression, nothing removed
    assert main(["check", b, "--policy", policy(tmp_path, "rules: []\n"), "--baseline", a]) == 1
    captured = capsys.readouterr()
    assert ("warning: regression: 18 record(s) compared with a baseline whose defense parameters differ "
            "(e.g. noise scale 10.0 -> 3.0)") in captured.err
    fails = failures_in(captured.out)
    assert len(fails) == 1 and fails[0].startswith("FAIL [regression]") and "cut=conv1" in fails[0]
    assert "leakage rose" in fails[0] and "defense parameters changed: scale 10.0 -> 3.0" in fails[0]


def test_pairing_prefers_equal_parameters_and_leaves_ambiguous_ones_unpaired():
    from audit.gate import pair_records

    both = [rec(0.5, defense="noise", params={"scale": s}) for s in (1.0, 4.0)]
    pairs = pair_records(both, list(reversed(both)))
    assert sorted((a["defense_params"]["scale"], b["defense_params"]["scale"]) for a, b in pairs) == [(1.0, 1.0), (4.0, 4.0)]
    # one of two configurations retuned: the unchanged one pairs with itself, the other with its new self
    retuned = [both[0], rec(0.5, defense="noise", params={"scale": 8.0})]
    pairs = pair_records(both, retuned)
    assert sorted((a["defense_params"]["scale"], b["defense_params"]["scale"]) for a, b in pairs) == [(1.0, 1.0), (4.0, 8.0)]
    # two configurations each side and none equal: which is which is unknowable
    other = [rec(0.5, defense="noise", params={"scale": s}) for s in (2.0, 3.0)]
    assert sorted((a is None, b is None) for a, b in pair_records(both, other)) == [(False, True)] * 2 + [(True, False)] * 2


def test_compare_fails_on_a_non_finite_value(tmp_path, capsys):
    a = write(tmp_path / "a.json", report([rec(0.6)]))
    nan = report([rec(0.6)])
    nan["results"][0]["ci95"] = [float("nan"), float("nan")]
    b = write(tmp_path / "b.json", nan)
    assert main(["compare", a, b]) == 0
    assert "non-finite" in capsys.readouterr().out
    assert main(["compare", a, b, "--fail-on-regression"]) == 1
    assert "NaN" in open(b).read()  # the report file really holds NaN
