"""The report's figures (matplotlib, Agg, no pyplot state): leakage vs cut point with CI
bands, and the privacy-utility frontier with its Pareto points. Every figure states its
seed(s) and number of evaluation samples in a footer, so a PNG taken out of the report
(e.g. into W&B) still says what produced it."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

from audit.core.paths import path_component
from audit.core.records import leakage, orientation, unit_of
from audit.html.tables import Point, Task, aggregate, worst

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


@dataclass
class Figure:
    name: str  # file stem, unique within a report
    title: str
    caption: str
    png: bytes
    kind: str  # "leakage" or "frontier"
    task: str


def slug(*parts: str) -> str:
    """A figure's file name (no suffix) from its parts: safe and distinct per parts (audit.core.paths)."""
    return path_component("_".join(parts))


def _seeds_n(records) -> str:
    seeds = sorted({r["seed"] for r in records})
    n = sorted({r["n_eval"] for r in records if r.get("n_eval") is not None})
    n_text = str(n[0]) if len(n) == 1 else (f"{n[0]}–{n[-1]}" if n else "n/a")
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} · n_eval = {n_text} per point"


def _label(metric: str, unit: str) -> str:
    return f"{metric} ({unit})" if unit else metric


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _new_figure(n_panels: int, cols: int = 3, width: float = 4.4, height: float = 3.4):
    from matplotlib.figure import Figure as MplFigure

    cols = min(cols, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = MplFigure(figsize=(max(width * cols, 8.0), height * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _titles(fig, title: str, footer: str) -> None:
    """Title on top; the footer (seeds, n, how to read) wrapped to the figure's width at the
    bottom; constrained layout makes room for both."""
    import textwrap

    fig.suptitle(title, fontsize=12)
    fig.supxlabel("\n".join(textwrap.wrap(footer, int(fig.get_figwidth() * 15))), fontsize=8, color="0.3")


def leakage_figures(task: Task, labels: dict, colors: dict) -> list[Figure]:
    """One figure per (attack, target): a panel per metric, the value at every cut point per
    defense (mean over seeds) with its 95% CI band (envelope over seeds) and the chance level."""
    figures = []
    by_attack_target: dict[tuple[str, str], list[str]] = {}
    for attack, target, metric in task.measures:
        by_attack_target.setdefault((attack, target), []).append(metric)
    x = list(range(len(task.cut_points)))
    for (attack, target), metrics in by_attack_target.items():
        fig, axes = _new_figure(len(metrics))
        used = []
        for ax, metric in zip(axes, metrics):
            unit = ""
            for dkey in task.defenses:
                points: list[Point | None] = []
                for cut in task.cut_points:
                    recs = task.select(cut_point=cut, defense=dkey, attack=attack, target=target, metric=metric)
                    points.append(aggregate(recs) if recs else None)
                    used += recs
                    unit = unit or (unit_of(recs[0]) if recs else "")
                xs = [i for i, p in zip(x, points) if p is not None]
                ps = [p for p in points if p is not None]
                if not ps:
                    continue
                color = colors[dkey]
                ax.plot(xs, [p.value for p in ps], marker="o", color=color, label=labels[dkey], lw=1.8)
                ax.fill_between(xs, [p.low for p in ps], [p.high for p in ps], color=color, alpha=0.18, lw=0)
            chance = [aggregate(rs).chance
                      if (rs := task.select(cut_point=c, attack=attack, target=target, metric=metric)) else None
                      for c in task.cut_points]
            if any(c is not None for c in chance):
                ax.plot(x, [math.nan if c is None else c for c in chance], ls="--", color="0.35", lw=1.2, label="chance")
            ax.set_xticks(x, task.cut_points, rotation=30 if len(x) > 5 else 0)
            ax.set_xlabel("cut point (edge → deeper)")
            direction = "" if not used or orientation(used[-1]) > 0 else "  (lower = more leakage)"
            ax.set_ylabel(_label(metric, unit) + direction)
            ax.set_title(metric, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8, loc="best")
        title = f"{task.title}: {attack} → {target}"
        footer = f"{_seeds_n(used)} · line: estimate (mean over seeds) · band: 95% bootstrap CI · dashed: chance"
        _titles(fig, title, footer)
        figures.append(Figure(slug("leakage", task.dataset, task.model, attack, target), title,
                              f"Leakage of {target} by the {attack} attack at each cut point, per defense. {footer}.",
                              _png(fig), "leakage", task.title))
    return figures


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For (leakage, accuracy) points, True where no other point has leakage <= and accuracy >=
    with at least one strict (lower leakage and higher accuracy are better)."""
    flags = []
    for i, (l1, a1) in enumerate(points):
        dominated = any(l2 <= l1 and a2 >= a1 and (l2 < l1 or a2 > a1) for j, (l2, a2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def frontier_points(task: Task, target: str, metric: str) -> list[dict]:
    """Per (cut point, defense, seed): the strongest attack's record (the attacker picks the best
    attack) and the primary accuracy through the defense."""
    out = []
    for cut in task.cut_points:
        for dkey in task.defenses:
            for seed in task.seeds:
                w = worst(task.select(cut_point=cut, defense=dkey, seed=seed, target=target, metric=metric))
                acc = (w.get("utility") or {}).get("primary_accuracy") if w else None
                if w is None or acc is None:
                    continue
                out.append({"record": w, "cut": cut, "defense": dkey, "leak": leakage(w)[0], "acc": acc,
                            "acc_ci": (w.get("utility") or {}).get("primary_accuracy_ci95")})
    return out


def frontier_figure(task: Task, labels: dict, colors: dict) -> Figure | None:
    """The privacy-utility frontier: a panel per (target, metric); each point a (cut point,
    defense) with the strongest attack's leakage (x, 95% CI) and the primary accuracy (y, 95% CI);
    Pareto-optimal points are filled and joined, dominated ones hollow."""
    pairs = task.targets()
    if not pairs:
        return None
    fig, axes = _new_figure(len(pairs))
    markers = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(task.cut_points)}
    used = []
    for ax, (target, metric) in zip(axes, pairs):
        pts = frontier_points(task, target, metric)
        if not pts:
            ax.set_visible(False)
            continue
        flags = pareto([(p["leak"], p["acc"]) for p in pts])
        for p, best in zip(pts, flags):
            r = p["record"]
            used.append(r)
            ci = r.get("ci95") or [None, None]
            xerr = None if None in ci[:2] else [[max(r["value"] - ci[0], 0)], [max(ci[1] - r["value"], 0)]]
            aci = p["acc_ci"]
            yerr = None if not aci or None in aci else [[max(p["acc"] - aci[0], 0)], [max(aci[1] - p["acc"], 0)]]
            color = colors[p["defense"]]
            ax.errorbar(r["value"], p["acc"], xerr=xerr, yerr=yerr, fmt="none", ecolor=color, alpha=0.35, lw=1)
            ax.scatter(r["value"], p["acc"], marker=markers[p["cut"]], s=80 if best else 45,
                       facecolors=color if best else "none", edgecolors="black" if best else color, linewidths=1.2,
                       zorder=3)
        front = sorted((p for p, best in zip(pts, flags) if best), key=lambda p: p["leak"])
        if len(front) > 1:
            ax.plot([p["record"]["value"] for p in front], [p["acc"] for p in front], ls=":", color="black", lw=1, zorder=2)
        chances = [p["record"]["chance"] for p in pts if p["record"].get("chance") is not None]
        if chances:
            ax.axvline(sum(chances) / len(chances), ls="--", color="0.35", lw=1)
        task_acc = [t.get("primary_accuracy") for t in task.info if t.get("primary_accuracy") is not None]
        if task_acc:
            ax.axhline(sum(task_acc) / len(task_acc), ls="-.", color="0.55", lw=1)
        unit = unit_of(pts[0]["record"])
        more = "more leakage →" if orientation(pts[0]["record"]) > 0 else "← more leakage"
        ax.set_xlabel(f"{_label(metric, unit)}, strongest attack ({more})", fontsize=9)
        ax.set_ylabel("primary accuracy through the defense")
        ax.set_title(f"{target} · {metric}", fontsize=10)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="none", marker="o", color=colors[d], label=labels[d]) for d in task.defenses]
    handles += [Line2D([], [], ls="none", marker=markers[c], color="0.3", mfc="none", label=f"cut {c}") for c in task.cut_points]
    handles += [Line2D([], [], ls="none", marker="o", mfc="0.3", mec="black", label="Pareto-optimal (filled)"),
                Line2D([], [], ls="--", color="0.35", label="chance"),
                Line2D([], [], ls="-.", color="0.55", label="undefended model")]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    title = f"{task.title}: privacy–utility frontier"
    footer = (f"{_seeds_n(used)} · one point per (cut point, defense, seed), named by the legend (colour: defense, "
              "marker: cut point; no text labels to overlap) · bars: 95% bootstrap CIs · "
              "filled: Pareto-optimal (no point has less leakage and more accuracy)")
    _titles(fig, title, footer)
    return Figure(slug("frontier", task.dataset, task.model), title,
                  f"Leakage (x) against primary accuracy (y) for every cut point and defense. {footer}.",
                  _png(fig), "frontier", task.title)


def defense_colors(tasks: list[Task]) -> dict:
    keys = list(dict.fromkeys(d for t in tasks for d in t.defenses))
    return {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(keys)}


def all_figures(tasks: list[Task], labels: dict) -> list[Figure]:
    colors = defense_colors(tasks)
    figures = []
    for task in tasks:
        front = frontier_figure(task, labels, colors)
        figures += ([front] if front else []) + leakage_figures(task, labels, colors)
    return figures

