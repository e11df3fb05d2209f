"""Every registered defense on one audit task: primary accuracy, each attack's leakage with its CI, cost.

    SPLITAUDIT_CACHE=/work/cache nice -n 10 python benchmarks/defense_table.py \
        [--config configs/utkface_defenses.yaml] [--out benchmarks/out/defenses] \
        [--cut-points pool3 conv1] [--defenses siamese datamix] [--table-only]

The defenses are the config's list plus every registered defense it does not
list (default parameters), so a new plugin joins the table by existing; test
plugins (``test_*``) are left out. Each (defense, cut point) runs as its own
resumable audit in OUT/<defense>/<cut point>/, with the config's attacks plus
the defense's adaptive attacks (ADAPTIVE): a rerun skips what is done, and
cut points can be run in any order. The task section of the config decides
the task model (configs/utkface_defenses.yaml matches configs/utkface.yaml, so
its cached model is loaded, never retrained).

Writes OUT/records.json (every record) and OUT/table.md (the Markdown table:
balanced accuracy of every attack on every private target with its bootstrap
95% CI, and the cost columns), and prints the table. Heavy (hours on 2 CPU
cores at 64x64): one job at a time, under ``nice``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

from audit import Audit
from audit.config import AuditConfig, PluginSpec, build_config, load_config
from audit.progress import Progress
from defenses import DEFENSES

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("splitaudit")

# defense name -> {attack name: params built from the config's attacks}
ADAPTIVE: dict[str, dict[str, Callable[[dict[str, dict[str, Any]]], dict[str, Any]]]] = {
    "datamix": {
        "datamix_unmix": lambda attacks: {"attack": "attribute", "attack_params": {
            k: v for k, v in attacks.get("attribute", {}).items() if k != "augment"}},  # mirrored views stay mixed
    },
}
LEAK_METRIC = "balanced_accuracy"


def defense_specs(config: AuditConfig, only: list[str] | None) -> list[PluginSpec]:
    """The config's defenses, then every other registered defense with its defaults."""
    specs = list(config.defenses)
    listed = {s.name for s in specs}
    specs += [PluginSpec(name=n) for n in DEFENSES.list() if n not in listed and not n.startswith("test_")]
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise SystemExit(f"unknown defenses {unknown}; known: {sorted({s.name for s in specs})}")
        specs = [s for s in specs if s.name in only]
    return specs


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def cell_config(config: AuditConfig, spec: PluginSpec, cut: str) -> AuditConfig:
    raw = config.model_dump(mode="json", exclude_none=True)
    raw["tasks"][0]["cut_points"] = [cut]
    raw["defenses"] = [{"name": spec.name, **spec.params}]
    attacks = dict(raw["attacks"])
    for name, make in ADAPTIVE.get(spec.name, {}).items():
        attacks[name] = make(raw["attacks"])
    raw["attacks"] = attacks
    return build_config(raw, f"<{spec.title()} at {cut}>")


def run_all(config: AuditConfig, specs: list[PluginSpec], cuts: list[str], out: Path) -> None:
    for cut in cuts:
        for spec in specs:
            folder = out / slug(spec.title()) / cut
            start = time.perf_counter()
            log.info("== %s at %s -> %s", spec.title(), cut, folder)
            Audit(cell_config(config, spec, cut)).run(folder, callbacks=[Progress(bar=False)])  # task model: from the cache
            log.info("== %s at %s: %.0f s", spec.title(), cut, time.perf_counter() - start)


