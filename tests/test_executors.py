"""Executors, shards and merge: every way of running the grid gives the single run's report values."""
import json
import os
import signal

import pytest

from audit import Audit, build_config
from audit.cli import main
from audit.core.errors import AuditInputError
from audit.executors import ProcessExecutor, RayExecutor, SequentialExecutor
from audit.merge import merge_outputs, report_values, strip_timing
from audit.plan import parse_shard, plan_cells, shard_cells
from tests.conftest import GRID, TINY
from tests.worker_plugins import DRIVER_PID_ENV, probe_file, register


@pytest.fixture(autouse=True)
def _plugins():
    register()


def _by_cell(report):
    out = {}
    for r in report["results"]:
        out.setdefault(r["cell_id"], []).append(r)
    return out


def test_report_values_leave_out_only_time_and_place():
    report = {"schema_version": 1, "created": "x", "config": {"a": 1}, "tasks": [],
              "environment": {"seeds": [0], "packages": {"torch": "2"}, "platform": "p", "torch_threads": 2},
              "results": [{"value": 0.5, "cost": {"edge_flops": 3, "edge_latency_ms": 1.0}, "extra": {"fit_seconds": 2}}]}
    values = report_values(report)
    assert values["results"] == [{"value": 0.5, "cost": {"edge_flops": 3}, "extra": {}}]
    assert values["environment"] == {"seeds": [0], "packages": {"torch": "2"}}
    other = json.loads(json.dumps(report))
    other["results"][0]["value"] = 0.5000001
    assert report_values(other) != values
    assert strip_timing({"a_ms": 1, "b": [{"c_seconds": 2, "d": 3}]}) == {"b": [{"d": 3}]}


def test_process_pool_gives_the_reference_records(grid_reference, tmp_path):
    _, reference = grid_reference
    report = Audit(build_config(GRID)).run(
        tmp_path, callbacks=[], executor=ProcessExecutor(2, threads=1, worker_setup=register))
    assert report_values(report) == report_values(reference)
    probes = [r for r in report["results"] if r["attack"] == "test_probe"]
    assert all(r["extra"]["threads"] == 1 for r in probes)
    # workers use the config's Lightning trainer settings
    assert all(r["extra"]["settings"]["precision"] == "32-true" for r in probes)
    assert all(r["extra"]["settings"] == report["config"]["trainer"] for r in probes)
    for r in probes:  # artifacts written by workers land in the output folder
        value, pid, _ = probe_file(tmp_path, r)
        assert value == repr(r["value"]) and pid != os.getpid()
    assert report["environment"]["executor"] == {"name": "local", "workers": 2, "threads": 1}
    assert not (tmp_path / "features").exists()  # scratch features are removed at the end


def test_shards_are_disjoint_cover_the_grid_and_keep_groups_whole():
    cells = plan_cells(build_config(GRID))
    shards = [shard_cells(cells, i, 3) for i in (1, 2, 3)]
    ids = [c.id for s in shards for c in s]
    assert sorted(ids) == sorted(c.id for c in cells) and len(set(ids)) == len(ids)
    for s in shards:
        others = [c for t in shards if t is not s for c in t]
        assert not {c.group for c in s} & {c.group for c in others}
    assert [c.id for c in shard_cells(cells, 2, 3)] == [c.id for c in shards[1]]
    for bad in ("0/2", "3/2", "1-2", "a/b"):
        with pytest.raises(AuditInputError, match="--shard"):
            parse_shard(bad)


