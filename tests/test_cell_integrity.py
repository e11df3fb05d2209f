"""Merge and resume do not trust what they read (issue 18): cell files carry a content hash; a cell
whose hash is missing or wrong, whose records are relabelled or duplicated, or that holds NaN/inf is
recomputed on resume (with a warning) and refused by merge (exit 2, nothing written); a partial merge
marks its report; merged reports take the shards' torch thread count."""
import hashlib
import json
import logging
import shutil

import pytest

from audit import Audit, build_config
from audit.cli import main
from audit.core.store import ResultStore
from audit.executors import SequentialExecutor
from audit.merge import strip_timing
from audit.plan import plan_cells, shard_cells
from audit.runner import torch_threads
from tests.conftest import TINY
from tests.test_resume import Count
from tests.worker_plugins import register

# 2 cut points x 1 defense x 1 attack: 2 groups, so shard 1/2 and 2/2 hold one cell each
TWO_CELLS = {**TINY, "cut_points": ["conv1", "fc1"], "defenses": ["none"], "attacks": {"test_probe": {}}}


@pytest.fixture(autouse=True)
def _plugins():
    register()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, _private_cache):
    """Shard 1/2 and 2/2 of TWO_CELLS, each run with 1 torch thread: {1: folder, 2: folder}."""
    register()
    root = tmp_path_factory.mktemp("shards")
    for i in (1, 2):
        Audit(build_config(TWO_CELLS)).run(root / f"s{i}", callbacks=[], shard=(i, 2),
                                           executor=SequentialExecutor(threads=1))
    return {i: root / f"s{i}" for i in (1, 2)}


@pytest.fixture
def copies(shards, tmp_path):
    """Fresh copies of the two shard folders, for a test to damage."""
    return {i: shutil.copytree(folder, tmp_path / f"s{i}") for i, folder in shards.items()}


def cell_file(folder):
    (path,) = sorted((folder / "cells").glob("*.json"))
    return path


def canonical_sha256(records):
    return hashlib.sha256(json.dumps(records, sort_keys=True, separators=(",", ":"), allow_nan=False)
                          .encode()).hexdigest()


def damage(path, how, other_id=None):
    """Damage a cell file the ways the issue lists; returns what the refusal must say."""
    data = json.loads(path.read_text())
    records = data["records"]
    if how == "no_hash":  # as written by splitaudit before content hashes
        del data["sha256"]
        expected = "has no content hash"
    elif how == "edited":
        records[0]["value"] = 0.99
        expected = "do not match its content hash"
    elif how == "nan":
        records[0]["value"] = float("nan")
        data["sha256"] = "0" * 64
        expected = "non-finite numbers (NaN/inf) at records.0.value"
    elif how == "tripled":
        data["records"] = records * 3
        data["sha256"] = canonical_sha256(data["records"])
        expected = "more than once"
    elif how == "relabelled":  # moved to another cell's name, hash kept valid
        data["cell_id"] = other_id
        path.unlink()
        path = path.with_name(f"{other_id}.json")
        expected = "(relabelled)"
    path.write_text(json.dumps(data))
    return path, expected


def test_commit_records_the_sha256_of_the_canonical_records(tmp_path):
    records = [{"cell_id": "c", "status": "ok", "value": 0.5, "ci95": [0.4, 0.6], "extra": {"b": 1, "a": 2}}]
    with ResultStore(tmp_path / "out", "h", {}) as store:
        store.commit("c", records)
        data = json.loads((tmp_path / "out" / "cells" / "c.json").read_text())
        assert data["sha256"] == canonical_sha256(records)
        assert store.load("c") == records and store.done("c")
        # hashed as read back: integer keys (10 sorts before 2 as text) and tuples
        store.commit("d", [{"status": "ok", "extra": {2: "a", 10: "b"}, "ci95": (0.1, 0.2)}])
        assert store.load("d") == [{"status": "ok", "extra": {"2": "a", "10": "b"}, "ci95": [0.1, 0.2]}]


