"""The benchmark scripts stay importable against the current code (they are run by hand, not in CI):
importing one runs nothing, and every name it imports from splitaudit exists."""
import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_script_imports(path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top-level imports only: each script guards its work with __main__
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 5
