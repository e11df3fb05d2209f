"""The engine reproduces its stored reference records: same cells (ids), same figures.
The reference files and how to regenerate them: tests/engine_reference.py."""
import json
import math

import pytest

from tests.engine_reference import DATA, run_reference


def assert_same_records(rows: list[dict], reference: list[dict]) -> None:
    assert [(r["cell_id"], r["target"], r["metric"]) for r in rows] == \
        [(r["cell_id"], r["target"], r["metric"]) for r in reference], "the cells or their measurements changed"
    for new, old in zip(rows, reference):
        for key in ("dataset", "cut_point", "defense", "attack", "status", "chance", "n_eval"):
            assert new[key] == old[key], (old["cell_id"], key, new[key], old[key])
        for a, b in zip([new["value"], *(new["ci95"] or [])], [old["value"], *(old["ci95"] or [])]):
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), \
                (old["cell_id"], old["attack"], old["target"], old["metric"], a, b)


def test_tiny_audit_gives_the_reference_records(tmp_path):
    reference = json.loads((DATA / "engine_reference_tiny.json").read_text())
    rows = run_reference("tiny", tmp_path / "out")
    assert len(rows) == len(reference) == 36
    assert {r["attack"] for r in rows} == {"attribute", "mi", "inversion", "reidentify"}
    assert_same_records(rows, reference)


def test_a_changed_figure_is_caught():
    reference = json.loads((DATA / "engine_reference_tiny.json").read_text())
    changed = json.loads(json.dumps(reference))
    changed[0]["value"] = changed[0]["value"] + 1e-3
    with pytest.raises(AssertionError):
        assert_same_records(changed, reference)


@pytest.mark.slow
def test_default_audit_gives_the_reference_records(tmp_path):
    path = DATA / "engine_reference_default.json"
    reference = json.loads(path.read_text())
    assert_same_records(run_reference("default", tmp_path / "out"), reference)
