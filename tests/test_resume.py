"""Crash safety of the results store: SIGKILL at any point, rerun, every cell exactly once, same values;
failing cells are recorded and the rest go on."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from audit import Audit, build_config
from audit.cli import main
from audit.core.errors import AuditInputError
from audit.core.store import ResultStore, atomic_write
from audit.merge import report_values
from audit.plan import plan_cells
from audit.runner import RunCallback
from tests.conftest import GRID
from tests.worker_plugins import register

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _plugins():
    register()


class Count(RunCallback):
    def __init__(self):
        self.cells = []

    def on_cell_end(self, run, cell, records, seconds):
        self.cells.append(cell.id)


def _start(config_path, out, cache, *extra):
    """`splitaudit run` in a subprocess (with the test plugins registered), cells on 1 thread."""
    code = ("import sys; from tests.worker_plugins import register; register(); "
            "from audit.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "SPLITAUDIT_CACHE": str(cache)}
    log = open(out.parent / f"{out.name}.log", "ab")
    return subprocess.Popen([sys.executable, "-c", code, "run", str(config_path), "--out", str(out),
                             "--threads", "1", *extra], env=env, stdout=log, stderr=log, cwd=ROOT)


def _wait_for(proc, condition, timeout=600):
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the kill point")
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.05)


def _cell_files(out):
    return sorted((out / "cells").glob("*.json")) if (out / "cells").is_dir() else []


def _descendants(pid):
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _check_store(out, planned_ids):
    for path in _cell_files(out):
        data = json.loads(path.read_text())  # every cell file is whole
        assert data["cell_id"] == path.stem and path.stem in planned_ids and data["records"]


def _kill_pool_mid_grid(config_path, out, cache, planned, at_least):
    """Start with two workers, SIGKILL the driver once ``at_least`` cells are committed; its workers must die too."""
    proc = _start(config_path, out, cache, "--workers", "2")
    _wait_for(proc, lambda: len(_descendants(proc.pid)) >= 2 and len(_cell_files(out)) >= at_least)
    family = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)], "worker processes outlived the killed driver"
    _check_store(out, planned)
    assert len(_cell_files(out)) < len(planned)


def _finish_and_compare(config_path, out, cache, planned, reference):
    proc = _start(config_path, out, cache)
    assert proc.wait(timeout=900) == 0
    assert {p.stem for p in _cell_files(out)} == planned
    assert not list(out.glob("**/.*.tmp"))
    final = json.loads((out / "report.json").read_text())
    per_cell = {}
    for r in final["results"]:
        per_cell.setdefault(r["cell_id"], []).append(r)
    assert set(per_cell) == planned
    for records in per_cell.values():  # exactly once: one record per (target, metric) of the cell
        keys = [(r["target"], r["metric"]) for r in records]
        assert len(keys) == len(set(keys))
    assert report_values(final) == report_values(reference)


def _setup(tmp_path):
    config_path = tmp_path / "grid.yaml"
    config_path.write_text(yaml.safe_dump(GRID))
    return config_path, {c.id for c in plan_cells(build_config(GRID))}


def test_sigkill_mid_grid_then_rerun_gives_every_cell_once_with_the_uninterrupted_values(
    grid_reference, tmp_path, _private_cache
):
    """The driver (with two local workers) is SIGKILLed mid-grid; a plain rerun finishes the grid."""
    _, reference = grid_reference
    config_path, planned = _setup(tmp_path)
    out = tmp_path / "out"
    _kill_pool_mid_grid(config_path, out, _private_cache, planned, at_least=2)
    _finish_and_compare(config_path, out, _private_cache, planned, reference)


@pytest.mark.slow
def test_sigkill_at_several_points_with_a_cold_cache(grid_reference, tmp_path):
    """Killed while training the task model, after the first cell, and mid-grid with workers;
    the last rerun retrains (deterministically) and equals the reference run made with another cache."""
    _, reference = grid_reference
    config_path, planned = _setup(tmp_path)
    cache, out = tmp_path / "cache", tmp_path / "out"

    proc = _start(config_path, out, cache)
    log = tmp_path / "out.log"
    _wait_for(proc, lambda: log.exists() and b"training the task model" in log.read_bytes())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(cache.glob("task_models/*.pt")) and not _cell_files(out)

    proc = _start(config_path, out, cache)
    _wait_for(proc, lambda: len(_cell_files(out)) >= 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _check_store(out, planned)
    done = len(_cell_files(out))
    assert done < len(planned)

    _kill_pool_mid_grid(config_path, out, cache, planned, at_least=done + 2)
    _finish_and_compare(config_path, out, cache, planned, reference)


def test_failing_cells_are_recorded_the_rest_go_on_and_the_exit_code_says_so(tmp_path, tiny_config, capsys):
    tiny_config.update(cut_points=["fc1"], defenses=["none", "test_nan", "test_oom"], attacks={"test_probe": {}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    by_defense = {r["defense"]: r for r in report["results"]}
    assert by_defense["none"]["status"] == "ok" and by_defense["none"]["value"] is not None
    assert by_defense["test_nan"]["status"] == "failed"
    assert "released NaN/inf features" in by_defense["test_nan"]["error"]
    assert by_defense["test_oom"]["status"] == "failed"
    assert "can't allocate memory" in by_defense["test_oom"]["error"] or "memory" in by_defense["test_oom"]["error"].lower()
    assert "2 cell(s) failed" in capsys.readouterr().err
    # a rerun retries the failed cells only (and they fail again)
    counter = Count()
    again = Audit(build_config(tiny_config)).run(tmp_path / "out", callbacks=[counter])
    assert len(counter.cells) == 2 and sum(r["status"] == "failed" for r in again["results"]) == 2


def test_a_damaged_cell_file_is_recomputed(grid_reference, tmp_path):
    ref_dir, reference = grid_reference
    import shutil

    from audit.executors import SequentialExecutor

    out = tmp_path / "copy"
    shutil.copytree(ref_dir, out)
    victim = _cell_files(out)[0]
    victim.write_text('{"cell_id": "')  # not something our atomic writes can leave
    counter = Count()
    report = Audit(build_config(GRID)).run(out, callbacks=[counter], executor=SequentialExecutor(threads=1))
    assert counter.cells == [victim.stem]
    assert report_values(report) == report_values(reference)


def test_commit_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "out", "h", {})
    store.commit("a", [{"status": "ok"}])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        store.commit("a", [{"status": "ok", "new": True}])
    with pytest.raises(OSError):
        store.commit("b", [{"status": "ok"}])
    monkeypatch.undo()
    assert store.load("a") == [{"status": "ok"}] and store.load("b") is None
    assert sorted(p.name for p in (tmp_path / "out" / "cells").iterdir()) == ["a.json"]
    store.close()


def test_two_writers_of_one_cache_file_do_not_share_a_temporary_file(tmp_path):
    """Two audits sharing a cache may fill the same file at once (both decode UTKFace): each
    writer gets its own temporary file, the last rename wins whole, and nothing is left behind.
    With one fixed temporary name the inner writer renames the outer one's file away."""
    target = tmp_path / "cache" / "images.pt"
    with atomic_write(target) as outer:
        outer.write_text("outer")
        with atomic_write(target) as inner:
            assert inner != outer
            inner.write_text("inner")
        assert target.read_text() == "inner"
    assert target.read_text() == "outer"
    with pytest.raises(RuntimeError, match="decoding failed"), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("decoding failed")
    assert target.read_text() == "outer"
    assert [p.name for p in target.parent.iterdir()] == ["images.pt"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_one_run_at_a_time_per_folder_and_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "out"
    with ResultStore(out, "h", {}):
        with pytest.raises(AuditInputError, match=rf"in use by another splitaudit run \(pid {os.getpid()}\)"):
            ResultStore(out, "h", {})
    ResultStore(out, "h", {}).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from audit.core.store import ResultStore; "
         f"s = ResultStore({str(out)!r}, 'h', {{}}); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )
    assert holder.stdout.readline().strip() == b"locked"
    with pytest.raises(AuditInputError, match="in use"):
        ResultStore(out, "h", {})
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    ResultStore(out, "h", {}).close()  # no stale lock after a SIGKILL


def _faces(folder: Path, n: int, start: int = 0, shift: int = 0) -> None:
    """``n`` tiny UTKFace-named JPEGs (ages, genders and races cycling) in ``folder``; ``shift`` changes their
    colours, not their names."""
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for i in range(start, start + n):
        color = ((37 * i + shift) % 256, 91 * i % 256, 53 * i % 256)
        Image.new("RGB", (12, 12), color).save(folder / f"{20 + i % 50}_{i % 2}_{i % 3}_20170109{i:09d}.jpg.chip.jpg",
                                               format="JPEG")


def test_data_changed_under_the_same_parameters_is_refused_not_mixed_in(tmp_path):
    """Data that changed under the same task key: a UTKFace folder's key is read once per process, so images
    edited in place (same names) keep it until the next process (a torchvision set's root is not in its key
    at all). The cached task model and the committed cells then belong to other data: a clear error,
    nothing overwritten, instead of an audit mixing the two."""
    root = tmp_path / "faces"
    _faces(root, 60)
    config = build_config({"name": "faces", "seeds": [0], "n_boot": 50,
                           "dataset": {"name": "utkface", "root": str(root), "image_size": 8, "private": ["race"]},
                           "model": {"name": "small_cnn", "widths": [4], "fc": [8]}, "training": {"epochs": 1},
                           "cut_points": ["conv1"], "defenses": ["none"], "attacks": {"test_probe": {}}})
    out = tmp_path / "out"
    report = Audit(config).run(out, callbacks=[])
    cell = report["results"][0]["cell_id"]
    summary = json.loads(next((out / "tasks").glob("*.json")).read_text())
    assert len(summary["data_fingerprint"]) == 16 and summary["task_model"]["data_fingerprint"] == summary["data_fingerprint"]

    _faces(root, 4, shift=128)  # four images edited in place: the same task key in this process
    (out / "cells" / f"{cell}.json").unlink()  # one cell left to compute on resume
    with pytest.raises(AuditInputError, match="cached task model .* was trained on other data"):
        Audit(config).run(out, callbacks=[])
    model = Path(summary["task_model"]["path"])
    model.unlink()  # retrained on the new data: now the committed cells are the old data's
    with pytest.raises(AuditInputError, match="holds cells of .* computed on other data"):
        Audit(config).run(out, callbacks=[])
    assert json.loads(next((out / "tasks").glob("*.json")).read_text()) == summary  # nothing overwritten
    assert Audit(config).run(tmp_path / "new", callbacks=[])["tasks"][0]["data_fingerprint"] != summary["data_fingerprint"]
