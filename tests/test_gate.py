"""The CI gate (`splitaudit check`): bounds, baselines, JUnit, bad input; against the example policy."""
import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from audit.cli import main
from audit.gate import Policy, change_of, classify, evaluate, leakage, orientation

EXAMPLE_POLICY = Path(__file__).resolve().parents[1] / "configs" / "policy.example.yaml"


def rec(value, half=0.03, chance=0.5, *, cut="conv1", defense="siamese", params=None, attack="attribute",
        target="race", metric="balanced_accuracy", dataset="utkface", seed=0, acc=0.85, advantage=None, extra=None):
    return {
        "dataset": dataset, "model": "small_cnn", "cut_point": cut, "defense": defense,
        "defense_params": params if params is not None else {"margin": 1.0},
        "utility": {"primary_accuracy": acc, "primary_accuracy_ci95": [acc - 0.02, acc + 0.02], "n_eval": 500},
        "cost": {"edge_flops": 1e6, "edge_flops_fraction": 0.1, "bytes_sent": 4096.0},
        "attack": attack, "attack_params": {}, "target": target, "metric": metric, "value": value,
        "ci95": [value - half, value + half], "chance": chance,
        "advantage": advantage if advantage is not None else (None if chance is None else value - chance),
        "seed": seed, "n_eval": 500, "status": "ok", "error": None, "extra": extra or {},
        "cell_id": f"{dataset}-{cut}-{defense}-{json.dumps(params)}-{attack}-{seed}",
    }


def report(records):
    return {"schema_version": 1, "config": {"name": "t"}, "environment": {"seeds": [0]}, "tasks": [], "results": records}


def keeping_records():
    """Satisfies every rule of the example policy (each rule matches at least one record)."""
    out = []
    for cut in ("conv1", "pool1", "pool2", "pool3"):
        out.append(rec(0.23, cut=cut))  # race advantage 0.03 <= 0.05
        out.append(rec(0.05, half=0.02, chance=None, cut=cut, attack="mi_ksg", metric="mi", extra={"unit": "nats"}))
        out.append(rec(13.9, half=0.4, chance=13.8, cut=cut, attack="inversion", target="input", metric="psnr"))
        out.append(rec(24.0, half=0.4, chance=13.8, cut=cut, defense="none", params={}, attack="inversion",
                       target="input", metric="psnr"))  # undefended: not bounded by the policy
    for cut in ("conv1", "fc1"):
        out.append(rec(0.52, half=0.04, cut=cut, dataset="synthetic", defense="noise",
                       params={"scale": 2.0, "distribution": "gaussian"}, target="secret", acc=0.9))
    return out


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def failures_in(stdout):
    return [line for line in stdout.splitlines() if line.startswith("FAIL ")]


