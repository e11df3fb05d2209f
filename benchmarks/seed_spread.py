"""How far an attack's figure moves with its own training seed, next to its bootstrap CI.

    python benchmarks/seed_spread.py [--seeds 8] [--attacks attribute attribute_linear] [--json OUT.jsonl]

A figure's 95% CI resamples the evaluated test samples; it does not cover the attacker's training
randomness (initial weights, batch order, validation split). Here the task model, the cut point's
features and the release (``none``) are fixed and only the attack's seed varies, on the embedded
default's planted synthetic and digits tasks at conv1 / pool1 / fc1. Per (task, cut, attack):
the balanced accuracy's mean, standard deviation and range over the seeds, the mean CI half-width,
and the share of ordered seed pairs that ``splitaudit check``'s regression rule would call a change
(``audit.gate.comparison.classify``, at tolerances 0, 0.02 and 0.07): two runs that differ in nothing
but the attack seed, so every such call is a false alarm. Prints a Markdown table.

    python benchmarks/seed_spread.py --gate benchmarks/seed_spread.jsonl

reads such rows (no runs) and treats each ordered seed pair as two whole reports (every row's run i
against its run j): the share of pairs in which ``splitaudit check --baseline`` would fail, i.e. call
some record regressed, each record alone (``correction: none``) or Holm-corrected over all of them
(the default since 2026-12-05), at tolerances 0, 0.02 and 0.07.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

TASKS = {  # the embedded default's planted and digits tasks (audit/default.yaml)
    "synthetic": ({"name": "synthetic", "n": 2000, "image_size": 16, "strength": 0.2}, 4),
    "digits": ({"name": "digits", "primary": "digit", "private": ["ink"]}, 8),
}
MODEL = {"name": "small_cnn", "widths": [16, 32], "fc": [64]}
CUTS = ("conv1", "pool1", "fc1")
PARAMS = {"attribute": {"epochs": 10}, "attribute_linear": {}}


def prepared(dataset: dict, epochs: int):
    """(data, trained task model) for the default's task: split and training seeded with 0."""
    import lightning as L

    from audit.core.data import DATASETS, AuditData, split_indices
    from audit.core.models import MODELS
    from audit.core.training import TrainerSettings, fit_classifier

    L.seed_everything(0, verbose=False)
    params = dict(dataset)
    loaded = DATASETS.create(params.pop("name"), **params).load(None)
    data = AuditData("t", loaded, split_indices(loaded.x.shape[0], {"train": 0.5, "aux": 0.25, "test": 0.25}, 0))
    spec = dict(MODEL)
    net = MODELS.create(spec.pop("name"), **spec).build(data.input_shape, data.num_classes(data.primary))
    train = data.part("train")
    fit_classifier(net, train.x, train.y, data.num_classes(data.primary), settings=TrainerSettings(accelerator="cpu"),
                   epochs=epochs, seed=0)
    return data, net.eval()


def figures(data, net, cut: str, attack: str, seeds: int) -> list[tuple[float, float, float]]:
    """(balanced accuracy, CI low, CI high) of ``attack`` at ``cut`` (defense ``none``) for attack seeds 0..seeds-1."""
    from audit.core.training import TrainerSettings, predict
    from audit.pipeline import AttackInputs, fit_defense, release_views, run_attack
    from defenses import SplitPoint

    settings = TrainerSettings(accelerator="cpu")
    edge, cloud = net.split(cut)
    split = SplitPoint(cut, net, edge, cloud, compute_features=lambda part: predict(edge, data.part(part).x))
    defense = fit_defense("none", {}, split, data.part("train"), data.num_classes(data.primary), settings, 0)
    aux, test = release_views(defense, split, data)
    inputs = AttackInputs(aux, test, {n: data.num_classes(n) for n in [data.primary, *data.private]}, data.primary,
                          split, settings, n_boot=1000)
    out = []
    for seed in range(seeds):
        scores = run_attack(attack, PARAMS[attack], inputs, defense, seed)
        s = next(s for s in scores if s.metric == "balanced_accuracy")
        out.append((float(s.value), float(s.ci95[0]), float(s.ci95[1])))
    return out


