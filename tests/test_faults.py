"""Faults end a run with one clear line and a distinct exit code, losing no finished cell:
signals (a real subprocess), a full disk, a read-only or dangling --out, a failed validation."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from audit.cli import main
from audit.config import build_config
from audit.core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_IO, EXIT_TERMINATED
from audit.core.store import ResultStore
from audit.plan import plan_cells

ROOT = Path(__file__).resolve().parents[1]


def _cells(out):
    return {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")} if (out / "cells").is_dir() else {}


def _one_line(err):
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err, err
    return lines[-1]


@pytest.fixture
def config_path(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


def _tmpfs(path, options):
    """A tmpfs mounted at ``path`` (needs root and mount rights; the test is skipped otherwise)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def mounts():
    mounted = []

    def mount(path, options):
        _tmpfs(path, options)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ------------------------------------------------------------------------------------------- signals
SIGNAL_CONFIG = {"name": "signals", "seeds": [0], "n_boot": 100,
                 "dataset": {"name": "synthetic", "n": 200, "image_size": 8, "strength": 0.3},
                 "model": {"name": "small_cnn", "widths": [8], "fc": [16]}, "cut_points": ["conv1", "fc1"],
                 "training": {"epochs": 1}, "defenses": ["none"],
                 "attacks": {"attribute_linear": {}, "test_slow_fit": {}}}


@pytest.mark.parametrize("signum, code, says", [(signal.SIGINT, EXIT_INTERRUPTED, "splitaudit: interrupted"),
                                                (signal.SIGTERM, EXIT_TERMINATED, "splitaudit: stopped by SIGTERM")])
def test_a_signal_during_training_stops_the_run_with_one_line_keeping_finished_cells(tmp_path, signum, code, says):
    """The signal lands inside a Lightning fit (test_slow_fit, after one cell is committed): the run
    ends with one line and 130 / 143, the finished cell is kept, and the rerun resumes."""
    from tests.signal_plugins import MARK_ENV, register

    register()
    config_path = tmp_path / "signals.yaml"
    config_path.write_text(yaml.safe_dump(SIGNAL_CONFIG))
    out, mark = tmp_path / "out", tmp_path / "in-fit"
    code_ = ("import sys; from tests.signal_plugins import register; register(); "
             "from audit.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", code_, "run", str(config_path), "--out", str(out), "-q", "--threads", "1"]
    proc = subprocess.Popen(cmd, env={**env, MARK_ENV: str(mark)}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (mark.exists() and _cells(out)):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    line = _one_line(err)
    assert line.startswith(says) and "1 finished cell(s) kept" in line and "rerun" in line, err
    kept = _cells(out)
    assert len(kept) == 1 and not (out / "report.json").exists()
    assert not list(out.glob("**/.*.tmp"))
    # the rerun resumes: the kept cell is not recomputed, the rest are done
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    after = _cells(out)
    assert {k: after[k] for k in kept} == kept
    assert {Path(k).stem for k in after} == {c.id for c in plan_cells(build_config(SIGNAL_CONFIG))}


# ------------------------------------------------------------------------------------------- I/O
def test_a_full_disk_at_commit_is_an_io_error_and_the_rerun_resumes(tmp_path, config_path, monkeypatch, capsys):
    out = tmp_path / "out"
    commit = ResultStore.commit
    calls = []

    def full_disk(self, cell_id, records):
        calls.append(cell_id)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.out_dir / "cells" / f"{cell_id}.json"))
        commit(self, cell_id, records)

    monkeypatch.setattr(ResultStore, "commit", full_disk)
    assert main(["run", str(config_path), "--out", str(out), "-q"]) == EXIT_IO
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("splitaudit: I/O error: No space left on device (ENOSPC)") and "1 finished cell(s) kept" in line
    kept = _cells(out)
    assert len(kept) == 1
    monkeypatch.setattr(ResultStore, "commit", commit)
    assert main(["run", str(config_path), "--out", str(out), "-q"]) == 0
    assert len(_cells(out)) == 4 and {k: _cells(out)[k] for k in kept} == kept


def test_a_full_disk_at_report_time_keeps_every_cell(tmp_path, config_path, monkeypatch, capsys):
    import audit.runner

    out = tmp_path / "out"

    def full_disk(folder, report):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "report.json"))

    monkeypatch.setattr(audit.runner, "write_report", full_disk)
    assert main(["run", str(config_path), "--out", str(out), "-q"]) == EXIT_IO
    line = _one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "report.json" in line and "4 finished cell(s) kept" in line
    monkeypatch.undo()
    assert main(["run", str(config_path), "--out", str(out), "-q"]) == 0
    assert json.loads((out / "report.json").read_text())["results"]


