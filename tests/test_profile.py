"""The timing and memory profile of a run (issue 17, item 1): in report.json and report.html."""
import sys
import time

import pytest
import torch

from audit import Audit, build_config
from audit.core.profile import current_rss_mb, report_timings, timed
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
    largest = max(v for r in report["results"] for k, v in r["timings"].items() if k.endswith("_peak_mb"))
    assert timings["peak_rss_mb"]["groups"] == round(largest, 1) <= timings["peak_rss_mb"]["driver"] + 1
    stages = {"defense_fit", "release", "utility_cost", "attack_fit", "attack_score"}
    for r in report["results"]:
        assert set(r["timings"]) == {f"{s}_seconds" for s in stages} | {f"{s}_peak_mb" for s in stages}
        assert all(r["timings"][f"{s}_peak_mb"] > 100 for s in stages)  # torch alone is more than that
    assert set(timings["group_peak_mb"]) == {"defense_fit_peak_mb", "release_peak_mb", "utility_cost_peak_mb"}
    assert timings["driver_peak_mb"]["features_peak_mb"] > 100
    assert timings["attack_seconds"]["mi"]["fit_peak_mb"] <= timings["peak_rss_mb"]["driver"] + 1
    assert all(r["timings"] == {} for r in report_values(report)["results"])  # not a report value
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="timings"' in html and "attack attribute: fit" in html and "peak resident memory" in html
    assert "<th>peak GB</th>" in html


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory is sampled from /proc")
def test_a_stage_records_its_own_peak_memory():
    """A stage that holds 400 MB for a moment records a peak at least 350 MB above where it began; the
    next stage, after the memory is freed, records a peak below that."""
    into: dict[str, float] = {}
    start = current_rss_mb()
    with timed(into, "big_seconds"):
        block = torch.ones(100 * 2**20)  # 400 MB, every page written
        time.sleep(0.3)  # several samples
        del block
    with timed(into, "small_seconds"):
        time.sleep(0.2)
    assert into["big_peak_mb"] >= start + 350, (start, into)
    assert into["small_peak_mb"] < into["big_peak_mb"] - 300, into
    assert into["big_seconds"] >= 0.3


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
