"""From figures to a verdict: records in, one verdict per (dataset, model, seed set, cut point,
defense, attack family) out. Pure functions; ``build_report`` stores the result as
report.json's ``verdicts`` and ``splitaudit recommend`` recomputes it for reports without.

Families and decision metrics (:data:`DECISION_METRICS`, :func:`family_of`): a record's target
names its family (``input`` -> reconstruction, ``identity`` -> identity, a private attribute
-> attribute); its metric says whether it takes part in the decision and how large an advantage
is material (``min_advantage``, in the metric's unit). Attribute: balanced accuracy of every
classifier (CNN/MLP head, linear probe, denoising attacker) and mutual-information *lower
bounds* (``extra.kind == "lower"``; a point estimate or an upper bound cannot show a leak).
Reconstruction: PSNR (dB) and SSIM of the decoder and rMLE. Identity: normalised rank.
Other metrics (accuracy, AUROC, top-1, ...) stay figures.

The statistics, per decision record (a *comparison*):
- advantage a = oriented value - chance (``audit.gate.leakage``); MI lower bounds use
  max(0, a) for what is shown (a negative lower bound says only "at least 0"); the test uses
  the raw value (``extra.raw`` when the estimator clipped it).
- one-sided test of H0: a <= 0. p = ``extra.p_value_permutation`` when the attack gives one
  (exact); else the normal approximation from the bootstrap CI: se = (a - lower CI end) / 1.96,
  p = 1 - Phi(a / se). For balanced accuracy se is at least its largest value under H0,
  sqrt(c (1 - c) / n) with c = chance (:func:`reference_se`): a percentile CI from a few hundred
  resamples has noisy ends, and a too-narrow one alone made the null control alarm 8% of the time.
- a permutation p-value cannot go below 1/(1 + n_perm) (0.0099 with the mi plugin's 100), while
  Holm's first level is alpha/m (0.0001 for 500 comparisons): at its floor (the value beats every
  shuffle) p = min(floor, max(p_CI, p_tail)), p_tail the normal tail of the estimator's own null
  (mean, std in ``extra.null_values``; not for cross-fitted estimates, whose summed null is too
  narrow). The maximum of two p-values is valid when either is, and capping at the floor keeps
  the exact test's level; raising n_perm to m/alpha instead would need m before the attacks run
  and 10^4 re-estimates per record. ``p_source`` says which p decided.
- Holm's step-down over *every* comparison of a (dataset, model): the report's summary maximises
  over cut points, defenses, attacks, targets, metrics and seeds, so the family-wise error rate
  of "some cell leaks" is held at ``alpha`` (Holm 1979; valid for any dependence).
- a comparison *leaks* when its Holm-adjusted p <= alpha AND a >= min_advantage (significant
  and material).
- power: min_detectable_advantage = (z_{1-alpha/m} + z_{power}) * se with se the CI half-width
  / 1.96 (for balanced accuracy at least sqrt(c (1 - c) / n), a random guess's, c = chance) and m
  the number of comparisons: the advantage this n detects with probability ``power`` (80%) at
  Holm's strictest level alpha/m; a leak must also reach min_advantage.

Per (cell group, family): *the strongest member decides*. ``leaks`` when any member leaks (the
one with the largest a / min_advantage decides); otherwise ``no_evidence`` from the strongest
valid member, with its power; ``inconclusive`` when no member is valid: a degenerate attack
(one predicted class, a reconstruction that is the same image for every input, an estimator
that did not train, a zero-width CI at chance), fewer than ``min_n_eval`` samples, or no finite CI. Invalid members are
listed in ``excluded`` and never decide.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Iterable

from audit.core.records import Record, defense_key, defense_labels, leakage, orientation, unit_of

VERDICTS = ("leaks", "no_evidence", "inconclusive")
FAMILIES = ("attribute", "reconstruction", "identity")
FAMILY_BY_TARGET = {"input": "reconstruction", "identity": "identity"}  # any other target: a private attribute
# metric (shell pattern) -> default minimum advantage of practical interest, in the metric's unit
DECISION_METRICS: dict[str, float] = {
    "balanced_accuracy": 0.02,  # advantage over 1/K
    "mi_*": 0.02,  # nats; lower bounds only (extra.kind == "lower")
    "psnr": 1.0,  # dB over the mean-image baseline
    "ssim": 0.05,  # over the mean-image baseline
    "normalized_rank": 0.02,  # 0.5 - mean normalised rank
}
Z95 = NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class VerdictSettings:
    """``alpha``: family-wise error rate; ``power``: for the minimum detectable advantage;
    ``min_advantage``: per metric (overrides :data:`DECISION_METRICS`' defaults); ``min_n_eval``:
    fewer evaluation samples make a record inconclusive (a bootstrap CI of a handful of samples
    is too narrow)."""

    alpha: float = 0.05
    power: float = 0.8
    min_advantage: dict[str, float] = field(default_factory=dict)
    min_n_eval: int = 10

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if not 0 < self.power < 1:
            raise ValueError(f"power must lie in (0, 1), got {self.power}")
        unknown = [m for m in self.min_advantage if decision_default(m) is None]
        if unknown:
            raise ValueError(f"min_advantage: {', '.join(unknown)} is not a decision metric "
                             f"(known: {', '.join(DECISION_METRICS)})")

    def threshold(self, metric: str) -> float:
        if metric in self.min_advantage:
            return float(self.min_advantage[metric])
        return float(decision_default(metric))


def decision_default(metric: str) -> float | None:
    """The default minimum advantage of ``metric``, None when it is not a decision metric."""
    for pattern, value in DECISION_METRICS.items():
        if fnmatch.fnmatchcase(metric, pattern):
            return value
    return None


def family_of(record: Record) -> str | None:
    """The attack family a record belongs to in the decision, or None when its metric does not
    decide (accuracy, AUROC, top-1, an MI point estimate or upper bound, ...)."""
    metric = str(record.get("metric") or "")
    if record.get("target") is None or decision_default(metric) is None:
        return None
    if unit_of(record) == "nats" and not is_lower_bound(record):
        return None
    return FAMILY_BY_TARGET.get(str(record["target"]), "attribute")


def is_lower_bound(record: Record) -> bool:
    """A mutual-information lower bound (nats, ``extra.kind == "lower"``)."""
    return unit_of(record) == "nats" and (record.get("extra") or {}).get("kind") == "lower"


def shown_value(record: Record) -> tuple[float | None, list | None]:
    """(value, ci95) as summaries show them: an MI lower bound below 0 says only "I >= 0", so
    max(0, .) of the value and both CI ends; other records as recorded. The record keeps the raw value."""
    value, ci = record.get("value"), record.get("ci95")
    if value is None or not is_lower_bound(record):
        return value, ci
    return max(0.0, value), None if ci is None else [None if x is None else max(0.0, x) for x in ci]


def invalid_reason(record: Record, settings: VerdictSettings) -> str | None:
    """Why a decision record proves nothing (None when it is valid): from what its attack says in
    ``extra`` (``degenerate``, ``predicted_classes``, ``output_spread``, ``trained``,
    ``best_*`` of a training run), its ``n_eval`` and its CI."""
    extra = record.get("extra") or {}
    if extra.get("degenerate"):
        if extra.get("predicted_classes") is not None:
            return f"predicts {extra['predicted_classes']} class(es): a constant predictor"
        if extra.get("output_spread") is not None:
            return (f"reconstructs the same image for every input (spread {extra['output_spread']:.3g} of the "
                    f"inputs'): the mean image")
        return str(extra.get("degenerate_reason") or "degenerate attack")
    if extra.get("trained") is False or any(k.startswith("best_") and v is None for k, v in extra.items()):
        return "the estimator did not train (no validation result)"
    n = record.get("n_eval")
    if n is not None and n < settings.min_n_eval:
        return f"too few samples (n_eval={n} < {settings.min_n_eval})"
    ci = record.get("ci95") or [None, None]
    if record.get("value") is None or None in ci[:2] or not all(math.isfinite(x) for x in [record["value"], *ci[:2]]):
        return "no finite value with a 95% CI"
    if record.get("chance") is None:
        return "no chance level to measure an advantage from"
    if ci[0] == ci[1] and (record.get("advantage") or 0.0) <= 0 and reference_se(record) == 0:
        return "a zero-width 95% CI at chance (e.g. an MI critic scaled to 0): it states no power"
    return None


@dataclass
class Comparison:
    """One decision record tested: advantage ``a`` [``low``, ``high``] (shown; MI clipped at 0),
    one-sided ``p`` of H0 a <= 0, Holm-adjusted ``p_holm``, standard error ``se``."""

    record: Record
    family: str
    advantage: float
    low: float
    high: float
    p: float
    se: float
    min_advantage: float
    p_holm: float = 1.0
    m: int = 1
    p_source: str = "ci"  # "ci", "permutation" or "permutation floor, refined" (see one_sided_test)

    @property
    def strength(self) -> float:
        """Advantage in units of the metric's minimum advantage (comparable across metrics)."""
        return self.advantage / self.min_advantage

    def leaks(self, alpha: float) -> bool:
        return self.p_holm <= alpha and self.advantage >= self.min_advantage

    def min_detectable(self, settings: VerdictSettings) -> float | None:
        """(z_{1-alpha/m} + z_power) * se, with se at least :func:`reference_se` (a nearly constant
        predictor's narrow CI says nothing about what a working attack would have detected). A permutation
        p-value at its floor 1/(1 + n_perm) is refined by the CI (see :func:`one_sided_test`), so a coarse
        permutation test does not cap the power. None when that se is 0: an interval of zero width (e.g. an MI
        lower bound whose calibration zeroed its critic, [0, 0] nats) states no power."""
        level = settings.alpha / self.m
        se = max(self.se, reference_se(self.record))
        if not se > 0:
            return None
        return (NormalDist().inv_cdf(1 - level) + NormalDist().inv_cdf(settings.power)) * se


def reference_se(record: Record) -> float:
    """The standard error of balanced accuracy for a predictor guessing at random among K = 1/chance
    balanced classes on n_eval samples, sqrt(chance (1 - chance) / n); 0 for other metrics. Under H0
    (predictions independent of the labels) var(BA) = sum_k q_k (1 - q_k) / (K^2 n_k) with q_k the
    rate of predicting k: at most this, reached by a uniform guess (balanced classes)."""
    chance, n = record.get("chance"), record.get("n_eval")
    if record.get("metric") != "balanced_accuracy" or not chance or not n or not 0 < chance < 1:
        return 0.0
    return math.sqrt(chance * (1 - chance) / n)


def p_value_floor(record: Record) -> float | None:
    """The smallest p-value the attack's own test can give: 1 / (1 + n_perm) for a permutation test,
    2 / (1 + n_perm) for a cross-fitted one (twice the mean of the folds' p-values)."""
    extra = record.get("extra") or {}
    if extra.get("p_value_permutation") is None:
        return None
    n_perm = (extra.get("null_values") or {}).get("n_perm")
    if n_perm is None:
        return None
    return min(1.0, (2.0 if extra.get("folds") else 1.0) / (1 + n_perm))


def _advantage(record: Record) -> tuple[float, float, float]:
    """(a, low, high): oriented leakage minus oriented chance."""
    est, lo, hi = leakage(record)
    chance = record["chance"] * orientation(record)
    return est - chance, lo - chance, hi - chance


def one_sided_test(record: Record, family: str, settings: VerdictSettings) -> Comparison:
    """The one-sided test of a valid decision record (see the module docstring)."""
    a, lo, hi = _advantage(record)
    extra = record.get("extra") or {}
    raw = extra.get("raw") if isinstance(extra.get("raw"), dict) else None
    ta, tlo = a, lo
    if raw and raw.get("nats") is not None and raw.get("ci95"):  # MI clipped by its estimator: test the raw
        ta, tlo = raw["nats"] - record["chance"], raw["ci95"][0] - record["chance"]
    floor = reference_se(record)  # balanced accuracy: the largest standard error it has under H0
    se_low = max(max(ta - tlo, 0.0) / Z95, floor)
    se = max(hi - lo, 0.0) / (2 * Z95)
    if raw:
        se = max(se, se_low)
    if se_low > 0:
        p_ci = 1 - NormalDist().cdf(ta / se_low)
    else:
        p_ci = 0.0 if ta > 0 else 1.0
    p, source = p_ci, "ci"
    p_perm = extra.get("p_value_permutation")
    if p_perm is not None:
        p, source = float(p_perm), "permutation"
        floor = p_value_floor(record)
        if floor is not None and p <= floor * (1 + 1e-9):
            # the observed value beats every shuffle: p <= floor is all the permutation test says
            tail = null_tail_p(record, ta + record["chance"])
            p, source = min(p, max(p_ci, tail if tail is not None else 0.0)), "permutation floor, refined"
    if is_lower_bound(record):
        a, lo, hi = max(0.0, a), max(0.0, lo), max(0.0, hi)
    return Comparison(record, family, a, lo, hi, p, se, settings.threshold(str(record["metric"])), p_source=source)


def null_tail_p(record: Record, raw_value: float) -> float | None:
    """1 - Phi((value - mean) / std) of the estimator's own permutation null (``extra.null_values``),
    a normal fit to its tail beyond the shuffles drawn; None for a cross-fitted estimate (its null is a
    sum of per-fold shuffles, narrower than the folds' dependent statistics, ``attacks.mi.intervals``)
    or a null without spread."""
    extra = record.get("extra") or {}
    null = extra.get("null_values") or {}
    if extra.get("folds") or not null.get("std") or null.get("mean") is None:
        return None
    return 1 - NormalDist().cdf((raw_value - null["mean"]) / null["std"])


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): with p_(1) <= ... <= p_(m),
    adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). Rejecting adj <= alpha holds the
    family-wise error rate at alpha under any dependence."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def comparisons(records: Iterable[Record], settings: VerdictSettings | None = None) -> list[Comparison]:
    """Every valid decision record, tested, with Holm-adjusted p-values per (dataset, model)."""
    settings = settings or VerdictSettings()
    out: dict[tuple[str, str], list[Comparison]] = {}
    for r in records:
        if r.get("status", "ok") != "ok" or (family := family_of(r)) is None or invalid_reason(r, settings):
            continue
        out.setdefault((r["dataset"], r["model"]), []).append(one_sided_test(r, family, settings))
    for group in out.values():
        for c, adj in zip(group, holm([c.p for c in group])):
            c.p_holm, c.m = adj, len(group)
    return [c for group in out.values() for c in group]


