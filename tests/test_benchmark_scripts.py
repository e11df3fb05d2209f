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


USES_SPLITAUDIT = [p for p in SCRIPTS if any(f"from {pkg}" in p.read_text() for pkg in ("audit", "attacks", "defenses"))]


@pytest.mark.parametrize("path", USES_SPLITAUDIT, ids=[p.stem for p in USES_SPLITAUDIT])
def test_benchmark_script_run_from_the_command_line_sees_the_packages(path):
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path, where benchmarks/defenses.py would
    shadow the `defenses` package (scaling.py failed that way): each script puts its checkout first."""
    import subprocess
    import sys

    root = path.parents[1]
    code = (f"import runpy, sys; sys.path[0] = {str(path.parent)!r}; "
            f"runpy.run_path({str(path)!r}, run_name='benchmark'); "
            "import defenses, defenses.base; print(defenses.__file__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip().splitlines()[-1]) == root / "defenses" / "__init__.py"
