"""The engine reproduces its stored reference records: same cells (ids), same figures -- bit for bit (to 1e-6)
on the CPU that wrote the reference, inside the reference's 95% CIs on another (kernels differ by instruction
set). The reference files and how to regenerate them: tests/engine_reference.py."""
import json
import math

import pytest

from tests.engine_reference import cpu_signature, load_reference, run_reference


def assert_same_records(rows: list[dict], reference: list[dict], exact: bool = True) -> None:
    """Same cells and measurements; figures equal to 1e-6 (``exact``), else at least 95% of them inside the
    reference's 95% CIs (on another CPU a training's figures are another draw of its numerical noise: the
    default audit's 282 figures on an AVX-512 machine against the earlier machine's reference, 2026-12-04:
    193 moved, 5 outside their CIs)."""
    assert [(r["cell_id"], r["target"], r["metric"]) for r in rows] == \
        [(r["cell_id"], r["target"], r["metric"]) for r in reference], "the cells or their measurements changed"
    outside = []
    for new, old in zip(rows, reference):
        for key in ("dataset", "cut_point", "defense", "attack", "status", "n_eval"):
            assert new[key] == old[key], (old["cell_id"], key, new[key], old[key])
        assert new["chance"] == old["chance"] or math.isclose(new["chance"], old["chance"], rel_tol=1e-6), \
            (old["cell_id"], "chance", new["chance"], old["chance"])  # a mean image's PSNR: float arithmetic too
        where = (old["cell_id"], old["attack"], old["target"], old["metric"])
        if not exact:
            low, high = old["ci95"]
            if not low - 1e-6 <= new["value"] <= high + 1e-6:
                outside.append((*where, new["value"], old["ci95"]))
            continue
        for a, b in zip([new["value"], *(new["ci95"] or [])], [old["value"], *(old["ci95"] or [])]):
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (*where, a, b)
    assert len(outside) <= math.ceil(0.05 * len(rows)), (f"{len(outside)} of {len(rows)} figures outside the "
                                                          "reference's 95% CIs", outside)


def assert_reproduces(which: str, rows: list[dict]) -> None:
    reference = load_reference(which)
    assert_same_records(rows, reference["rows"], exact=reference["cpu"] == cpu_signature())


def test_tiny_audit_gives_the_reference_records(tmp_path):
    rows = run_reference("tiny", tmp_path / "out")
    assert len(rows) == 36 and {r["attack"] for r in rows} == {"attribute", "mi", "inversion", "reidentify"}
    assert_reproduces("tiny", rows)


def test_a_changed_figure_is_caught():
    reference = load_reference("tiny")["rows"]
    changed = json.loads(json.dumps(reference))
    changed[0]["value"] += 1e-3
    with pytest.raises(AssertionError):
        assert_same_records(changed, reference)
    assert_same_records(changed, reference, exact=False)  # inside its CI
    for row in changed[:3]:  # 3 of 36 outside their CIs: one more than 5% (rounded up) allows
        row["value"] = row["ci95"][1] + 1e-3
    assert_same_records(changed[:2] + reference[2:], reference, exact=False)
    with pytest.raises(AssertionError):
        assert_same_records(changed, reference, exact=False)


@pytest.mark.slow
def test_default_audit_gives_the_reference_records(tmp_path):
    assert_reproduces("default", run_reference("default", tmp_path / "out"))
