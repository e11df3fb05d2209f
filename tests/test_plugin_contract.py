"""Every registered defense and attack runs end to end on the tiny synthetic task,
and its records are well-formed. New plugins are covered automatically."""
import math

import pytest

from attacks import ATTACKS
from audit import Audit, build_config
from defenses import DEFENSES
from tests.conftest import TINY

TEST_PLUGINS = {"test_broken"}


def _tiny(defenses, attacks):
    return build_config({**TINY, "cut_points": ["conv1"], "defenses": defenses, "attacks": attacks})


def _check(records):
    assert records
    for r in records:
        assert r["status"] == "ok", r["error"]
        assert isinstance(r["value"], float) and math.isfinite(r["value"])
        lo, hi = r["ci95"]
        assert lo <= hi
        assert r["n_eval"] > 0 and r["target"] and r["metric"]


@pytest.mark.parametrize("name", [n for n in DEFENSES.list() if n not in TEST_PLUGINS])
def test_defense_contract(name, tmp_path):
    report = Audit(_tiny(["none", name] if name != "none" else ["none"], {"attribute": {"epochs": 2}})).run(tmp_path)
    _check(report["results"])
    for r in report["results"]:
        assert 0 <= r["utility"]["primary_accuracy"] <= 1
        assert r["cost"]["bytes_sent"] > 0 and r["cost"]["edge_flops"] >= 0


@pytest.mark.parametrize("name", ATTACKS.list())
def test_attack_contract(name, tmp_path):
    report = Audit(_tiny(["none"], {name: {}})).run(tmp_path)
    _check(report["results"])
