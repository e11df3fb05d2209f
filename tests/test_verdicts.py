"""Verdicts (audit.verdicts) against known truths: a planted leak leaks, huge noise is
`no_evidence` with its power stated, a constant predictor is `inconclusive`, Holm holds the
family-wise error rate on simulated null p-values, the strongest member decides."""
from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest
import torch

from attacks.metrics import classification_scores
from audit.decision import fresh_verdicts
from audit.verdicts import VerdictSettings, comparisons, holm, one_sided_test, verdicts


def rec(value, half=0.03, chance=0.5, *, cut="conv1", defense="none", params=None, attack="attribute",
        target="race", metric="balanced_accuracy", seed=0, n=500, extra=None, dataset="synthetic"):
    return {
        "dataset": dataset, "model": "small_cnn", "cut_point": cut, "defense": defense, "defense_params": params or {},
        "utility": {"primary_accuracy": 0.9, "task_accuracy": 0.92},
        "cost": {"edge_flops_fraction": 0.1, "bytes_sent": 4096.0},
        "attack": attack, "target": target, "metric": metric, "value": value, "ci95": [value - half, value + half],
        "chance": chance, "advantage": value - chance, "seed": seed, "n_eval": n, "status": "ok",
        "extra": extra or {}, "cell_id": f"{cut}-{defense}-{attack}-{seed}",
    }


def one(found, **where):
    hits = [v for v in found if all(v[k] == x for k, x in where.items())]
    assert len(hits) == 1, hits
    return hits[0]


def test_planted_leak_leaks_and_huge_noise_is_no_evidence_with_its_power():
    records = [rec(0.90, cut="conv1"), rec(0.51, half=0.05, cut="conv1", defense="noise", params={"scale": 100.0})]
    found = verdicts(records)
    leak = one(found, defense="none")
    assert leak["verdict"] == "leaks" and leak["deciding_attack"] == "attribute"
    assert leak["advantage"] == pytest.approx(0.40) and leak["ci95"] == pytest.approx([0.37, 0.43])
    quiet = one(found, defense="noise")
    assert quiet["verdict"] == "no_evidence" and quiet["reason"] is None
    # power: (z_{1 - 0.05/2} + z_{0.8}) * se, se = 0.05 / 1.96 (2 comparisons in the task)
    expected = (NormalDist().inv_cdf(1 - 0.05 / 2) + NormalDist().inv_cdf(0.8)) * 0.05 / NormalDist().inv_cdf(0.975)
    assert quiet["min_detectable_advantage"] == pytest.approx(expected)
    assert quiet["comparisons"] == 2 and quiet["alpha"] == 0.05


def test_a_constant_predictor_is_inconclusive_never_safe():
    y = torch.tensor([0, 1, 2, 3, 4] * 40)
    probs = torch.zeros(200, 5)
    probs[:, 2] = 1.0  # predicts class 2 for everyone: balanced accuracy exactly 1/5, CI [0.2, 0.2]
    scores = classification_scores("race", probs, y, 5, n_boot=50, seed=0)
    records = [rec(s.value, chance=s.chance, metric=s.metric, extra=s.extra, n=s.n_eval) | {"ci95": list(s.ci95)}
               for s in scores]
    (v,) = verdicts(records)
    assert v["verdict"] == "inconclusive"
    assert "constant predictor" in v["reason"] and "1 class" in v["reason"]
    assert v["advantage"] is None and v["min_detectable_advantage"] is None


def test_a_valid_member_decides_when_another_is_degenerate():
    records = [rec(0.2, half=0.0, chance=0.2, attack="attribute_linear", extra={"degenerate": True, "predicted_classes": 1}),
               rec(0.21, half=0.03, chance=0.2)]
    (v,) = verdicts(records)
    assert v["verdict"] == "no_evidence" and v["deciding_attack"] == "attribute"
    assert len(v["excluded"]) == 1 and v["excluded"][0].startswith("attribute_linear")