def test_shards_merged_equal_the_single_run(grid_reference, tmp_path, capsys):
    ref_dir, reference = grid_reference
    path = tmp_path / "grid.yaml"
    import yaml

    path.write_text(yaml.safe_dump(GRID))
    for i in (1, 2):
        report = Audit(build_config(GRID)).run(tmp_path / f"s{i}", callbacks=[], shard=(i, 2),
                                               executor=SequentialExecutor(threads=1))
        assert 0 < len(_by_cell(report)) < 8
    with pytest.raises(AuditInputError, match=r"cells are in none of the folders.*missing: 2/2"):
        merge_outputs([tmp_path / "s1"], tmp_path / "partial")
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert report_values(merged) == report_values(reference)
    assert (tmp_path / "merged" / "results.csv").read_text().count("\n") == len(reference["results"]) + 1
    for cell_id in _by_cell(merged):
        if any(r["attack"] == "test_probe" for r in _by_cell(merged)[cell_id]):
            assert (tmp_path / "merged" / "artifacts" / cell_id / "probe.txt").is_file()
    # a shard folder refuses the other shard, and merge refuses another audit's folder
    with pytest.raises(AuditInputError, match="holds shard 1/2 of this audit"):
        Audit(build_config(GRID)).run(tmp_path / "s1", callbacks=[], shard=(2, 2))
    other = Audit(build_config({**TINY, "seeds": [3], "cut_points": ["fc1"], "defenses": ["none"],
                                "attacks": {"test_probe": {}}})).run(tmp_path / "other", callbacks=[])
    assert other["results"]
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "other"), "--out", str(tmp_path / "m2")]) == 2
    assert "holds another audit" in capsys.readouterr().err and "seeds" in capsys.readouterr().err + "seeds"


def test_workers_lines_reach_the_drivers_log(tmp_path, caplog):
    """A defense's fine-tuning in a worker says where it is, epoch by epoch, in the driver's log (a UTKFace
    conv1 learned_noise group fits for ~17 minutes; its lines were lost in the worker); --quiet drops them."""
    import logging

    cfg = build_config({**TINY, "cut_points": ["fc1"], "attacks": {"test_probe": {}},
                        "defenses": [{"name": "noise", "scale": 1.0, "finetune_epochs": 2}]})
    with caplog.at_level(logging.INFO, logger="splitaudit"):
        Audit(cfg).run(tmp_path / "a", callbacks=[], executor=ProcessExecutor(2, threads=1, worker_setup=register))
    line = "synthetic/small_cnn noise cloud fine-tuning at fc1 (seed 0): epoch"
    epochs = [r.getMessage() for r in caplog.records if line in r.getMessage()]
    assert len(epochs) >= 1 and all(r.process == os.getpid() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="splitaudit"):
        Audit(cfg).run(tmp_path / "b", callbacks=[], executor=ProcessExecutor(2, threads=1, worker_setup=register))
    assert not [r for r in caplog.records if "epoch" in r.getMessage()]


def test_a_worker_killed_by_the_os_fails_only_its_group(tmp_path, monkeypatch):
    monkeypatch.setenv(DRIVER_PID_ENV, str(os.getpid()))
    cfg = build_config({**GRID, "cut_points": ["fc1"], "defenses": ["none", "test_kill_worker"],
                        "attacks": {"test_probe": {}}})
    report = Audit(cfg).run(tmp_path, callbacks=[], executor=ProcessExecutor(2, threads=1, worker_setup=register))
    by_defense = {r["defense"]: r for r in report["results"]}
    assert by_defense["none"]["status"] == "ok"
    assert by_defense["test_kill_worker"]["status"] == "failed"
    assert f"killed by signal {int(signal.SIGKILL)}" in by_defense["test_kill_worker"]["error"]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH", "")] if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": path, "SPLITAUDIT_CACHE": os.environ["SPLITAUDIT_CACHE"]}})
    yield ray
    ray.shutdown()


class ObjectStoreRay(RayExecutor):
    """Ships the features through the object store, as on a cluster of several nodes (one-node instances
    pass the driver's files)."""

    def open(self, run, on_result):
        super().open(run, on_result)
        assert self._one_node  # the test instance: this machine alone
        self._one_node = False


@pytest.mark.parametrize("cells_per_job, executor_class", [(None, RayExecutor), (1, RayExecutor), (None, ObjectStoreRay)])
def test_ray_executor_gives_the_reference_records(grid_reference, ray_local, tmp_path, cells_per_job, executor_class):
    _, reference = grid_reference
    executor = executor_class(threads=1, worker_setup=register, cells_per_job=cells_per_job)
    report = Audit(build_config(GRID)).run(tmp_path, callbacks=[], executor=executor)
    assert report_values(report) == report_values(reference)
    probes = [r for r in report["results"] if r["attack"] == "test_probe"]
    for r in probes:  # artifacts come back through Ray, written by the driver
        value, pid, _ = probe_file(tmp_path, r)
        assert value == repr(r["value"]) and pid != os.getpid() and r["extra"]["threads"] == 1
    ran_on = report["environment"]["executor"]  # the fixture's instance: this machine, 2 CPUs, 1 per task
    assert (ran_on["name"], ran_on["nodes"], ran_on["cluster_cpus"], ran_on["workers"]) == ("ray", 1, 2.0, 2)


