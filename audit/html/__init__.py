"""report.html: one self-contained page per audit (inline CSS, figures as base64 PNG, no
network references) rendered with jinja2 from report.json's content.

    from audit.html import write_html_report
    write_html_report("audit_out", report)      # -> audit_out/report.html (+ figures/*.png)

The figures are also saved as ``OUT/figures/<name>.png`` with ``figures.json`` (title and
caption of each), which the W&B tracker logs.
"""
from __future__ import annotations

import base64
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from audit.core.store import atomic_write

FIGURES_DIR = "figures"


def _task_infos(report: dict[str, Any]) -> list[dict[str, str]]:
    from audit.core.records import fmt_ci
    from audit.html.tables import human_count

    rows = []
    for t in report.get("tasks") or []:
        n = t.get("n") or {}
        rows.append({
            "dataset": t.get("dataset"), "model": t.get("model"), "seed": t.get("seed"), "primary": t.get("primary"),
            "private": ", ".join(t.get("private") or []),
            "splits": " / ".join(str(n.get(k, "?")) for k in ("train", "aux", "test")),
            "attacker": f"{t.get('attacker_data', 'aux')} ({t['n_attacker']:,})" if "n_attacker" in t else "aux",
            "accuracy": fmt_ci(t.get("primary_accuracy"), t.get("primary_accuracy_ci95")),
            "flops": human_count(t.get("full_flops"), "FLOP"),
            "provenance": task_model_provenance(t.get("task_model")),
        })
    return rows


def task_model_provenance(info: dict[str, Any] | None) -> str:
    """One line on where a task model came from, e.g. "from cache; trained 2026-12-02 in 14.1 min
    (torch 2.14.0, 2 threads, cpu, bf16-mixed)". A cached model trained elsewhere may score differently."""
    if not info:
        return "-"
    source = info.get("source")
    if source == "given":
        return "as given (training.epochs: 0)"
    how = [f"torch {info['torch']}"] if "torch" in info else []
    if "torch_threads" in info:
        how.append(f"{info['torch_threads']} threads")
    if "device" in info:
        how.append(str(info["device"]))
    if "precision" in info:
        how.append(str(info["precision"]))
    seconds = info.get("seconds")
    took = "" if not isinstance(seconds, (int, float)) else (
        f" in {seconds:.1f} s" if seconds < 60 else f" in {seconds / 60:.1f} min")
    detail = f"{took} ({', '.join(how)})" if how else took
    if source == "trained":
        return f"trained in this run{detail}"
    if "trained_at" in info:
        return f"from cache; trained {str(info['trained_at'])[:10]}{detail}"
    return "from cache (no training record)"


CONSTRAINTS = {"max_edge_flops", "max_accuracy_drop", "max_bytes_sent", "require_no_evidence"}


def _constraints_text(decision) -> str | None:
    return None if decision is None else decision.text()


def timing_rows(timings: dict[str, Any] | None) -> list[dict[str, str]]:
    """Rows of the 'where the time went' table (stage, seconds, share of the total, count, the stage's
    peak resident memory where recorded), largest first."""
    if not timings:
        return []

    def peak(mb: float | None) -> str:
        return f"{mb / 1024:.2f}" if mb else ""

    driver_peaks, group_peaks = timings.get("driver_peak_mb") or {}, timings.get("group_peak_mb") or {}
    rows = [(f"driver: {k.removesuffix('_seconds').replace('_', ' ')}", v, "",
             peak(driver_peaks.get(k.removesuffix("_seconds") + "_peak_mb")))
            for k, v in (timings.get("driver_seconds") or {}).items()]
    rows += [(f"groups: {k.removesuffix('_seconds').replace('_', ' ')}", v, "",
              peak(group_peaks.get(k.removesuffix("_seconds") + "_peak_mb")))
             for k, v in (timings.get("group_seconds") or {}).items()]
    for name, a in (timings.get("attack_seconds") or {}).items():
        rows += [(f"attack {name}: fit", a.get("fit_seconds", 0.0), str(a.get("cells", "")), peak(a.get("fit_peak_mb"))),
                 (f"attack {name}: score", a.get("score_seconds", 0.0), str(a.get("cells", "")),
                  peak(a.get("score_peak_mb")))]
    total = sum(v for _, v, _, _ in rows) or 1.0
    return [{"stage": stage, "seconds": f"{v:.1f}", "share": f"{100 * v / total:.0f}%", "count": count, "peak_gb": p}
            for stage, v, count, p in sorted(rows, key=lambda r: -r[1])]