def test_mean_image_decoder_too_few_samples_and_untrained_estimator_are_inconclusive():
    cases = [
        (rec(14.0, half=0.2, chance=14.0, attack="inversion", target="input", metric="psnr",
             extra={"degenerate": True, "output_spread": 0.001}), "same image"),
        (rec(20.0, half=1.0, chance=14.0, attack="inversion_rmle", target="input", metric="psnr", n=6), "too few samples"),
        (rec(0.3, half=0.05, chance=0.0, attack="mi", metric="mi_classifier",
             extra={"unit": "nats", "kind": "lower", "best_val_bound": None}), "did not train"),
    ]
    for record, why in cases:
        (v,) = verdicts([record])
        assert v["verdict"] == "inconclusive" and why in v["reason"], v


def test_the_strongest_member_decides_across_metrics_in_units_of_the_minimum_advantage():
    records = [
        rec(0.56, half=0.02, attack="attribute"),  # advantage 0.06 = 3x the 0.02 minimum
        rec(0.70, half=0.05, chance=0.5, attack="attribute_linear"),  # 0.20 = 10x
        rec(0.1, half=0.02, chance=0.0, attack="mi", metric="mi_classifier", extra={"unit": "nats", "kind": "lower"}),
    ]
    (v,) = verdicts(records)
    assert v["verdict"] == "leaks" and v["deciding_attack"] == "attribute_linear" and v["family"] == "attribute"


def test_a_leak_must_be_material_and_significant():
    ssim = rec(0.537, half=0.01, chance=0.5, attack="inversion", target="input", metric="ssim")  # +0.037 < 0.05
    (v,) = verdicts([ssim])
    assert v["verdict"] == "no_evidence" and "below the minimum advantage" in v["note"]
    (v,) = verdicts([ssim], VerdictSettings(min_advantage={"ssim": 0.03}))
    assert v["verdict"] == "leaks"
    with pytest.raises(ValueError, match="not a decision metric"):
        VerdictSettings(min_advantage={"auroc": 0.1})


def test_mi_lower_bounds_below_zero_show_zero_and_point_estimates_do_not_decide():
    bound = rec(-0.05, half=0.04, chance=0.0, attack="mi", metric="mi_classifier", extra={"unit": "nats", "kind": "lower"})
    ksg = rec(0.5, half=0.04, chance=0.0, attack="mi", metric="mi_ksg", extra={"unit": "nats", "kind": "point"})
    (v,) = verdicts([bound, ksg])
    assert v["metric"] == "mi_classifier" and v["advantage"] == 0.0 and v["ci95"] == [0.0, 0.0]
    assert bound["value"] == -0.05  # the record keeps the raw value
    c = one_sided_test(bound, "attribute", VerdictSettings())
    assert c.p > 0.9  # tested on the raw value


def test_a_zero_width_mi_interval_at_chance_is_degenerate():
    """The planted task's fc1 under noise 100x (2026-12-03): the MI lower bound at [0, 0] nats (its critic
    scaled to 0) decided `no_evidence` and stated "detectable >= 0.000 nats". A zero-width interval at chance
    says nothing about what a leak of some size would have shown: it is excluded like a constant predictor."""
    zero = rec(0.0, half=0.0, chance=0.0, attack="mi", metric="mi_classifier",
               extra={"unit": "nats", "kind": "lower", "trained": True})
    (alone,) = verdicts([zero])
    assert alone["verdict"] == "inconclusive" and "zero-width" in alone["reason"]
    assert alone["min_detectable_advantage"] is None
    # beside a member with a spread (balanced accuracy just under chance), that member decides and states
    # the power: an attribute advantage of ~0.09 would have been detected
    below = rec(0.49, half=0.04)
    v = one(verdicts([zero, below]), family="attribute")
    assert v["verdict"] == "no_evidence" and v["metric"] == "balanced_accuracy"
    assert 0.05 < v["min_detectable_advantage"] < 0.12 and "zero-width" in v["excluded"][0]
    # a perfect attack has a zero-width CI too, far from chance: it leaks
    perfect = rec(0.0, half=0.0, chance=0.5, attack="reidentify", target="identity", metric="normalized_rank")
    perfect["advantage"] = 0.5
    (p,) = verdicts([perfect])
    assert p["verdict"] == "leaks"