@pytest.mark.parametrize("how", ["no_hash", "edited", "nan", "tripled", "relabelled"])
def test_a_cell_failing_the_integrity_check_is_refused_naming_the_file(tmp_path, caplog, how):
    from audit.core.store import CellIntegrityError, read_cell

    records = [{"cell_id": "c", "attack": "a", "target": "t", "metric": "m", "status": "ok", "value": 0.5}]
    with ResultStore(tmp_path / "out", "h", {}) as store:
        store.commit("c", records)
        path, expected = damage(tmp_path / "out" / "cells" / "c.json", how, other_id="d")
        with pytest.raises(CellIntegrityError) as err:
            read_cell(path)
        assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)
        logger = logging.getLogger("splitaudit")
        logger.addHandler(caplog.handler)
        try:
            assert store.load(path.stem) is None and not store.done(path.stem)  # counts as not finished
        finally:
            logger.removeHandler(caplog.handler)
        assert f"{path}: " in caplog.text and "recomputing the cell" in caplog.text


@pytest.mark.parametrize("how", ["no_hash", "nan"])
def test_resume_recomputes_a_refused_cell_with_a_warning(copies, caplog, how):
    out = copies[1]
    path, expected = damage(cell_file(out), how)
    before = json.loads((out / "report.json").read_text())["results"]
    counter = Count()
    logger = logging.getLogger("splitaudit")
    logger.addHandler(caplog.handler)
    try:
        report = Audit(build_config(TWO_CELLS)).run(out, callbacks=[counter], shard=(1, 2),
                                                    executor=SequentialExecutor(threads=1))
    finally:
        logger.removeHandler(caplog.handler)
    assert counter.cells == [path.stem]
    assert expected in caplog.text and "recomputing the cell" in caplog.text
    assert strip_timing(report["results"]) == strip_timing(before)  # the values before the damage
    assert json.loads(path.read_text())["sha256"] == canonical_sha256(report["results"])


@pytest.mark.parametrize("how", ["no_hash", "edited", "nan", "tripled", "relabelled"])
def test_merge_refuses_a_damaged_cell_and_writes_nothing(copies, tmp_path, capsys, how):
    other_id = cell_file(copies[2]).stem
    path, expected = damage(cell_file(copies[1]), how, other_id=other_id)
    out = tmp_path / "merged"
    assert main(["merge", str(copies[1]), str(copies[2]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and expected in err
    assert "nothing was written" in err and "rerun the audit into the folder named" in err
    assert not out.exists()


def test_partial_merge_marks_the_report_and_check_fails_it(copies, tmp_path, capsys):
    planned = plan_cells(build_config(TWO_CELLS))
    (missing,) = shard_cells(planned, 2, 2)
    assert main(["merge", str(copies[1]), "--out", str(tmp_path / "partial"), "--partial"]) == 0
    env = json.loads((tmp_path / "partial" / "report.json").read_text())["environment"]
    assert env["partial"] is True and env["missing_cells"] == [missing.id] and env["missing_shards"] == ["2/2"]
    assert "the report is PARTIAL: 1 of 2 cells missing (shards 2/2)" in capsys.readouterr().err

    policy = tmp_path / "p.yaml"
    policy.write_text("rules: [{select: {attack: test_probe}, max: 1000}]\n")
    assert main(["check", str(tmp_path / "partial"), "--policy", str(policy)]) == 1
    assert "FAIL [partial-report] the report is partial (merged with --partial): 1 cell(s) missing, in shard(s) 2/2" \
        in capsys.readouterr().out
    assert main(["check", str(tmp_path / "partial"), "--policy", str(policy), "--allow-partial"]) == 0

    assert main(["merge", str(copies[1]), str(copies[2]), "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert whole["environment"]["partial"] is False and "missing_cells" not in whole["environment"]
    assert main(["check", str(tmp_path / "whole"), "--policy", str(policy)]) == 0


def test_a_merged_report_has_the_shards_torch_threads(shards, tmp_path):
    from audit.merge import merge_outputs

    for folder in shards.values():
        assert json.loads((folder / "report.json").read_text())["environment"]["torch_threads"] == 1
    with torch_threads(3):  # the merging process runs with another thread count
        report = merge_outputs(list(shards.values()), tmp_path / "merged")
    assert report["environment"]["torch_threads"] == 1
    assert [m["torch_threads"] for m in report["environment"]["merged_from"]] == [1, 1]