def test_example_policy_passes_a_keeping_report_and_fails_a_breaking_one(tmp_path, capsys):
    good = write(tmp_path / "good.json", report(keeping_records()))
    assert main(["check", good, "--policy", str(EXAMPLE_POLICY), "--strict"]) == 0
    assert failures_in(capsys.readouterr().out) == []

    records = keeping_records()
    records[4] = rec(0.61, cut="pool1")  # pool1 race: advantage 0.11 > 0.05
    records[5] = rec(0.4, half=0.05, chance=None, cut="pool1", attack="mi_ksg", metric="mi")  # MI 0.4 nats > 0.1
    records[-1] = rec(0.52, half=0.04, cut="fc1", dataset="synthetic", defense="noise",  # utility 0.7 < 0.8
                      params={"scale": 2.0, "distribution": "gaussian"}, target="secret", acc=0.7)
    bad = write(tmp_path / "bad.json", report(records))
    junit = tmp_path / "junit.xml"
    assert main(["check", bad, "--policy", str(EXAMPLE_POLICY), "--junit", str(junit)]) == 1
    fails = failures_in(capsys.readouterr().out)
    assert len(fails) == 3
    race = next(f for f in fails if "siamese-hides-race" in f)
    # names the cell, the measured value with its CI, and the bound
    assert "utkface/small_cnn seed=0 cut=pool1 defense=siamese attack=attribute target=race metric=balanced_accuracy" in race
    assert "advantage 0.11 [0.08, 0.14]" in race and "> max 0.05" in race
    assert any("mi-bound" in f and "value 0.4 [0.35, 0.45] nats > max 0.1" in f for f in fails)
    assert any("default-noise-keeps-utility" in f and "cut=fc1" in f and "primary_accuracy 0.7 [0.68, 0.72] < min 0.8" in f
               for f in fails)

    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    failed_cases = [c for c in cases if c.find("failure") is not None]
    assert int(root.get("failures")) == len(failed_cases) == len(fails)
    # one test case per rule x cell: 4 race records, 4 MI, 4 defended PSNR, 1 fc1 secret, 2 utility groups
    per_suite = {s.get("name"): len(s.findall("testcase")) for s in root.findall("testsuite")}
    assert per_suite == {"siamese-hides-race": 4, "mi-bound": 4, "reconstruction-bound": 4,
                         "default-strong-noise-hides-secret": 1, "default-noise-keeps-utility": 2}
    assert {c.find("failure").get("message") for c in failed_cases} == {f.split("] ", 1)[1] for f in fails}


def test_a_baseline_equal_to_the_report_never_fails(tmp_path, capsys):
    records = keeping_records() + [rec(0.9, half=0.0, cut="pool1", defense="none", params={})]  # zero-width CI
    records[0]["ci95"] = [None, None]  # a CI that could not be computed
    path = write(tmp_path / "r.json", report(records))
    policy = tmp_path / "p.yaml"
    policy.write_text("rules: []\n")
    junit = tmp_path / "j.xml"
    assert main(["check", path, "--policy", str(policy), "--baseline", path, "--junit", str(junit)]) == 0
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and len(root.findall(".//testcase")) == len(records)


def test_regression_needs_a_rise_beyond_the_combined_ci_plus_tolerance():
    old = rec(0.60, half=0.03)
    # combined half-width sqrt(0.03^2 + 0.03^2) = 0.0424
    assert change_of(old, rec(0.70, half=0.03), 0.0).status == "regressed"
    assert change_of(old, rec(0.63, half=0.03), 0.0).status == "unchanged"
    assert change_of(old, rec(0.70, half=0.03), 0.06).status == "unchanged"  # 0.1 < 0.0424 + 0.06
    assert change_of(old, rec(0.50, half=0.03), 0.0).status == "improved"
    status, rise, margin = classify((0.6, 0.57, 0.63), (0.7, 0.67, 0.73), 0.01)
    assert rise == pytest.approx(0.1) and margin == pytest.approx(0.0424264 + 0.01, abs=1e-6)
    # a rank where lower means more leakage: falling from 0.3 to 0.1 is a regression
    rank = lambda v: rec(v, half=0.02, chance=0.5, attack="reidentify", target="identity", metric="normalized_rank",
                         advantage=0.5 - v)
    assert orientation(rank(0.1)) == -1 and leakage(rank(0.1)) == pytest.approx((-0.1, -0.12, -0.08))
    assert change_of(rank(0.3), rank(0.1), 0.0).status == "regressed"
    assert change_of(rank(0.1), rank(0.3), 0.0).status == "improved"