def _peak_rss(timings: dict[str, Any] | None) -> str:
    peak = (timings or {}).get("peak_rss_mb") or {}
    if not peak:
        return ""
    groups = f", largest group stage {peak['groups'] / 1024:.2f} GB" if peak.get("groups") else ""
    return f"driver {peak.get('driver', 0) / 1024:.2f} GB{groups}"


def render_html(report: dict[str, Any], out_dir: str | Path, figures: list | None = None) -> str:
    """The page for ``report``; ``out_dir`` is where relative artifact paths (grids) point.
    ``figures`` (from :func:`audit.html.figures.all_figures`) are rendered when not given."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    from audit.decision import decision_of, decision_rows, settings_of
    from audit.html.figures import all_figures
    from audit.html.tables import all_labels, cost_rows, decision_table, failed_rows, grids, summary, tasks_of
    from audit.verdicts import comparisons

    out_dir = Path(out_dir)
    labels = all_labels(report)
    tasks = tasks_of(report)
    settings = settings_of(report)
    leaking = {id(c.record) for c in comparisons(report["results"], settings) if c.leaks(settings.alpha)}
    decision = decision_of(report)
    constrained = decision if decision.model_dump(include=CONSTRAINTS, exclude_defaults=True) else None
    rows_by_task: dict[str, list] = {}
    for row in decision_rows(report, decision):
        rows_by_task.setdefault(f"{row.dataset} / {row.model}", []).append(row)
    figures = all_figures(tasks, labels) if figures is None else figures
    uri = lambda f: {"title": f.title, "caption": f.caption,
                     "src": "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")}
    views = []
    for task in tasks:
        mine = [f for f in figures if f.task == task.title]
        views.append({
            "title": task.title,
            "summary": summary(task, labels, leaking),
            "decision": decision_table(rows_by_task.get(task.title, []), constrained),
            "frontier": [uri(f) for f in mine if f.kind == "frontier"],
            "leakage": [uri(f) for f in mine if f.kind == "leakage"],
            "cost": cost_rows(task, labels),
            "grids": grids(task, labels, out_dir),
        })
    templates = files("audit").joinpath("templates")
    env = Environment(loader=FileSystemLoader(str(templates)), autoescape=select_autoescape(["html", "j2"]))
    results = report["results"]
    failed = failed_rows(report, labels)
    config = report.get("config") or {}
    return env.get_template("report.html.j2").render(
        name=config.get("name", "audit"), created=report.get("created", ""), schema_version=report.get("schema_version"),
        n_cells=len({r.get("cell_id") for r in results}), n_records=len(results), n_failed=len(failed),
        seeds=", ".join(str(s) for s in (report.get("environment") or {}).get("seeds", [])),
        device=(report.get("environment") or {}).get("device", "?"),
        alpha=settings.alpha, power=settings.power, constraints=_constraints_text(constrained),
        tasks=views, has_grids=any(v["grids"] for v in views), failed=failed, task_infos=_task_infos(report),
        timing_rows=timing_rows(report.get("timings")), peak_rss=_peak_rss(report.get("timings")),
        threat_model=Markup(templates.joinpath("threat_model.html").read_text(encoding="utf-8")),
        config_yaml=yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100),
        environment_yaml=yaml.safe_dump(report.get("environment") or {}, sort_keys=False, width=100),
    )


def write_figures(out_dir: Path, figures: list) -> None:
    """PNG files and an index (``figures.json``: file, title, caption, kind, task) under OUT/figures/."""
    folder = out_dir / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    index = []
    for f in figures:
        (folder / f"{f.name}.png").write_bytes(f.png)
        index.append({"file": f"{f.name}.png", "title": f.title, "caption": f.caption, "kind": f.kind, "task": f.task})
    (folder / "figures.json").write_text(json.dumps(index, indent=1), encoding="utf-8")


def write_html_report(out_dir: str | Path, report: dict[str, Any]) -> Path:
    """Render ``report`` into ``out_dir/report.html`` (atomically) and save its figures; returns the path."""
    from audit.html.figures import all_figures
    from audit.html.tables import all_labels, tasks_of

    out_dir = Path(out_dir)
    figures = all_figures(tasks_of(report), all_labels(report))
    page = render_html(report, out_dir, figures)
    write_figures(out_dir, figures)
    path = out_dir / "report.html"
    with atomic_write(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
