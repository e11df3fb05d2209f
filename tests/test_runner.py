"""The runner end to end on a tiny audit: report keys, CSV, resume, cache, failures."""
import csv
import json

import pytest

from audit import Audit, build_config
from audit.core.errors import AuditInputError
from audit.plan import plan_cells
from audit.runner import RunCallback
from defenses import DEFENSES, Defense

RECORD_KEYS = {
    "dataset", "model", "cut_point", "defense", "defense_params", "utility", "cost", "attack", "target",
    "metric", "value", "ci95", "chance", "advantage", "seed", "n_eval", "status", "error",
}
COST_KEYS = {"edge_flops", "edge_flops_fraction", "bytes_sent", "edge_latency_ms", "cloud_latency_ms"}


class Count(RunCallback):
    def __init__(self):
        self.cells = 0

    def on_cell_end(self, run, cell, records, seconds):
        self.cells += 1


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("audit")
    counter = Count()
    report = Audit(build_config(TINY)).run(out, callbacks=[counter])
    return out, report, counter


def test_report_has_design_keys(first_run):
    out, report, counter = first_run
    assert {"schema_version", "config", "environment", "results"} <= set(report)
    assert report["environment"]["seeds"] == [0] and report["environment"]["packages"]["torch"]
    records = report["results"]
    # 2 cut points x 2 defenses x 1 attack = 4 cells; 3 metrics each for one target
    assert counter.cells == 4 and len(records) == 12
    for r in records:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["status"] == "ok" and r["error"] is None
        assert COST_KEYS <= set(r["cost"]) and 0 < r["cost"]["edge_flops_fraction"] <= 1
        assert 0 <= r["utility"]["primary_accuracy"] <= 1
        assert r["ci95"][0] <= r["value"] <= r["ci95"][1] and r["n_eval"] == 100 and r["seed"] == 0
    fractions = {r["cut_point"]: r["cost"]["edge_flops_fraction"] for r in records}
    assert fractions["conv1"] < fractions["fc1"]
    noisy = [r for r in records if r["defense"] == "noise"]
    assert noisy[0]["defense_params"]["scale"] == 1.0 and noisy[0]["defense_params"]["distribution"] == "gaussian"
    assert json.loads((out / "report.json").read_text())["results"] == records
    assert report["tasks"][0]["n"] == {"train": 200, "aux": 100, "test": 100}


def test_results_csv_matches_records(first_run):
    out, report, _ = first_run
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == len(report["results"])
    for row, rec in zip(rows, report["results"]):
        assert row["metric"] == rec["metric"] and float(row["value"]) == pytest.approx(rec["value"])
        assert float(row["cost.edge_flops"]) == rec["cost"]["edge_flops"]


def test_rerun_skips_finished_cells_and_gives_the_same_report(first_run):
    out, report, _ = first_run
    from tests.conftest import TINY

    counter = Count()
    again = Audit(build_config(TINY)).run(out, callbacks=[counter])
    assert counter.cells == 0
    assert again["results"] == report["results"]


def test_second_cut_point_and_rerun_reuse_the_cached_task_model(first_run, tmp_path, caplog, monkeypatch):
    import logging

    from tests.conftest import TINY

    monkeypatch.setattr(logging.getLogger("splitaudit"), "propagate", True)  # the CLI turns it off
    cfg = build_config({**TINY, "cut_points": ["conv1"]})
    with caplog.at_level("INFO", logger="splitaudit"):
        report = Audit(cfg).run(tmp_path / "other")
    assert "task model from cache" in caplog.text and "training the task model" not in caplog.text
    by_cell = {(r["cut_point"], r["defense"], r["metric"]): r["value"] for r in report["results"]}
    first = {(r["cut_point"], r["defense"], r["metric"]): r["value"]
             for r in first_run[1]["results"] if r["cut_point"] == "conv1"}
    assert by_cell == first  # a cell's values do not depend on which other cells ran


