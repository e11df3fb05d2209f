"""The ``mi`` attack on the planted synthetic task.

Truth: the input x = signal T[y] + strength P[s] + noise with P orthogonal to T, so
I(X; S) is the MI of a two-Gaussian mixture along P_1 - P_0 with separation
strength ||P_1 - P_0|| / noise (computed by quadrature), and by data processing
I(Z; S) <= I(X; S) for every released feature Z. With strength 0, I(Z; S) = 0.
"""
import pytest

from attacks import ATTACKS
from attacks.mi.synthetic import mixture_mi
from audit.core.data import DATASETS
from audit.core.data.synthetic import planted_patterns
from audit.core.registry import PluginParamsError
from tests.helpers import attack_context, planted_task, run_attack, scores_by_metric


def planted_mi(strength: float) -> float:
    p = DATASETS.validate_params("synthetic", {"n": 1200, "image_size": 8, "strength": strength})
    _, pat = planted_patterns(p.primary_classes, p.private_classes, p.channels, p.image_size, p.generator_seed)
    sep = strength * float((pat[1] - pat[0]).norm()) / p.noise
    return mixture_mi(2, sep)


@pytest.fixture(scope="module")
def planted():
    return planted_task(0.25)


@pytest.fixture(scope="module")
def absent():
    return planted_task(0.0)


def test_planted_attribute_has_positive_mi_below_the_input_mi(planted):
    data, net = planted
    bound = planted_mi(0.25)  # I(X; S) in nats, about 0.4
    assert 0.2 < bound < 0.69
    s = scores_by_metric(run_attack("mi", attack_context(data, net, "conv1")))
    clf, ksg = s[("secret", "mi_classifier")], s[("secret", "mi_ksg")]
    assert clf.ci95[0] > 0.05 and ksg.ci95[0] > 0.02, (clf, ksg)
    assert clf.ci95[0] <= bound, (clf, bound)  # a lower bound cannot beat I(X; S)
    assert clf.chance == 0.0 and clf.advantage == clf.value and clf.n_eval == len(data.part("test"))
    assert clf.extra["kind"] == "lower" and clf.extra["unit"] == "nats" and ksg.extra["kind"] == "point"
    # every one of the 100 shuffles of the attribute falls below a real leak: the smallest p-value
    for score in (clf, ksg):
        assert score.extra["p_value_permutation"] == pytest.approx(1 / 101), score.extra
        null = score.extra["null_values"]
        assert null["n_perm"] == 100 and null["max"] < score.value and set(null) == {"n_perm", "mean", "std", "q95", "max"}


def test_absent_attribute_reads_zero(absent):
    data, net = absent
    s = scores_by_metric(run_attack("mi", attack_context(data, net, "conv1")))
    for key in [("secret", "mi_classifier"), ("secret", "mi_ksg")]:
        lo, hi = s[key].ci95
        assert lo <= 0.0 <= hi, s[key]
        # under independence the p-value is a U(0, 1) draw; this seed's is not small
        assert s[key].extra["p_value_permutation"] > 0.05, s[key].extra


def test_permutations_are_configurable(planted):
    data, net = planted
    (score,) = run_attack("mi", attack_context(data, net, "fc1"), methods=["ksg"], n_perm=0)
    assert score.extra["p_value_permutation"] is None and score.extra["null_values"] is None
    with pytest.raises(PluginParamsError, match="n_perm"):
        ATTACKS.create("mi", n_perm=-1)


def test_spatial_features_are_pooled_and_methods_configurable(planted):
    data, net = planted
    ctx = attack_context(data, net, "conv1")
    assert ctx.test.z.ndim == 4
    scores = run_attack("mi", ctx, methods=["ksg"], pool=2, pca=None, method_params={"ksg": {"k": 5}})
    (score,) = scores
    assert score.metric == "mi_ksg" and score.extra["k"] == 5
    assert score.extra["feature_dim"] == ctx.test.z.shape[1] * 4 == score.extra["dim"]


def test_bad_params_are_named():
    with pytest.raises(PluginParamsError, match="unknown MI estimator 'kgs'"):
        ATTACKS.create("mi", methods=["kgs"])
    with pytest.raises(PluginParamsError, match="bad parameters for MI estimator 'ksg'"):
        ATTACKS.create("mi", method_params={"ksg": {"neighbours": 3}})


def test_unknown_target_is_refused(planted):
    data, net = planted
    with pytest.raises(ValueError, match="unknown targets"):
        run_attack("mi", attack_context(data, net, "fc1"), targets=["race"], methods=["ksg"])


def test_a_planted_mi_leaks_under_holm_over_many_cells_and_every_estimator_says_it_trained(planted, absent):
    """Issues 16/22: the mi plugin's permutation p (floor 1/101) is usable under Holm. The planted
    attribute beside 400 null comparisons (Holm's first level 0.05/402 < 1/101) still reads ``leaks``;
    the absent one does not."""
    from audit.verdicts import verdicts

    def records(scores, cut):
        return [{"dataset": "synthetic", "model": "small_cnn", "cut_point": cut, "defense": "none", "defense_params": {},
                 "attack": "mi", "target": s.target, "metric": s.metric, "value": s.value, "ci95": list(s.ci95),
                 "chance": s.chance, "advantage": s.advantage, "seed": 0, "n_eval": s.n_eval, "status": "ok",
                 "extra": s.extra, "cell_id": cut} for s in scores]

    nulls = [{"dataset": "synthetic", "model": "small_cnn", "cut_point": f"c{i}", "defense": "none", "defense_params": {},
              "attack": "attribute", "target": "secret", "metric": "balanced_accuracy", "value": 0.5, "ci95": [0.47, 0.53],
              "chance": 0.5, "advantage": 0.0, "seed": 0, "n_eval": 500, "status": "ok", "extra": {}, "cell_id": f"c{i}"}
             for i in range(400)]
    leak = run_attack("mi", attack_context(*planted, "conv1"))
    quiet = run_attack("mi", attack_context(*absent, "conv1"))
    assert all(s.extra["trained"] is True for s in leak + quiet)
    found = {v["cut_point"]: v for v in verdicts(records(leak, "planted") + records(quiet, "absent") + nulls)}
    # the absent attribute never leaks; it is one more comparison unless a member's zero-width CI at chance (the
    # classifier estimator's critic scaled to 0: CPU-dependent, seen on an AVX-512 machine) makes it inconclusive
    absent = found["absent"]
    assert absent["verdict"] == "no_evidence" or (
        absent["verdict"] == "inconclusive" and "zero-width 95% CI at chance" in absent["reason"]), absent
    counted = 402 if absent["verdict"] == "no_evidence" else 401
    assert found["planted"]["verdict"] == "leaks" and found["planted"]["comparisons"] == counted, found["planted"]
    assert found["planted"]["p_source"] == "permutation floor, refined"