def mi_rec(value, half, p, null, cut="conv1", **extra):
    return rec(value, half=half, chance=0.0, cut=cut, attack="mi", metric="mi_ksg",
               extra={"unit": "nats", "kind": "lower", "p_value_permutation": p, "trained": True,
                      "null_values": {"n_perm": 100, **null}, **extra})


def test_a_planted_mi_leaks_under_holm_with_many_cells_though_its_permutation_p_is_at_its_floor():
    """300 comparisons: Holm's first level is 0.05/300 = 0.00017, below 1/101. The value beats every
    shuffle, so the floor is refined by the CI and the null's normal tail (both ~1e-15 here)."""
    mi = mi_rec(0.2, 0.03, 1 / 101, {"mean": 0.0, "std": 0.01})
    others = [rec(0.5, half=0.03, cut=f"c{i}") for i in range(299)]
    v = one(verdicts([mi, *others]), cut_point="conv1")
    assert v["verdict"] == "leaks" and v["comparisons"] == 300 and v["p_source"] == "permutation floor, refined"
    assert v["p_value"] < 1e-10 and v["min_detectable_advantage"] is not None
    # cross-fitted: the floor is 2/101 and the summed null is not trusted, the CI alone refines it
    crossfit = mi_rec(0.2, 0.03, 2 / 101, {"mean": 0.0, "std": 1e-6}, folds=5)
    (cv,) = [x for x in comparisons([crossfit, *others]) if x.record is crossfit]
    assert cv.p_source == "permutation floor, refined" and cv.p == pytest.approx(1 - NormalDist().cdf(0.2 / (0.03 / 1.96)))


def test_a_permutation_p_above_its_floor_is_used_as_it_is_and_a_weak_value_is_not_refined_to_a_leak():
    mid = mi_rec(0.05, 0.03, 5 / 101, {"mean": 0.0, "std": 0.02})
    (c,) = comparisons([mid])
    assert c.p == pytest.approx(5 / 101) and c.p_source == "permutation"
    # at its floor, but the null's tail (z = 1.5) and the CI (z = 1.18) are both above it: the exact p stands
    weak = mi_rec(0.03, 0.05, 1 / 101, {"mean": 0.0, "std": 0.02})
    (w,) = comparisons([weak])
    tail, ci = 1 - NormalDist().cdf(1.5), 1 - NormalDist().cdf(0.03 / (0.05 / 1.96))
    assert min(tail, ci) > 1 / 101 and w.p == pytest.approx(1 / 101)
    others = [rec(0.5, half=0.03, cut=f"c{i}") for i in range(99)]
    assert one(verdicts([weak, *others]), cut_point="conv1")["verdict"] == "no_evidence"


def test_an_mi_estimator_that_says_it_did_not_train_is_inconclusive():
    (v,) = verdicts([mi_rec(0.3, 0.05, 1 / 101, {"mean": 0.0, "std": 0.01}, trained=False)])
    assert v["verdict"] == "inconclusive" and "did not train" in v["reason"]


def test_holm_adjusts_like_the_textbook_and_controls_fwer_on_null_p_values():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = random.Random(0)
    m, trials, alpha = 40, 4000, 0.05
    alarms = sum(min(holm([rng.random() for _ in range(m)])) <= alpha for _ in range(trials))
    rate = alarms / trials
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    # without correction, the same null families almost always alarm
    raw = sum(min(rng.random() for _ in range(m)) <= alpha for _ in range(trials)) / trials
    assert raw > 0.8


def test_null_records_from_normal_bootstrap_cis_rarely_alarm_across_a_grid():
    """Simulated null audits: 30 cells of a true-chance attack, estimates ~ N(chance, se);
    the fraction of audits with any `leaks` verdict stays below alpha (+ 3 binomial SE)."""
    rng = random.Random(1)
    se, trials, alarms = 0.02, 400, 0
    for _ in range(trials):
        records = [rec(0.5 + rng.gauss(0, se), half=1.96 * se, cut=f"c{i % 6}", defense=f"d{i // 6}")
                   for i in range(30)]
        alarms += any(v["verdict"] == "leaks" for v in verdicts(records))
    assert alarms / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_verdicts_pool_seeds_and_old_reports_are_recomputed():
    records = [rec(0.52, seed=0), rec(0.9, seed=1)]
    (v,) = verdicts(records)
    assert v["seeds"] == [0, 1] and v["verdict"] == "leaks" and v["seed"] == 1
    assert len(comparisons(records)) == 2
    report = {"config": {"decision": {"alpha": 0.01}}, "results": records}
    (again,) = fresh_verdicts(report)
    assert again["alpha"] == 0.01