def collect(out: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(out.glob("*/*/report.json")):
        records += json.loads(path.read_text())["results"]
    return records


def short_label(name: str, params: dict[str, Any]) -> str:
    """``name(param=value, ...)`` with only the parameters that differ from the plugin's defaults."""
    try:
        defaults = DEFENSES.validate_params(name, {}).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - a plugin without defaults for every parameter, or not installed here
        defaults = {}
    changed = {k: v for k, v in params.items() if defaults.get(k, object()) != v}
    return PluginSpec(name=name, **changed).title()


def _flops(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f}"


def _ci(value: float | None, ci: list[float] | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not ci or ci[0] is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def table(records: list[dict[str, Any]], cut_order: list[str], defense_order: list[str]) -> str:
    """Markdown: one row per (cut point, defense)."""
    ok = [r for r in records if r["status"] == "ok"]
    leak_cols = sorted({(r["attack"], r["target"]) for r in ok if r["metric"] == LEAK_METRIC})
    extra_cols = sorted({(r["attack"], r["target"], r["metric"]) for r in ok
                         if r["metric"] not in (LEAK_METRIC, "accuracy", "auroc")})
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ok:
        label = short_label(r["defense"], r["defense_params"])
        row = rows.setdefault((r["cut_point"], label), {"utility": r["utility"], "cost": r["cost"], "name": r["defense"]})
        row[(r["attack"], r["target"], r["metric"])] = r
    head = ["cut", "defense", "primary acc [95% CI]"]
    head += [f"{a} {t} bal. acc [95% CI]" for a, t in leak_cols]
    head += [f"{a} {t} {m}" for a, t, m in extra_cols]
    head += ["edge FLOPs", "edge FLOPs frac", "bytes sent", "edge ms", "cloud ms", "rounds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    failed: dict[tuple[str, str], set[str]] = {}  # cells with no figure: why (first line of each error)
    for r in records:
        if r["status"] != "ok":
            key = (r["cut_point"], short_label(r["defense"], r["defense_params"]))
            failed.setdefault(key, set()).add((r.get("error") or "?").splitlines()[0])
            rows.setdefault(key, {"utility": {}, "cost": {}, "name": r["defense"]})

    def order(key: tuple[str, str]) -> tuple[int, int, str]:
        cut, label = key
        name = rows[key]["name"]
        return (cut_order.index(cut) if cut in cut_order else 99,
                defense_order.index(name) if name in defense_order else 99, label)

    for key in sorted(rows, key=order):
        row = rows[key]
        u, c = row["utility"], row["cost"]
        if not u and key in failed:  # not one figure for this (cut, defense)
            reason = "; ".join(sorted(failed[key]))
            lines.append("| " + " | ".join([key[0], key[1], f"failed: {reason}"] + ["-"] * (len(head) - 3)) + " |")
            continue
        cells = [key[0], key[1], _ci(u.get("primary_accuracy"), u.get("primary_accuracy_ci95"))]
        for a, t in leak_cols:
            r = row.get((a, t, LEAK_METRIC))
            cells.append(_ci(r["value"], r["ci95"]) if r else "-")
        for a, t, m in extra_cols:
            r = row.get((a, t, m))
            cells.append(_ci(r["value"], r["ci95"]) if r else "-")
        frac = c.get("edge_flops_fraction")
        cells += [
            _flops(c.get("edge_flops")),
            f"{frac:.3f}" if frac is not None else "-",
            f"{c['bytes_sent']:,}" if c.get("bytes_sent") is not None else "-",
            f"{c['edge_latency_ms']:.2f}" if c.get("edge_latency_ms") is not None else "-",
            f"{c['cloud_latency_ms']:.2f}" if c.get("cloud_latency_ms") is not None else "-",
            str(c.get("rounds", "-")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    n = {r["n_eval"] for r in ok}
    seeds = sorted({r["seed"] for r in ok})
    lines.append("")
    lines.append(f"Seeds {seeds}; {', '.join(map(str, sorted(n)))} test samples per figure; "
                 "CIs: bootstrap 95% over test samples.")
    partly = sorted(k for k in failed if rows[k]["utility"])
    for cut, label in partly:  # a row with figures, some of its attacks failed
        lines.append(f"{label} at {cut}: some cells failed: {'; '.join(sorted(failed[(cut, label)]))}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "utkface_defenses.yaml"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "defenses"))
    p.add_argument("--cut-points", nargs="+", help="subset (and order) of the config's cut points")
    p.add_argument("--defenses", nargs="+", help="subset of the defenses, by plugin name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from OUT")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = load_config(args.config, args.overrides)
    cuts = args.cut_points or config.tasks[0].cut_points
    unknown = sorted(set(cuts) - set(config.tasks[0].cut_points))
    if unknown:
        raise SystemExit(f"cut points {unknown} are not in the config's {config.tasks[0].cut_points}")
    specs = defense_specs(config, args.defenses)
    out = Path(args.out)
    if not args.table_only:
        run_all(config, specs, cuts, out)
    records = collect(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.json").write_text(json.dumps(records, indent=1))
    text = table(records, config.tasks[0].cut_points, [s.name for s in defense_specs(config, None)])
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
