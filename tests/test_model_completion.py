"""``model_completion`` against known truths: the few labels are a stratified pick, pseudo-labels respect
the threshold and the per-class quota, the test labels never reach training, the semi-supervised head
beats the supervised-only head on the same few labels of a planted attribute, and independent labels
read chance."""
import pytest
import torch

from attacks.model_completion import THREAT_MODEL, few_labels, pseudo_labels
from tests.helpers import attack_context, planted_task, run_attack, scores_by_metric

FEW = {"n_labels": 5}  # 5 labelled aux samples per class, 300 unlabelled test features


@pytest.fixture(scope="module")
def planted():
    return planted_task(0.25)


def test_few_labels_is_a_seeded_stratified_pick():
    s = torch.tensor([0] * 30 + [1] * 20 + [2] * 3)
    idx = few_labels(s, 5, 3, seed=0)
    assert torch.bincount(s[idx], minlength=3).tolist() == [5, 5, 3]  # a rare class gives what it has
    assert torch.equal(idx, few_labels(s, 5, 3, seed=0)) and not torch.equal(idx, few_labels(s, 5, 3, seed=1))


def test_pseudo_labels_respect_threshold_and_quota():
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.85, 0.15], [0.6, 0.4], [0.1, 0.9], [0.3, 0.7]])
    idx, labels = pseudo_labels(probs, threshold=0.8, quota=2)
    assert idx.tolist() == [0, 1, 4] and labels.tolist() == [0, 0, 1]  # row 2: over quota; 3, 5: not confident


def test_beats_the_supervised_only_head_on_a_planted_attribute(planted):
    data, net = planted
    ctx = attack_context(data, net, "conv1")
    s = scores_by_metric(run_attack("model_completion", ctx, **FEW))[("secret", "balanced_accuracy")]
    sup, gain = s.extra["supervised_only"], s.extra["gain_over_supervised"]
    assert s.ci95[0] > 0.7 and s.chance == 0.5 and s.n_eval == len(data.part("test")), s
    assert gain["ci95"][0] > 0, (s.value, sup, gain)  # paired bootstrap over the same test rows
    assert s.value > sup["balanced_accuracy"]
    assert s.extra["labelled_per_class"] == [5, 5] and s.extra["transductive"] is True
    assert s.extra["threat_model"] == THREAT_MODEL and "test features" in THREAT_MODEL.lower()
    assert len(s.extra["pseudo_labelled_per_round"]) == 3 and not s.extra["degenerate"]


def test_test_labels_never_reach_training(planted):
    data, net = planted
    ctx = attack_context(data, net, "conv1")
    attack = _fitted(ctx)
    ctx.test.private = {"secret": ctx.test.private["secret"][torch.randperm(len(ctx.test))]}
    assert torch.equal(_fitted(ctx).fitted["secret"]["probs"], attack.fitted["secret"]["probs"])


def _fitted(ctx):
    from attacks import ATTACKS

    attack = ATTACKS.create("model_completion", **FEW)
    attack.fit(ctx)
    return attack


def test_independent_labels_read_chance():
    data, net = planted_task(0.0)
    s = scores_by_metric(run_attack("model_completion", attack_context(data, net, "conv1"), **FEW))
    bacc = s[("secret", "balanced_accuracy")]
    assert bacc.ci95[0] < 0.5 < bacc.ci95[1] or bacc.extra["degenerate"], bacc
    assert abs(bacc.value - 0.5) < 0.08
