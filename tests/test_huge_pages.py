"""Transparent huge pages for the C heap (audit.core.heap): when the program restarts itself, and with what."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit.core.heap import (
    HUGE_PAGES_MIN_INPUT,
    huge_page_environment,
    huge_pages_in_use,
    huge_pages_pay_off,
    huge_pages_possible,
)

ROOT = Path(__file__).resolve().parents[1]
MACHINE_CAN = huge_pages_possible()


def test_the_tunable_is_added_to_what_the_environment_already_asks_of_glibc():
    env = huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.check=0", "A": "b"}, mode="madvise", glibc=(2, 36))
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.hugetlb=1", "A": "b"}
    assert huge_page_environment({}, mode="always", glibc=(2, 35)) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize("environ, mode, glibc", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36)),  # the user chose: kept
    ({"SPLITAUDIT_HUGE_PAGES": "0"}, "madvise", (2, 36)),  # opted out
    ({}, "never", (2, 36)),  # the kernel gives no huge pages
    ({}, "madvise", (2, 34)),  # glibc without the tunable
])
def test_no_restart_when_there_is_nothing_to_gain_or_the_user_chose(environ, mode, glibc):
    assert huge_page_environment(environ, mode=mode, glibc=glibc) is None


def test_the_report_says_whether_huge_pages_are_in_use():
    assert not huge_pages_in_use({})
    assert not huge_pages_in_use({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert huge_pages_in_use({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == MACHINE_CAN


def _program(extra_env: dict, *command: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """A `splitaudit COMMAND` program; the lines it prints of its GLIBC_TUNABLES, once per start of the process."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SPLITAUDIT_HUGE_PAGES")}
    env.update(extra_env, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    code = ("import os, sys; print('started', os.environ.get('GLIBC_TUNABLES'), file=sys.stderr); "
            "from audit.cli import entry; entry()")
    done = subprocess.run([sys.executable, "-c", code, *command], env=env, capture_output=True, text=True, timeout=300)
    return done, [line for line in done.stderr.splitlines() if line.startswith("started")]


def test_huge_pages_pay_off_for_large_inputs_only():
    """configs/utkface.yaml (3 x 64 x 64) ran 1.11x faster with them, the embedded default (16 x 16, 8 x 8)
    1.11-1.15x slower (audit.core.heap)."""
    from audit.commands.run import huge_pages_pay_off_for
    from audit.config import load_config

    assert huge_pages_pay_off([None, 3 * 64 * 64]) and not huge_pages_pay_off([16 * 16, 8 * 8, None])
    assert huge_pages_pay_off([HUGE_PAGES_MIN_INPUT]) and not huge_pages_pay_off([HUGE_PAGES_MIN_INPUT - 1])
    assert huge_pages_pay_off_for(load_config(str(ROOT / "configs" / "utkface.yaml"), []))
    assert not huge_pages_pay_off_for(load_config(None, []))  # the embedded default


@pytest.mark.skipif(not MACHINE_CAN, reason="needs glibc >= 2.35 and transparent huge pages (madvise or always)")
def test_run_restarts_once_with_huge_pages_for_large_inputs_and_not_when_opted_out(tmp_path):
    # the config is read, the run restarted, then --workers 0 refused: no audit needed to see the restart
    large = ["run", "--set", "tasks.0.dataset.image_size=64", "--workers", "0"]
    done, starts = _program({}, *large)
    assert starts == ["started None", "started glibc.malloc.hugetlb=1"]
    assert done.returncode == 2 and "--workers" in done.stderr
    done, starts = _program({"SPLITAUDIT_HUGE_PAGES": "0"}, *large)
    assert starts == ["started None"] and done.returncode == 2
    done, starts = _program({}, "run", "--workers", "0")  # the embedded default: 16 x 16 and 8 x 8 inputs
    assert starts == ["started None"] and done.returncode == 2
    done, starts = _program({}, "run", str(tmp_path / "missing.yaml"))  # no config, no restart
    assert starts == ["started None"] and done.returncode == 2 and "missing.yaml" in done.stderr


def test_commands_that_train_nothing_start_once():
    done, starts = _program({}, "list")
    assert done.returncode == 0, done.stderr
    assert "  small_cnn " in done.stdout
    assert starts == ["started None"]