def test_the_summary_shows_a_negative_mi_lower_bound_as_zero_and_keeps_the_raw_value():
    from audit.html.tables import summary, tasks_of

    bound = rec(-0.05, half=0.04, chance=0.0, attack="mi", metric="mi_classifier", extra={"unit": "nats", "kind": "lower"})
    report = {"results": [bound]}
    (task,) = tasks_of(report)
    (row,) = summary(task, {("none", "{}"): "none"})["rows"]
    assert row["cells"][0]["value"] == "0 [0, 0] nats (raw -0.05)" and row["cells"][0]["advantage"] == "+0.000"
    assert bound["value"] == -0.05


def records_of(scores, cut, defense, params=None, attack="attribute_linear"):
    """Records of an attack's scores at a cut point under a defense (as the runner writes them)."""
    return [rec(s.value, chance=s.chance, cut=cut, defense=defense, params=params, attack=attack, target=s.target,
                metric=s.metric, n=s.n_eval, extra=s.extra) | {"ci95": list(s.ci95), "advantage": s.advantage}
            for s in scores]


def test_real_attack_planted_attribute_leaks_and_huge_noise_is_no_evidence():
    """The tests' planted synthetic task (Bayes-optimal ~1.0): the linear probe on the raw conv1
    feature leaks; under Gaussian noise of 100x the feature's scale it shows no evidence, with the
    power stated (two comparisons: balanced accuracy decides, accuracy and AUROC stay figures)."""
    from tests.helpers import attack_context, planted_task, run_attack

    data, net = planted_task(0.25)
    records = records_of(run_attack("attribute_linear", attack_context(data, net, "conv1")), "conv1", "none")
    noisy = attack_context(data, net, "conv1", "noise", scale=100.0)
    records += records_of(run_attack("attribute_linear", noisy), "conv1", "noise", {"scale": 100.0})
    found = verdicts(records)
    leak, quiet = one(found, defense="none"), one(found, defense="noise")
    assert leak["verdict"] == "leaks" and leak["advantage"] > 0.25 and leak["metric"] == "balanced_accuracy"
    assert quiet["verdict"] == "no_evidence", quiet
    assert quiet["comparisons"] == 2 and 0 < quiet["min_detectable_advantage"] < 0.2
    assert abs(quiet["advantage"]) < quiet["min_detectable_advantage"]


def test_a_nearly_constant_predictor_does_not_claim_a_tiny_detectable_advantage():
    """Balanced accuracy 0.502 [0.500, 0.506] (two classes predicted, almost all one): its own CI is
    narrow, but a working attack on n=500 has se sqrt(0.25 / 500); the power uses that."""
    near = rec(0.502, half=0.0, n=500) | {"ci95": [0.500, 0.506]}
    (v,) = verdicts([near])
    z = NormalDist().inv_cdf(1 - 0.05) + NormalDist().inv_cdf(0.8)
    assert v["verdict"] == "no_evidence" and v["min_detectable_advantage"] == pytest.approx(z * math.sqrt(0.25 / 500))


def test_a_too_narrow_bootstrap_ci_cannot_make_balanced_accuracy_significant():
    """0.56 [0.54, 0.58] on n=250: the CI says se 0.010 (z 5.9), but under H0 balanced accuracy's se
    is up to sqrt(0.25 / 250) = 0.032; the test uses that: z 1.9, p 0.029."""
    c = one_sided_test(rec(0.56, half=0.02, n=250), "attribute", VerdictSettings())
    assert c.p == pytest.approx(1 - NormalDist().cdf(0.06 / math.sqrt(0.25 / 250)))
