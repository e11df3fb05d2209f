"""Every registered defense and attack honours its contract, checked cheaply through the audit's own
pipeline (:mod:`audit.pipeline`) on one small cut point of the tiny synthetic task, the way timm
checks every registered model: new plugins (built-in or from entry points) are covered automatically.

A defense fits, releases finite features of a fixed per-sample shape for every row, keeps utility
measurable and reports every cost field; an attack returns well-formed scores (finite value inside
its CI, n_eval, a target and a metric); both refuse unknown parameters naming the known ones."""
import math

import pytest
import torch

from attacks import ATTACKS
from audit.core.registry import PluginParamsError
from audit.pipeline import AttackInputs, fit_defense, measure_utility, release_views, run_attack
from defenses import DEFENSES, SplitPoint
from tests.conftest import TINY
from tests.helpers import SETTINGS, prepared_task

TEST_PLUGINS = {"test_broken"}
CUT = "conv1"
COST_FIELDS = {"edge_flops", "edge_flops_fraction", "bytes_sent", "edge_latency_ms", "cloud_latency_ms", "rounds"}


@pytest.fixture(scope="module")
def task():
    data, net = prepared_task(TINY["dataset"], TINY["model"], epochs=1)
    edge, cloud = net.split(CUT)
    features = {}

    def compute(part):
        with torch.no_grad():
            return edge(data.part(part).x)

    split = SplitPoint(CUT, net, edge, cloud, compute_features=lambda part: features.setdefault(part, compute(part)))
    return data, net, split


def _inputs(data, split, aux, test):
    return AttackInputs(aux, test, {n: data.num_classes(n) for n in [data.primary, *data.private]}, data.primary,
                        split, SETTINGS, n_boot=50)


@pytest.fixture(scope="module")
def undefended(task):
    data, _, split = task
    defense = fit_defense("none", {}, split, data.part("train"), data.num_classes(data.primary), SETTINGS, seed=0)
    return defense, _inputs(data, split, *release_views(defense, split, data))


@pytest.mark.parametrize("name", [n for n in DEFENSES.list() if n not in TEST_PLUGINS])
def test_defense_contract(name, task):
    data, net, split = task
    defense = fit_defense(name, {}, split, data.part("train"), data.num_classes(data.primary), SETTINGS, seed=0)
    aux, test = release_views(defense, split, data)
    assert len(aux) == len(data.part("aux")) and len(test) == len(data.part("test"))
    assert aux.z.shape[1:] == test.z.shape[1:]  # one per-sample shape, whatever the split
    utility = measure_utility(defense, split, data.part("test"), 0.5, seed=0)
    assert 0 <= utility["primary_accuracy"] <= 1 and utility["n_eval"] == len(test)
    x = data.part("test").x
    from audit.core.models import flops_per_sample

    cost = defense.cost(x[:8], flops_per_sample(net, x[:1]))
    assert COST_FIELDS <= set(cost) and cost["bytes_sent"] > 0 and cost["edge_flops"] >= 0
    with pytest.raises(PluginParamsError, match="its parameters"):
        DEFENSES.create(name, no_such_parameter=1)
    # a release that ignores the caller's features runs an edge of its own on the inputs and must say so
    # (runs_edge): its batches are then sized by that edge's activations, not by the small features (siamese
    # at UTKFace pool2 held 5.2 GB in 512-row batches)
    nan_features = torch.full_like(split.features("test")[:4], float("nan"))
    try:
        ignores_features = bool(torch.isfinite(defense.release(x[:4], nan_features)).all())
    except ValueError:  # refuses the NaN features (he's encryption): it reads them
        ignores_features = False
    assert ignores_features == defense.runs_edge, name


@pytest.mark.parametrize("name", ATTACKS.list())
def test_attack_contract(name, undefended):
    defense, inputs = undefended
    scores = run_attack(name, {}, inputs, defense, seed=0)
    assert scores
    for s in scores:
        assert s.target and s.metric and s.n_eval > 0
        assert isinstance(s.value, float) and math.isfinite(s.value)
        lo, hi = s.ci95
        assert lo <= hi and (lo - 1e-9 <= s.value <= hi + 1e-9 or s.metric.startswith("mi")), (s.metric, s.value, s.ci95)
    with pytest.raises(PluginParamsError, match="its parameters"):
        ATTACKS.create(name, no_such_parameter=1)