def test_ray_workers_lines_reach_the_drivers_output(ray_local, tmp_path, capfd, monkeypatch):
    """A defense's fine-tuning in a Ray task says where it is, epoch by epoch, in the driver's output (Ray
    forwards the worker's stderr, prefixed with the task and pid); at WARNING (--quiet) the lines stay out."""
    import time

    # Ray holds back a line like one another worker printed in the last 5 s (numbers aside) and later says
    # '[repeated Nx across cluster]': the other tests' fine-tuning lines would hide these
    monkeypatch.setattr("ray._private.ray_logging.RAY_DEDUP_LOGS", False)

    def output_after(quiet: bool, seed: int, wait: float) -> tuple[str, str]:
        """Run at ``seed`` (``quiet``: warnings only); the driver's stderr until the last epoch's line came (at
        most ``wait`` s after the run: Ray's log monitor forwards asynchronously), and that line."""
        cfg = build_config({**TINY, "seeds": [seed], "cut_points": ["fc1"], "attacks": {"test_probe": {}},
                            "defenses": [{"name": "noise", "scale": 1.0, "finetune_epochs": 2}]})
        line = f"synthetic/small_cnn noise cloud fine-tuning at fc1 (seed {seed}): epoch 2/2"
        Audit(cfg, quiet=quiet).run(tmp_path / str(seed), callbacks=[],
                                    executor=RayExecutor(threads=1, worker_setup=register))
        text, deadline = "", time.monotonic() + wait
        while line not in text and time.monotonic() < deadline:
            time.sleep(0.5)
            text += capfd.readouterr().err
        return text, line

    shown, line = output_after(False, 0, wait=20)
    assert line in shown, shown[-2000:]
    assert "_ray_group pid=" in shown.split(line)[0].splitlines()[-1]  # the worker's line, as Ray forwards it
    quiet, line = output_after(True, 1, wait=5)
    assert line not in quiet


@pytest.mark.slow
def test_ray_runs_the_default_audit_like_local(ray_local, tmp_path):
    """The embedded default audit (every cell of it) on a local Ray instance equals the in-process run."""
    from audit.config import load_config

    local = Audit(load_config()).run(tmp_path / "local", callbacks=[], executor=SequentialExecutor(threads=1))
    on_ray = Audit(load_config()).run(tmp_path / "ray", callbacks=[], executor=RayExecutor(threads=1))
    assert len(local["results"]) >= 24 * 3
    assert all(r["status"] == "ok" for r in local["results"])
    assert report_values(on_ray) == report_values(local)


def test_groups_split_into_jobs_of_a_few_cells_give_the_reference_records(grid_reference, tmp_path):
    """--cells-per-job 1: every attack cell is a job of its own (the group's defense fitted again in
    each, with the group's seed), and the records are those of whole groups in one process."""
    _, reference = grid_reference
    executor = ProcessExecutor(2, threads=1, worker_setup=register, cells_per_job=1)
    cells = plan_cells(build_config(GRID))
    group = [c for c in cells if c.group == cells[0].group]
    assert len(group) >= 2
    from audit.executors import GroupJob
    jobs = executor.jobs(GroupJob(0, 0, group[0].cut_point, group[0].defense, "key", tuple(group)))
    assert [job.cells for job in jobs] == [(c,) for c in group]
    report = Audit(build_config(GRID)).run(tmp_path, callbacks=[], executor=executor)
    assert report_values(report) == report_values(reference)
    assert report["environment"]["executor"] == {"name": "local", "workers": 2, "threads": 1, "cells_per_job": 1}


def test_cells_per_job_without_workers_is_refused(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "o"), "--cells-per-job", "2"]) == 2
    assert "--cells-per-job splits groups between workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(AuditInputError, match="--cells-per-job must be at least 1"):
        ProcessExecutor(2, cells_per_job=0)
