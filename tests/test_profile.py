"""The timing and memory profile of a run (issue 17, item 1): in report.json and report.html."""
import pytest

from audit import Audit, build_config
from audit.core.profile import report_timings
from audit.merge import report_values
from tests.conftest import TINY


def test_report_says_where_the_time_went(tmp_path):
    config = build_config({**TINY, "cut_points": ["conv1"], "attacks": {"attribute": {"epochs": 1}, "mi": {}}})
    report = Audit(config).run(tmp_path / "out", callbacks=[])
    timings = report["timings"]
    assert set(timings["driver_seconds"]) == {"data_seconds", "task_model_seconds", "features_seconds"}
    assert set(timings["group_seconds"]) == {"defense_fit_seconds", "release_seconds", "utility_cost_seconds"}
    assert set(timings["attack_seconds"]) == {"attribute", "mi"}
    assert timings["attack_seconds"]["attribute"]["cells"] == 2  # one per defense (none, noise)
    assert all(v >= 0 for v in timings["driver_seconds"].values())
    # the stages lie inside the run's wall time, and the attacks' fits took measurable time
    staged = (sum(timings["driver_seconds"].values()) + sum(timings["group_seconds"].values())
              + sum(a["fit_seconds"] + a["score_seconds"] for a in timings["attack_seconds"].values()))
    assert 0 < staged <= timings["wall_seconds"] + 0.5
    assert timings["attack_seconds"]["attribute"]["fit_seconds"] > 0
    assert timings["peak_rss_mb"]["driver"] > 100  # torch alone is more than that
    for r in report["results"]:
        assert set(r["timings"]) == {"defense_fit_seconds", "release_seconds", "utility_cost_seconds",
                                     "attack_fit_seconds", "attack_score_seconds"}
    assert all(r["timings"] == {} for r in report_values(report)["results"])  # not a report value
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="timings"' in html and "attack attribute: fit" in html and "peak resident memory" in html


def test_group_stages_count_once_per_group():
    rec = lambda attack, cell, metric: {
        "dataset": "d", "model": "m", "seed": 0, "cut_point": "c", "defense": "none", "defense_params": {},
        "attack": attack, "cell_id": cell, "metric": metric,
        "timings": {"defense_fit_seconds": 2.0, "release_seconds": 1.0, "utility_cost_seconds": 0.5,
                    "attack_fit_seconds": 3.0, "attack_score_seconds": 0.25}}
    records = [rec("a", "c1", "x"), rec("a", "c1", "y"), rec("b", "c2", "x")]
    t = report_timings(records, {"data_seconds": 1.0}, 20.0)
    assert t["group_seconds"] == {"defense_fit_seconds": 2.0, "release_seconds": 1.0, "utility_cost_seconds": 0.5}
    assert t["attack_seconds"]["a"] == {"fit_seconds": 3.0, "score_seconds": 0.25, "cells": 1}
    assert t["attack_seconds"]["b"]["cells"] == 1 and t["wall_seconds"] == pytest.approx(20.0)