def test_out_folder_of_another_audit_is_refused(first_run):
    from tests.conftest import TINY

    cfg = build_config(TINY, overrides=["seeds=[5]"])
    with pytest.raises(AuditInputError, match="holds results of another audit"):
        Audit(cfg).run(first_run[0])


def test_cell_ids_are_stable_and_distinct(tiny_config):
    cells = plan_cells(build_config(tiny_config))
    assert len({c.id for c in cells}) == len(cells) == 4
    assert [c.id for c in plan_cells(build_config(tiny_config))] == [c.id for c in cells]


@DEFENSES.register("test_broken")
class Broken(Defense):
    """Raises in fit (a test plugin)."""

    def fit(self, ctx):
        raise RuntimeError("boom")


def test_failing_defense_fails_its_cells_and_the_rest_go_on(tmp_path, tiny_config):
    tiny_config["defenses"] = ["none", "test_broken"]
    tiny_config["cut_points"] = ["fc1"]
    report = Audit(build_config(tiny_config)).run(tmp_path / "out")
    failed = [r for r in report["results"] if r["status"] == "failed"]
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert len(failed) == 1 and "boom" in failed[0]["error"] and failed[0]["defense"] == "test_broken"
    assert len(ok) == 3


def test_attacker_data_train_plus_aux_gives_the_attacks_those_rows(tmp_path, tiny_config):
    """attacker_data: train+aux -> each attack's aux view is the released train rows then the aux
    rows (checked against the edge features computed here); the default keeps config hashes and
    cell ids of folders made before the key existed."""
    from audit.core.training import predict
    from audit.runner import AuditRun
    from audit.tasks import attacker_splits
    from tests.worker_plugins import register

    register()
    tiny_config.update(cut_points=["fc1"], defenses=["none"], attacks={"test_probe": {}})
    default = build_config(tiny_config)
    assert default.config_hash() == build_config({**tiny_config, "attacker_data": "aux"}).config_hash()
    tiny_config["attacker_data"] = "train+aux"
    stronger = build_config(tiny_config)
    assert stronger.config_hash() != default.config_hash()
    assert {c.id for c in plan_cells(stronger)}.isdisjoint(c.id for c in plan_cells(default))
    reports = {name: Audit(cfg).run(tmp_path / name) for name, cfg in (("aux", default), ("both", stronger))}
    state = AuditRun(stronger, tmp_path / "x").prepare_task(0, 0)
    edge, _ = state.model.split("fc1")
    for name, report in reports.items():
        (task,) = report["tasks"]
        splits = ("train", "aux") if name == "both" else ("aux",)
        assert attacker_splits(build_config({**tiny_config, "attacker_data": task["attacker_data"]}).tasks[0]) == splits
        rows = state.data.part(*splits)
        assert task["n_attacker"] == len(rows) == sum(task["n"][s] for s in splits)
        (record,) = report["results"]
        z = predict(edge, rows.x).double()
        assert record["extra"]["n_aux"] == len(rows) and record["extra"]["aux_y_sum"] == int(rows.y.sum())
        assert record["extra"]["aux_z_mean"] == pytest.approx(float(z.mean()), rel=1e-5)
    assert reports["both"]["tasks"][0]["n_attacker"] > 2 * reports["aux"]["tasks"][0]["n_attacker"]


def test_rows_slices_like_the_concatenation():
    import torch

    from audit.core.feature_store import Rows

    a, b, c = torch.arange(10.0).view(5, 2), torch.arange(10.0, 16.0).view(3, 2), torch.arange(16.0, 24.0).view(4, 2)
    rows, whole = Rows(a, b, c), torch.cat([a, b, c])
    assert rows.shape == whole.shape and len(rows) == 12
    for start in range(13):
        for stop in range(start, 14):
            assert torch.equal(rows[start:stop], whole[start:stop]), (start, stop)
