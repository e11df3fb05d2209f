"""``splitaudit recommend`` and ``splitaudit check --decision``: admissible (cut point, defense)
pairs under edge-cost, utility and privacy constraints; exit codes 0 found, 1 none, 2 bad input."""
from __future__ import annotations

import json

import pytest

from audit.cli import main
from audit.decision import Decision, decision_rows, recommend


def rec(cut, defense, value, *, frac, acc, params=None, half=0.03, target="race", metric="balanced_accuracy",
        chance=0.5, attack="attribute", extra=None):
    return {
        "dataset": "synthetic", "model": "small_cnn", "cut_point": cut, "defense": defense,
        "defense_params": params or {}, "utility": {"primary_accuracy": acc, "task_accuracy": 0.95},
        "cost": {"edge_flops_fraction": frac, "bytes_sent": 4096.0 * (1 - frac)}, "attack": attack, "target": target,
        "metric": metric, "value": value, "ci95": [value - half, value + half], "chance": chance,
        "advantage": value - chance, "seed": 0, "n_eval": 500, "status": "ok", "extra": extra or {},
        "cell_id": f"{cut}-{defense}-{json.dumps(params)}-{attack}",
    }


def records():
    """conv1 (10% FLOPs): none leaks; noise 10 hides race at a 0.01 accuracy cost; noise 100 hides
    it at 0.40. fc1 (80% FLOPs): none hides race. A reconstruction attack at conv1 only."""
    noise10, noise100 = {"scale": 10.0}, {"scale": 100.0}
    return [
        rec("conv1", "none", 0.90, frac=0.1, acc=0.95),
        rec("conv1", "noise", 0.51, frac=0.1, acc=0.94, params=noise10),
        rec("conv1", "noise", 0.50, frac=0.1, acc=0.55, params=noise100),
        rec("fc1", "none", 0.51, frac=0.8, acc=0.95),
        rec("conv1", "none", 20.0, frac=0.1, acc=0.95, target="input", metric="psnr", chance=14.0, attack="inversion",
            half=0.5),
        rec("conv1", "noise", 14.2, frac=0.1, acc=0.94, params=noise10, target="input", metric="psnr", chance=14.0,
            attack="inversion", half=0.5),
        rec("conv1", "noise", 14.0, frac=0.1, acc=0.55, params=noise100, target="input", metric="psnr", chance=14.0,
            attack="inversion", half=0.5),
    ]


def write(tmp_path, recs, decision=None):
    report = {"schema_version": 1, "config": {"name": "t", **({"decision": decision} if decision else {})},
              "environment": {"seeds": [0]}, "tasks": [], "results": recs}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return str(path)


def test_rows_are_ordered_by_edge_cost_and_the_best_admissible_pair_is_found():
    report = {"config": {}, "results": records()}
    assert [r.edge_flops_fraction for r in decision_rows(report)] == [0.1, 0.1, 0.1, 0.8]
    decision = Decision(max_edge_flops=0.2, max_accuracy_drop=0.02, require_no_evidence=["attribute", "reconstruction"])
    (found,) = recommend(report, decision)
    assert [(r.cut_point, r.defense) for r in found.admissible] == [("conv1", "noise(scale=10.0)")]
    assert found.best.defense == "noise(scale=10.0)"
    why = {(r.cut_point, r.defense): r.failures(decision) for r in found.rows}
    assert why[("conv1", "none")][0].startswith("attribute leaks") and "reconstruction leaks" in why[("conv1", "none")][1]
    assert why[("conv1", "noise(scale=100.0)")] == ["accuracy drop 0.400 (0.950 -> 0.550) > 0.02"]
    assert why[("fc1", "none")] == ["edge FLOPs 80.0% > 20.0%", "reconstruction: no attack of this family ran"]


def test_recommend_cli_exit_codes_and_reasons(tmp_path, capsys):
    path = write(tmp_path, records())
    args = ["recommend", path, "--max-edge-flops", "0.2", "--max-accuracy-drop", "0.02",
            "--require", "no-evidence:attribute,reconstruction"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 of 4 (cut point, defense) pairs admissible" in out
    assert "BEST cut=conv1 defense=noise(scale=10.0)" in out and "recommended: cut=conv1 defense=noise(scale=10.0)" in out
    assert "fails: edge FLOPs 80.0% > 20.0%" in out and "fails: accuracy drop 0.400" in out
    assert main([*args, "--max-accuracy-drop", "0.001"]) == 1  # the last value counts: noise 10x costs 0.01
    assert "no admissible pair for synthetic/small_cnn" in capsys.readouterr().out
    assert main(["recommend", path, "--require", "no-leak:attribute"]) == 2
    assert "expected no-evidence:FAMILY" in capsys.readouterr().err
    assert main(["recommend", path, "--require", "no-evidence:atribute"]) == 2
    assert "unknown attack family 'atribute'" in capsys.readouterr().err
    assert main(["recommend", str(tmp_path / "missing.json")]) == 2
    assert main(["recommend", path, "--task", "digits"]) == 2
    assert "no task 'digits'" in capsys.readouterr().err


def test_the_config_decision_block_drives_recommend_and_check(tmp_path, capsys):
    block = {"max_edge_flops": 0.2, "max_accuracy_drop": 0.02, "require_no_evidence": ["attribute"]}
    path = write(tmp_path, records(), block)
    assert main(["recommend", path]) == 0
    assert "constraints: edge FLOPs <= 20%; accuracy drop <= 0.02; no evidence of a leak: attribute" in capsys.readouterr().out
    junit = tmp_path / "junit.xml"
    assert main(["check", path, "--decision", "--junit", str(junit)]) == 0
    assert "ok   [decision] synthetic/small_cnn: 1 of 4 pairs meet" in capsys.readouterr().out
    assert 'name="decision"' in junit.read_text()
    strict = write(tmp_path, records(), {**block, "max_accuracy_drop": 0.001})
    assert main(["check", strict, "--decision"]) == 1
    out = capsys.readouterr().out
    assert "FAIL [decision] synthetic/small_cnn: no (cut point, defense) meets" in out and "cut=fc1 defense=none" in out
    assert main(["check", path]) == 2  # neither --policy nor --decision
    assert "give --policy" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"max_edge_flops": -1}, {"alpha": 1.5}, {"min_advantage": {"auroc": 0.1}},
                                 {"require": ["attribute"]}])
def test_an_invalid_decision_block_is_bad_input(tmp_path, capsys, bad):
    assert main(["recommend", write(tmp_path, records(), bad)]) == 2
    assert capsys.readouterr().err.strip()


def test_recommend_alpha_recomputes_the_verdicts(tmp_path, capsys):
    """One comparison, p = 1 - Phi(0.045 / (0.04 / 1.96)) = 0.014: leaks at alpha 0.05, not at 0.01."""
    path = write(tmp_path, [rec("conv1", "none", 0.545, frac=0.1, acc=0.95, half=0.04)])
    assert main(["recommend", path, "--require", "no-evidence:attribute"]) == 1
    assert "attribute leaks" in capsys.readouterr().out
    assert main(["recommend", path, "--require", "no-evidence:attribute", "--alpha", "0.01"]) == 0
    assert "(alpha 0.01)" in capsys.readouterr().out
