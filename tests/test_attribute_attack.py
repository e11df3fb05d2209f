"""The attribute attack against known truths: a planted attribute is found, an absent one is not,
huge noise drives the attack to chance, and no attack beats the Bayes-optimal accuracy."""
import pytest

from audit.data.synthetic import bayes_private_accuracy
from tests.helpers import PLANTED, attack_context, planted_task, run_attack, scores_by_metric



@pytest.fixture(scope="module")
def planted():
    return planted_task(0.25)


@pytest.fixture(scope="module")
def absent():
    return planted_task(0.0)


@pytest.mark.parametrize("attack", ["attribute", "attribute_linear"])
def test_planted_attribute_is_found_and_bounded_by_bayes(planted, attack):
    data, net = planted
    ctx = attack_context(data, net, "conv1")
    s = scores_by_metric(run_attack(attack, ctx, **({"epochs": 8} if attack == "attribute" else {})))
    bacc = s[("secret", "balanced_accuracy")]
    assert bacc.ci95[0] > 0.75, bacc  # far above chance 0.5
    assert bacc.chance == 0.5 and abs(bacc.advantage - (bacc.value - 0.5)) < 1e-9
    assert bacc.ci95[0] <= bacc.value <= bacc.ci95[1] and bacc.n_eval == len(data.part("test"))
    from audit.data import DATASETS

    params = DATASETS.validate_params("synthetic", {k: v for k, v in PLANTED.items() if k != "name"})
    test = data.part("test")
    bayes = bayes_private_accuracy(test.x, test.private["secret"], params)
    assert s[("secret", "accuracy")].ci95[0] <= bayes + 0.01  # nothing beats Bayes-optimal
    assert s[("secret", "auroc")].value > 0.8


def test_absent_attribute_scores_chance(absent):
    data, net = absent
    s = scores_by_metric(run_attack("attribute", attack_context(data, net, "conv1"), epochs=8))
    lo, hi = s[("secret", "balanced_accuracy")].ci95
    assert lo <= 0.5 <= hi
    lo, hi = s[("secret", "auroc")].ci95
    assert lo <= 0.5 <= hi


def test_huge_noise_drives_the_attack_to_chance(planted):
    data, net = planted
    ctx = attack_context(data, net, "conv1", defense="noise", scale=100.0, finetune_epochs=0)
    s = scores_by_metric(run_attack("attribute", ctx, epochs=8))
    lo, hi = s[("secret", "balanced_accuracy")].ci95
    # at chance the 95% CI still misses 0.5 one time in twenty (any change of the noise stream
    # redraws it), so allow a sliver below; the planted attribute's CI starts above 0.75 without noise
    assert lo <= 0.52 and 0.5 <= hi < 0.62


def test_unknown_target_is_refused(planted):
    data, net = planted
    with pytest.raises(ValueError, match="unknown targets"):
        run_attack("attribute", attack_context(data, net, "fc1"), targets=["race"])
