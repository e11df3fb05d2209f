"""The house reads bottom-up (docs/ARCHITECTURE.md): no import cycle, and no import from a lower layer
into a higher one (function-level imports included; type-checking-only imports excluded)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "attacks", "defenses")
CORE = ("audit.core",)  # registry, discovery, errors, paths, data, models, training, stats, stores, records, profile
DOCUMENTS = ("audit.report", "audit.html", "audit.verdicts", "audit.decision")  # report.json (with its verdicts),
# results.csv, report.html, written by the runner
ENGINE = ("audit.pipeline", "audit.plan", "audit.tasks", "audit.runner", "audit.executors", "audit.preflight", "audit.merge",
          "audit.config")


def layer(module: str) -> int:
    """0 core, 1 plugins, 2 report documents, 3 engine (and the config it runs), 4 on top: the gate, W&B,
    progress output, the CLI and its commands, the Python API."""
    for rank, prefixes in enumerate((CORE, ("attacks", "defenses"), DOCUMENTS, ENGINE)):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return 4


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = f
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ours that ``path`` imports anywhere (not under ``if TYPE_CHECKING``)."""
    out: set[str] = set()

    def visit(node, type_checking=False):
        for child in ast.iter_child_nodes(node):
            tc = type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if not tc and isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.update(m for m in [child.module, *(f"{child.module}.{a.name}" for a in child.names)] if m in known)
            elif not tc and isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name in known)
            visit(child, tc)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return out


def test_no_import_cycle():
    known = modules()
    graph = {m: imports(f, known) - {m} for m, f in known.items()}
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def walk(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                walk(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])


def test_no_import_runs_up_the_layers():
    known = modules()
    upward = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, f in sorted(known.items())
              for d in sorted(imports(f, known)) if layer(d) > layer(m) and not m.startswith(d + ".")]
    assert not upward, "\n".join(upward)