def summary(task: str, cut: str, attack: str, runs: list[tuple[float, float, float]]) -> dict:
    from audit.gate.comparison import classify

    values = [v for v, _, _ in runs]

    def share(tolerance: float) -> float:
        calls = [classify(a, b, tolerance)[0] for a, b in itertools.permutations(runs, 2)]
        return round(sum(c != "unchanged" for c in calls) / len(calls), 3)

    return {"task": task, "cut": cut, "attack": attack, "seeds": len(runs), "values": [round(v, 4) for v in values],
            "runs": [[round(x, 4) for x in run] for run in runs],
            "mean": round(statistics.fmean(values), 4), "sd": round(statistics.stdev(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4),
            "ci_half_width": round(statistics.fmean((hi - lo) / 2 for _, lo, hi in runs), 4),
            "false_change_share": share(0.0), "false_change_share_tol002": share(0.02),
            "false_change_share_tol007": share(0.07)}


def failed_checks(rows: list[dict], tolerance: float, correction: str) -> float:
    """Share of ordered seed pairs (i, j) where the whole report of run j, checked against run i as its
    baseline, has a record called regressed (:func:`audit.gate.comparison.correct_family`'s rule)."""
    from audit.gate.comparison import change_p_value, classify
    from audit.verdicts import holm

    seeds = min(len(r["runs"]) for r in rows)
    failed = []
    for i, j in itertools.permutations(range(seeds), 2):
        calls = [classify(tuple(r["runs"][i]), tuple(r["runs"][j]), tolerance) for r in rows]
        rises = [rise for _, rise, _ in calls]
        p = [change_p_value(rise, margin, tolerance) for _, rise, margin in calls]
        adjusted = holm(p) if correction == "holm" else p
        failed.append(any(rise > 0 and q < 0.05 for rise, q in zip(rises, adjusted)))
    return sum(failed) / len(failed)


def gate_table(rows: list[dict]) -> str:
    """Markdown: :func:`failed_checks` per tolerance, per record and Holm-corrected."""
    lines = ["| records in the report | tolerance | checks failed, each record alone | checks failed, Holm over the "
             "records |", "|---|---|---|---|"]
    for label, chosen in (("all 12", rows), ("the 6 `attribute`", [r for r in rows if r["attack"] == "attribute"])):
        for tolerance in (0.0, 0.02, 0.07):
            lines.append(f"| {label} | {tolerance:g} | {failed_checks(chosen, tolerance, 'none'):.0%} | "
                         f"{failed_checks(chosen, tolerance, 'holm'):.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gate", type=Path, help="no runs: the whole-report check table of these rows (JSON lines)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--attacks", nargs="+", default=list(PARAMS), choices=list(PARAMS))
    ap.add_argument("--json", type=Path, help="also write the rows here (JSON lines)")
    args = ap.parse_args()
    if args.gate:
        print(gate_table([json.loads(line) for line in args.gate.read_text().splitlines() if line.strip()]))
        return
    rows = []
    for task, (dataset, epochs) in TASKS.items():
        data, net = prepared(dataset, epochs)
        for cut, attack in itertools.product(CUTS, args.attacks):
            rows.append(summary(task, cut, attack, figures(data, net, cut, attack, args.seeds)))
            print(json.dumps(rows[-1]), flush=True)
    print("| task | cut | attack | mean bal. acc | SD over seeds | range | mean CI half-width | pairs called changed "
          "(tolerance 0 / 0.02 / 0.07) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['cut']} | {r['attack']} | {r['mean']:.3f} | {r['sd']:.3f} | "
              f"{r['min']:.3f}-{r['max']:.3f} | {r['ci_half_width']:.3f} | {r['false_change_share']:.0%} / "
              f"{r['false_change_share_tol002']:.0%} / {r['false_change_share_tol007']:.0%} |")
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