def _member(record: Record) -> str:
    return f"{record['attack']} {record['target']}·{record['metric']} seed {record['seed']}"


def _entry(key: tuple, members: list[Record], tested: list[Comparison], settings: VerdictSettings,
           labels: dict) -> dict[str, Any]:
    dataset, model, cut, dkey, family = key
    first = members[0]
    entry: dict[str, Any] = {
        "dataset": dataset, "model": model, "seeds": sorted({r["seed"] for r in members}), "cut_point": cut,
        "defense": first["defense"], "defense_params": first.get("defense_params") or {},
        "defense_label": labels.get(dkey, first["defense"]), "family": family, "alpha": settings.alpha,
    }
    excluded = [f"{_member(r)}: {why}" for r in members if (why := invalid_reason(r, settings))]
    if not tested:
        return {**entry, "verdict": "inconclusive", "deciding_attack": None, "target": None, "metric": None,
                "unit": None, "advantage": None, "ci95": None, "min_detectable_advantage": None,
                "min_advantage": None, "p_value": None, "p_source": None, "p_holm": None, "comparisons": None, "n_eval": None,
                "reason": "; ".join(excluded) or "no decision record", "excluded": excluded}
    leaking = [c for c in tested if c.leaks(settings.alpha)]
    best = max(leaking or tested, key=lambda c: (c.strength, -c.p_holm))
    r = best.record
    entry.update({
        "verdict": "leaks" if leaking else "no_evidence", "deciding_attack": r["attack"], "target": r["target"],
        "metric": r["metric"], "unit": unit_of(r), "seed": r["seed"], "advantage": best.advantage,
        "ci95": [best.low, best.high], "min_detectable_advantage": best.min_detectable(settings),
        "min_advantage": best.min_advantage, "p_value": best.p, "p_source": best.p_source, "p_holm": best.p_holm,
        "comparisons": best.m,
        "n_eval": r.get("n_eval"), "reason": None, "excluded": excluded,
    })
    if not leaking and (sig := [c for c in tested if c.p_holm <= settings.alpha]):
        s = max(sig, key=lambda c: c.strength)
        unit = f" {unit_of(s.record)}" if unit_of(s.record) else ""
        entry["note"] = (f"{_member(s.record)} is significant but below the minimum advantage "
                         f"({s.advantage:+.3g} < {s.min_advantage:g}{unit})")
    return entry


def verdicts(records: list[Record], settings: VerdictSettings | None = None) -> list[dict[str, Any]]:
    """One verdict per (dataset, model, seed set, cut point, defense, family) present in
    ``records`` (report.json's ``results``), in the order the records first name them."""
    settings = settings or VerdictSettings()
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    labels = defense_labels(ok) if ok else {}
    groups: dict[tuple, list[Record]] = {}
    for r in ok:
        if (family := family_of(r)) is not None:
            groups.setdefault((r["dataset"], r["model"], r["cut_point"], defense_key(r), family), []).append(r)
    tested: dict[tuple, list[Comparison]] = {}
    for c in comparisons(ok, settings):
        r = c.record
        tested.setdefault((r["dataset"], r["model"], r["cut_point"], defense_key(r), c.family), []).append(c)
    return [_entry(key, members, tested.get(key, []), settings, labels) for key, members in groups.items()]