def test_a_read_only_out_is_an_io_error_before_anything_runs(tmp_path, config_path, mounts, capsys):
    ro = mounts(tmp_path / "ro", "ro,size=64k")
    assert main(["run", str(config_path), "--out", str(ro / "out"), "-q"]) == EXIT_IO
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("splitaudit: I/O error: --out") and "Read-only file system" in line


def test_a_read_only_cache_is_an_io_error_naming_it(tmp_path, config_path, mounts, capsys):
    ro = mounts(tmp_path / "ro", "ro,size=64k")
    out = tmp_path / "out"
    assert main(["run", str(config_path), "--out", str(out), "--cache-dir", str(ro / "cache"), "-q"]) == EXIT_IO
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("splitaudit: I/O error: Read-only file system (EROFS)") and str(ro) in line
    assert main(["run", str(config_path), "--out", str(out), "-q"]) == 0  # the same OUT, a writable cache


def test_a_dangling_symlink_out_is_bad_input(tmp_path, config_path, capsys):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    assert main(["run", str(config_path), "--out", str(link), "-q"]) == EXIT_BAD_INPUT
    line = _one_line(capsys.readouterr().err)
    assert "is a symbolic link to" in line and "gone" in line and "which does not exist" in line
    assert link.is_symlink() and not (tmp_path / "gone").exists()


MAPPED_WRITE = textwrap.dedent("""
    import sys
    import numpy as np
    from audit.core.errors import reserve_file_space
    out = np.lib.format.open_memmap(sys.argv[1], mode="w+", dtype=np.float32, shape=(1 << 18,))  # 1 MB
    if sys.argv[2] == "reserve":
        try:
            reserve_file_space(sys.argv[1])
        except OSError as err:
            print(err.errno, err.filename)
            sys.exit(3)
    out[:] = 1.0
    out.flush()
""")


def test_reserving_a_mapped_file_turns_sigbus_on_a_full_disk_into_enospc(tmp_path, mounts):
    small = mounts(tmp_path / "small", "size=256k")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = lambda *a: subprocess.run([sys.executable, "-c", MAPPED_WRITE, *a], env=env, capture_output=True, text=True)
    plain = run(str(small / "a.npy"), "plain")
    assert plain.returncode == -signal.SIGBUS  # the hazard: a write through the mapping finds no block
    (small / "a.npy").unlink()
    reserved = run(str(small / "b.npy"), "reserve")
    assert reserved.returncode == 3 and reserved.stdout.split() == [str(errno.ENOSPC), str(small / "b.npy")]


def test_a_full_disk_during_feature_extraction_is_an_io_error_not_sigbus(tmp_path, config_path, mounts):
    small = mounts(tmp_path / "small", "size=512k")  # cells fit; the conv1 features (~800 KB) do not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "audit", "run", str(config_path), "--out", str(small / "out"), "-q"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_IO, (done.returncode, done.stderr)
    assert "No space left on device" in _one_line(done.stderr)


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override, says", [
    ("cut_points=[conv1,fc9]", "unknown cut point 'fc9' for model 'small_cnn'; its cut points: conv1"),
    ("dataset={name: utkface, root: /no/such/folder}", "'/no/such/folder' does not exist"),
])
def test_a_run_that_fails_validation_leaves_out_reusable(tmp_path, config_path, capsys, override, says):
    out = tmp_path / "out"
    assert main(["run", str(config_path), "--out", str(out), "--set", override]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert says in _one_line(captured.err) and "cells" not in captured.err
    assert not (out / "audit.json").exists()
    assert main(["run", str(config_path), "--out", str(out), "-q"]) == 0  # the corrected rerun


# ------------------------------------------------------------------------------------------- HE scratch
def test_he_scratch_of_a_killed_process_is_removed_by_the_next_one(tmp_path):
    from defenses.he.ckks import SCRATCH_PREFIX, Scratch

    code = "import os, signal; from defenses.he.ckks import Scratch; s = Scratch(); print(s.dir, flush=True); " \
           "os.kill(os.getpid(), signal.SIGKILL)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL
    left = Path(done.stdout.strip())
    assert left.is_dir() and left.name.startswith(SCRATCH_PREFIX)
    mine = Scratch()
    try:
        assert not left.exists()
        assert Path(mine.dir).name.startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
    finally:
        mine.close()
