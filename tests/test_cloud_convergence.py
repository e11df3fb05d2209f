"""Utility through a defense (issue 16 item 5): the cloud is fine-tuned to convergence on a validation
split, and an accuracy below the majority-class rate is flagged as a cloud that failed to train.

The task: a tiny tabular one with an imbalanced primary label (about 80% negatives), an MLP cut after
its first layer. Under noise 100x the undefended cloud's logits are noise: the old fine-tuning
(2 epochs, lr 5e-4, no shrinkage) left it below the majority-class rate (UCI Adult's case)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from audit.core.data import Part
from audit.core.training import TrainerSettings, fit_classifier, fit_to_convergence, predict
from audit.decision import decision_rows
from audit.html.tables import CLOUD_FAILED, decision_table
from audit.pipeline import fit_defense, majority_rate, measure_utility, utility_flags
from defenses import SplitPoint
from defenses.noise import AddNoise, LabelPrior, TrainOnly

SETTINGS = TrainerSettings(accelerator="cpu")


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)  # the task model's initial weights: not those of whatever ran before
    g = torch.Generator().manual_seed(0)

    def make(n):
        x = torch.randn(n, 6, generator=g)
        return x, ((x[:, 0] + 0.5 * torch.randn(n, generator=g)) > 0.85).long()

    (xtr, ytr), (xte, yte) = make(1200), make(600)
    edge, cloud = nn.Sequential(nn.Linear(6, 16), nn.ReLU()), nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    net = nn.Sequential(edge, cloud)
    fit_classifier(net, xtr, ytr, 2, settings=SETTINGS, epochs=15, lr=1e-2, seed=0)
    net.eval()
    parts = {"train": Part(xtr, ytr, {}), "test": Part(xte, yte, {})}
    split = SplitPoint("fc", net, edge, cloud, compute_features=lambda p: predict(edge, parts[p].x))
    accuracy = float((predict(net, xte).argmax(1) == yte).float().mean())
    return split, parts, accuracy


def test_majority_rate_and_the_flag():
    assert majority_rate(torch.tensor([0, 0, 0, 1])) == 0.75
    assert utility_flags(0.70, 0.75)["cloud_failed_to_train"] is True
    assert "0.700 < majority-class rate 0.750" in utility_flags(0.70, 0.75)["cloud_failure"]
    assert utility_flags(0.75, 0.75) == {"majority_accuracy": 0.75, "cloud_failed_to_train": False, "cloud_failure": None,
                                         "cloud_label_prior": False}
    prior = utility_flags(0.70, 0.75, label_prior=True)
    assert not prior["cloud_failed_to_train"] and prior["cloud_label_prior"]  # the training split's majority
    at_majority = float(torch.tensor([1.0] * 51 + [0.0] * 49).mean())  # 0.50999999 in float32, as measure_utility's
    assert not utility_flags(at_majority, 0.51)["cloud_failed_to_train"]


def test_the_old_fine_tuning_falls_below_the_majority_rate_and_is_flagged(task):
    split, parts, _ = task
    train, test = parts["train"], parts["test"]
    z = split.features("train")
    sigma = 100 * float(z.std())
    cloud = copy.deepcopy(split.cloud)  # the old recipe: 2 epochs, lr 5e-4, no validation, no label prior
    fit_classifier(nn.Sequential(TrainOnly(AddNoise(sigma, "gaussian")), cloud), z, train.y, 2, settings=SETTINGS,
                   epochs=2, batch_size=128, lr=5e-4, seed=3)
    cloud.eval()
    noise = AddNoise(sigma, "gaussian", torch.Generator().manual_seed(1), always=True)
    accuracy = float((predict(cloud, noise(split.features("test"))).argmax(1) == test.y).float().mean())
    majority = majority_rate(test.y)
    assert majority == pytest.approx(0.798, abs=0.01)
    assert accuracy < majority - 0.1  # measured 0.520
    assert utility_flags(accuracy, majority)["cloud_failed_to_train"]


@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_the_noise_defense_reaches_the_majority_rate(task, scale):
    """16 elements under noise 10x carry almost nothing of the label: after six epochs of fine-tuning the
    cloud is less accurate on validation than the label prior, which is kept."""
    split, parts, accuracy = task
    defense = fit_defense("noise", {"scale": scale, "finetune_epochs": 6}, split, parts["train"], 2, SETTINGS, seed=3)
    u = measure_utility(defense, split, parts["test"], accuracy, seed=0)
    assert u["primary_accuracy"] >= u["majority_accuracy"] and not u["cloud_failed_to_train"]
    assert u["cloud_validated"] and u["cloud_n_val"] == 120 and u["cloud_max_epochs"] == 6
    assert u["cloud_val_loss"] <= u["cloud_val_loss_initial"]  # the kept weights are never worse on validation
    assert u["cloud_kept"] == "label_prior" and u["cloud_label_prior"] and isinstance(defense.cloud, LabelPrior)
    assert u["cloud_val_accuracy_label_prior"] > u["cloud_val_accuracy"]


def test_a_release_that_carries_the_task_keeps_the_fine_tuned_cloud(task):
    split, parts, accuracy = task
    defense = fit_defense("noise", {"scale": 1.0, "finetune_epochs": 6}, split, parts["train"], 2, SETTINGS, seed=3)
    u = measure_utility(defense, split, parts["test"], accuracy, seed=0)
    assert u["cloud_kept"] == "fine_tuned" and not u["cloud_label_prior"] and not isinstance(defense.cloud, LabelPrior)
    assert u["primary_accuracy"] > u["majority_accuracy"] + 0.04  # measured 0.863 vs 0.798


def test_the_label_prior_is_the_training_frequencies():
    prior = LabelPrior(torch.tensor([0, 0, 0, 2]), 3)
    out = prior(torch.zeros(5, 7, 2))
    assert out.shape == (5, 3) and out.softmax(1)[0].tolist() == pytest.approx([0.75, 0.0, 0.25], abs=1e-6)


def test_fit_to_convergence_stops_early_and_keeps_the_best_weights():
    g = torch.Generator().manual_seed(1)
    x, xv = torch.randn(200, 3, generator=g), torch.randn(100, 3, generator=g)
    y, yv = (x[:, 0] > 0).long(), torch.randint(0, 2, (100,), generator=g)  # validation labels are noise
    net, facts = fit_to_convergence(nn.Linear(3, 2), x, y, 2, (xv, yv), settings=SETTINGS, max_epochs=40,
                                    patience=2, lr=0.05, seed=0)
    assert facts["stopped_early"] and facts["epochs_run"] < 40
    best = facts["best_epoch"]
    assert best is not None and best <= facts["epochs_run"] - 2
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(net(xv), yv))
    assert ce == pytest.approx(facts["val_loss"], abs=1e-5) and ce <= facts["val_loss_initial"] + 1e-6


def test_the_decision_table_shows_the_flag():
    def rec(failed, acc):
        return {"dataset": "adult", "model": "mlp", "cut_point": "fc1", "defense": "noise",
                "defense_params": {"scale": 100.0 if failed else 10.0},
                "utility": {"primary_accuracy": acc, "task_accuracy": 0.85, "majority_accuracy": 0.764,
                            "cloud_failed_to_train": failed}, "cost": {"edge_flops_fraction": 0.5, "bytes_sent": 64},
                "attack": "attribute", "target": "sex", "metric": "balanced_accuracy", "value": 0.5,
                "ci95": [0.47, 0.53], "chance": 0.5, "advantage": 0.0, "seed": 0, "n_eval": 500, "status": "ok",
                "extra": {}, "cell_id": json.dumps([failed])}
    rows = decision_rows({"config": {}, "results": [rec(True, 0.515), rec(False, 0.80)]})
    flagged = [r for r in rows if r.cloud_failed]
    assert len(flagged) == 1 and flagged[0].primary_accuracy == 0.515
    table = decision_table(rows)
    texts = {r["accuracy"]: r["cloud_failed"] for r in table["rows"]}
    assert texts["0.515"] == "cloud failed to train (accuracy < majority-class rate 0.764)" and texts["0.800"] == ""
    assert CLOUD_FAILED.startswith("⚠")



def test_a_cloud_that_answers_the_label_prior_says_so():
    rec = {"dataset": "adult", "model": "mlp", "cut_point": "fc1", "defense": "noise", "defense_params": {"scale": 100.0},
           "utility": {"primary_accuracy": 0.764, "task_accuracy": 0.85, "majority_accuracy": 0.764,
                       "cloud_failed_to_train": False, "cloud_label_prior": True, "cloud_kept": "label_prior"},
           "cost": {"edge_flops_fraction": 0.5, "bytes_sent": 64}, "attack": "attribute", "target": "sex",
           "metric": "balanced_accuracy", "value": 0.5, "ci95": [0.47, 0.53], "chance": 0.5, "advantage": 0.0,
           "seed": 0, "n_eval": 500, "status": "ok", "extra": {}, "cell_id": "a"}
    (row,) = decision_rows({"config": {}, "results": [rec]})
    assert row.cloud_prior and not row.cloud_failed
    assert row.cloud_failure_text().startswith("cloud answers the label prior")
    assert decision_table([row])["rows"][0]["cloud_failed"] == row.cloud_failure_text()
