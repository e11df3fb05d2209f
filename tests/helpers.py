"""Build an attack context for one cut point of a tiny task with the audit pipeline, without the runner."""
from __future__ import annotations

import torch

from attacks import AttackContext
from audit.core.data import DATASETS, AuditData, split_indices
from audit.core.models import MODELS
from audit.core.training import TrainerSettings, fit_classifier, predict
from audit.pipeline import AttackInputs, fit_defense, release_views
from audit.pipeline import attack_context as pipeline_context
from defenses import SplitPoint

SETTINGS = TrainerSettings(accelerator="cpu")


def prepared_task(dataset: dict, model: dict, epochs: int = 2, seed: int = 0):
    params = dict(dataset)
    ds = DATASETS.create(params.pop("name"), **params)
    loaded = ds.load(None)
    data = AuditData("t", loaded, split_indices(loaded.x.shape[0], {"train": 0.5, "aux": 0.25, "test": 0.25}, seed))
    mparams = dict(model)
    net = MODELS.create(mparams.pop("name"), **mparams).build(data.input_shape, data.num_classes(data.primary))
    train = data.part("train")
    fit_classifier(net, train.x, train.y, data.num_classes(data.primary), settings=SETTINGS, epochs=epochs, seed=seed)
    return data, net.eval()


def attack_context(data, net, cut: str, defense: str = "none", seed: int = 0, **defense_params) -> AttackContext:
    """The attack context (cloud view) of ``defense`` fitted at ``cut``."""
    return fitted_context(data, net, cut, defense, seed, **defense_params)[0]


def fitted_context(data, net, cut: str, defense: str = "none", seed: int = 0, **defense_params):
    """(attack context, the fitted defense), through the audit's own pipeline (:mod:`audit.pipeline`);
    the defense is for the tests' own checks, never for an attack."""
    edge, cloud = net.split(cut)
    split = SplitPoint(cut, net, edge, cloud, compute_features=lambda part: predict(edge, data.part(part).x))
    d = fit_defense(defense, defense_params, split, data.part("train"), data.num_classes(data.primary), SETTINGS, seed)
    aux, test = release_views(d, split, data)
    inputs = AttackInputs(aux, test, {n: data.num_classes(n) for n in [data.primary, *data.private]}, data.primary,
                          split, SETTINGS, n_boot=200)
    return pipeline_context(inputs, d, seed), d


def scores_by_metric(scores):
    return {(s.target, s.metric): s for s in scores}


def run_attack(name: str, ctx: AttackContext, **params):
    from attacks import ATTACKS

    attack = ATTACKS.create(name, **params)
    attack.fit(ctx)
    return attack.score(ctx)


def torch_seed(seed: int = 0) -> None:
    torch.manual_seed(seed)


PLANTED = {"name": "synthetic", "n": 1200, "image_size": 8, "strength": 0.25}  # Bayes-optimal ~1.0
TINY_CNN = {"name": "small_cnn", "widths": [8], "fc": [16]}


def planted_task(strength: float = 0.25, seed: int = 0):
    """The tests' planted synthetic task (``strength`` 0: nothing planted) with a trained tiny CNN; the
    task model's initial weights are fixed by ``seed``, not by whichever tests ran before."""
    import lightning as L

    L.seed_everything(seed, verbose=False)
    return prepared_task({**PLANTED, "strength": strength}, TINY_CNN)