def test_baseline_regression_is_reported_with_both_values(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text("regression: {tolerance: 0.01}\n")
    old = write(tmp_path / "old.json", report([rec(0.60), rec(0.60, cut="pool1")]))
    new = write(tmp_path / "new.json", report([rec(0.75), rec(0.62, cut="pool1")]))
    assert main(["check", new, "--policy", str(policy), "--baseline", old]) == 1
    fails = failures_in(capsys.readouterr().out)
    assert len(fails) == 1 and "cut=conv1" in fails[0]
    assert "0.6 [0.57, 0.63] -> 0.75 [0.72, 0.78]" in fails[0] and "leakage rose" in fails[0]
    assert "Holm over 2 changes" in fails[0]


def test_a_baseline_whose_attacks_ran_with_other_seeds_is_warned_about(tmp_path, capsys):
    """Another task model gives the attacks other seeds: the CIs then understate the change's noise."""
    seeded = lambda value, seed, cut: {**rec(value, cut=cut), "stage_seeds": {"defense": 7, "attack": seed}}
    old = [seeded(0.60, 1, "conv1"), seeded(0.60, 2, "pool1")]
    policy = Policy.model_validate({})
    same = evaluate(report([seeded(0.61, 1, "conv1"), seeded(0.60, 2, "pool1")]), policy, report(old))
    assert not [w for w in same.warnings if "other seeds" in w]
    other = evaluate(report([seeded(0.61, 5, "conv1"), seeded(0.60, 2, "pool1")]), policy, report(old))
    assert [w for w in other.warnings if "1 compared record(s) ran their attack with other seeds" in w]
    write(tmp_path / "a.json", report(old))
    write(tmp_path / "b.json", report([seeded(0.61, 5, "conv1"), seeded(0.60, 2, "pool1")]))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "1 measurement(s) ran their attack with other seeds" in capsys.readouterr().out


def test_a_baseline_of_many_records_does_not_fail_by_chance_and_still_finds_a_real_rise():
    """Known truth, simulated: 200 records whose leakage did not change (old and new independent draws,
    standard error 0.015, 95% CIs +-1.96 SE). Each record alone is called regressed 2.5% of the time, so
    nearly every comparison of the whole report would fail; Holm over the records fails at most
    alpha (5%) of them. A real rise of 12 SE in one record is still found every time. (The price: among
    200 records a rise is called beyond ~5.2 SE, z > 3.66 on the difference, against 2.8 SE alone.)"""
    import random

    from audit.gate import Regression, compare_records

    rng, se, m, trials = random.Random(0), 0.015, 200, 300
    draw = lambda true: round(rng.gauss(true, se), 6)

    def fails(regression, planted=0.0):
        old = [rec(draw(0.6), half=1.96 * se, cut=f"c{i}") for i in range(m)]
        new = [rec(draw(0.6 + (planted if i == 0 else 0.0)), half=1.96 * se, cut=f"c{i}") for i in range(m)]
        changes = compare_records(old, new, regression)
        return any(c.status == "regressed" for c in changes), changes[0].status == "regressed"

    holm, none = Regression(), Regression(correction="none")
    assert holm.correction == "holm" and holm.alpha == 0.05  # the default
    false_alarms = sum(fails(holm)[0] for _ in range(trials)) / trials
    uncorrected = sum(fails(none)[0] for _ in range(trials)) / trials
    assert false_alarms <= 0.05, false_alarms
    assert uncorrected >= 0.95, uncorrected  # 1 - 0.975^200 = 0.994
    assert all(fails(holm, planted=12 * se)[1] for _ in range(100))


def test_failed_cells_fail_the_check_unless_allowed(tmp_path, capsys):
    broken = {**rec(0.5), "status": "failed", "error": "RuntimeError: boom\ntraceback", "value": None,
              "ci95": None, "target": None, "metric": None}
    path = write(tmp_path / "r.json", report([rec(0.52), broken]))
    policy = tmp_path / "p.yaml"
    policy.write_text("rules: [{select: {target: race}, quantity: advantage, max: 0.05}]\n")
    assert main(["check", path, "--policy", str(policy)]) == 1
    fails = failures_in(capsys.readouterr().out)
    assert len(fails) == 1 and "[failed-cells]" in fails[0] and "cell failed: RuntimeError: boom" in fails[0]
    policy.write_text("rules: [{select: {target: race}, quantity: advantage, max: 0.05}]\nallow_failed_cells: true\n")
    assert main(["check", path, "--policy", str(policy)]) == 0


def test_selectors_wildcards_params_and_ci_ends():
    records = [rec(0.55, defense="noise", params={"scale": s}, cut=c) for s in (1.0, 4.0) for c in ("conv1", "pool1")]
    policy = Policy.model_validate({"rules": [
        {"name": "a", "select": {"defense": "no*", "defense_params": {"scale": 4.0}}, "quantity": "advantage", "max": 0.06},
        {"name": "b", "select": {"cut_point": ["pool*"]}, "quantity": "advantage", "use": "ci_high", "max": 0.06},
        {"name": "c", "select": {"metric": "balanced_accuracy"}, "quantity": "cost.bytes_sent", "max": 1000},
    ]})
    result = evaluate(report(records), policy)
    by_rule = {}
    for o in result.outcomes:
        by_rule.setdefault(o.suite, []).append(o.passed)
    assert by_rule["a"] == [True, True]  # 0.05 <= 0.06 at both cuts of scale 4
    assert by_rule["b"] == [False, False]  # CI upper end 0.08 > 0.06
    assert by_rule["c"] == [False] * 4  # 4096 bytes per sample, one case per (cut, defense) group


@pytest.mark.parametrize("case", ["schema", "unknown_key", "missing_report", "missing_policy", "strict_unmatched", "bad_yaml"])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, case):
    good = write(tmp_path / "r.json", report([rec(0.52)]))
    policy = tmp_path / "p.yaml"
    policy.write_text("rules: [{select: {target: race}, max: 0.9}]\n")
    args = ["check", good, "--policy", str(policy)]
    expected = {
        "schema": "has schema_version 2; this splitaudit reads version 1",
        "unknown_key": "rules.0.selct: unknown key",
        "missing_report": "report '" + str(tmp_path / "nope.json") + "' does not exist",
        "missing_policy": "does not exist",
        "strict_unmatched": "--strict: nothing matched by rule2",
        "bad_yaml": "not valid YAML",
    }[case]
    if case == "schema":
        args[1] = write(tmp_path / "v2.json", {**report([rec(0.52)]), "schema_version": 2})
    elif case == "unknown_key":
        policy.write_text("rules: [{selct: {target: race}, max: 0.9}]\n")
    elif case == "missing_report":
        args[1] = str(tmp_path / "nope.json")
    elif case == "missing_policy":
        args[3] = str(tmp_path / "nope.yaml")
    elif case == "strict_unmatched":
        policy.write_text("rules: [{select: {target: race}, max: 0.9}, {select: {defense: datamix}, max: 0.1}]\n")
        args.append("--strict")
    elif case == "bad_yaml":
        policy.write_text("rules: [{select: \n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    if case == "unknown_key":
        assert str(policy) in err


def test_unmatched_selector_warns_without_strict(tmp_path, capsys):
    good = write(tmp_path / "r.json", report([rec(0.52)]))
    policy = tmp_path / "p.yaml"
    policy.write_text("rules: [{name: he, select: {defense: he}, max: 0.1}, {select: {target: race}, max: 0.9}]\n")
    assert main(["check", good, "--policy", str(policy)]) == 0
    assert "warning: rule 'he': no record matches its selector (defense=he)" in capsys.readouterr().err


def test_policy_rules_need_a_bound_and_a_known_quantity(tmp_path):
    from audit.core.errors import AuditInputError
    from audit.gate import load_policy

    path = tmp_path / "p.yaml"
    path.write_text("rules: [{select: {target: race}}]\n")
    with pytest.raises(AuditInputError, match="a rule needs max or min"):
        load_policy(path)
    path.write_text("rules: [{quantity: leakiness, max: 1}]\n")
    with pytest.raises(AuditInputError, match="unknown quantity 'leakiness'"):
        load_policy(path)
    data = copy.deepcopy({"rules": [{"name": "x", "max": 1}, {"name": "x", "max": 2}]})
    path.write_text(json.dumps(data))
    with pytest.raises(AuditInputError, match="rule name 'x' is used twice"):
        load_policy(path)
