"""The defenses on the tiny planted-attribute task: known truths about leakage, utility and cost.

The private attribute is planted in input directions orthogonal to the
primary task's (audit.core.data.synthetic), so an edge fine-tuned to keep only
what the task needs can drop it: Siamese and NoPeek must lower the attack's
balanced accuracy at fc1 without losing primary accuracy. DataMix with an
exactly affine cloud must give the un-mixed predictions; its adaptive
attacker must undo ReLU-feature mixing.
"""
import lightning as L
import pytest
import torch

from audit.pipeline import predict_all
from tests.helpers import attack_context, fitted_context, prepared_task, run_attack, scores_by_metric

CNN = {"name": "small_cnn", "widths": [8], "fc": [16]}
TASK = {"name": "synthetic", "n": 1000, "image_size": 8, "strength": 0.25}
# a tiny task: short, strong fine-tuning (defaults are for real tasks)
STRONG = {"siamese": {"weight": 5.0, "epochs": 6, "lr": 3e-3, "batch_size": 100},
          # nopeek at weight 0.5 read 0.601 [0.534, 0.661] under torch 2.14.1 (undefended 0.757): the test's
          # 0.6 bar sat on the figure's last digits; at 2.0 it reads 0.552 and the task keeps its accuracy
          "nopeek": {"weight": 2.0, "epochs": 10, "lr": 1e-3, "batch_size": 64}}


@pytest.fixture(scope="module")
def planted():
    L.seed_everything(0, verbose=False)  # the task model's initial weights
    return prepared_task(TASK, CNN, epochs=2)


def _accuracy(ctx, fitted, data) -> float:
    test = data.part("test")
    return float((predict_all(fitted, test.x, ctx.split.features("test")).argmax(1) == test.y).float().mean())


def _leakage(ctx, attack="attribute_linear"):
    """Balanced accuracy of the secret; the linear probe is deterministic and strong on these small features."""
    L.seed_everything(0, verbose=False)  # the attack head's initial weights (the runner seeds each cell)
    params = {"epochs": 8} if attack == "attribute" else {}
    return scores_by_metric(run_attack(attack, ctx, **params))[("secret", "balanced_accuracy")]


@pytest.fixture(scope="module")
def baseline(planted):
    data, net = planted
    ctx, fitted = fitted_context(data, net, "fc1")
    return _accuracy(ctx, fitted, data), _leakage(ctx)


@pytest.mark.parametrize("defense", ["siamese", "nopeek"])
def test_edge_finetuning_removes_the_planted_attribute_and_keeps_the_task(planted, baseline, defense):
    data, net = planted
    acc_none, leak_none = baseline
    assert leak_none.ci95[0] > 0.6  # the attribute leaks at fc1 without a defense
    ctx, fitted = fitted_context(data, net, "fc1", defense=defense, **STRONG[defense])
    leak = _leakage(ctx)
    assert leak.ci95[1] < leak_none.ci95[0], (leak, leak_none)
    assert leak.value < 0.6, (leak.value, leak_none.value)
    assert _accuracy(ctx, fitted, data) >= acc_none - 0.03
    # the shared task model is untouched: its edge still gives the cached features
    edge, _ = net.split("fc1")
    with torch.no_grad():
        assert torch.equal(edge(data.part("test").x[:8]), ctx.split.features("test")[:8])


def test_siamese_with_pca_and_noise_releases_the_reduced_feature(planted):
    data, net = planted
    ctx, fitted = fitted_context(data, net, "conv1", defense="siamese", epochs=1, pca_components=6, noise_scale=0.5,
                         finetune_epochs=1)
    assert ctx.test.z.shape == (len(data.part("test")), 6)
    assert 0.0 <= _accuracy(ctx, fitted, data) <= 1.0


def test_learned_noise_grows_its_noise_and_keeps_accuracy(planted):
    data, net = planted
    acc_none = _accuracy(*fitted_context(data, net, "conv1"), data)
    ctx, fitted = fitted_context(data, net, "conv1", defense="learned_noise", init_scale=0.5, weight=0.05, epochs=6,
                         finetune_epochs=1)
    scale = fitted.noise_scale()
    assert float(scale.mean()) > 0.5 * 1.5  # well above its initial 0.5 x feature std
    assert float(scale.max()) > float(scale.min())  # per element, not one scalar
    assert _accuracy(ctx, fitted, data) >= acc_none - 0.05
    z = ctx.split.features("test")
    released = fitted.release(data.part("test").x, z)
    assert float((released - z).std()) > 0.5 * float(z.std())


def test_cloak_suppresses_its_noisiest_elements_and_suppressing_all_hides_the_attribute(planted):
    """Elements whose learned scale passes the threshold are released as one constant each (and not sent);
    with every element suppressed the release is constant: the attribute probe reads exactly chance, flagged
    degenerate (one predicted class), which the verdicts read as inconclusive, never as safe."""
    data, net = planted
    learn = dict(init_scale=0.5, weight=0.05, epochs=6, finetune_epochs=1)
    ctx, fitted = fitted_context(data, net, "conv1", defense="cloak", suppress_above=1.0, **learn)
    mask = fitted.noise_scale() > 1.0
    assert 0.0 < fitted.suppressed_fraction() == float(mask.float().mean()) < 1.0
    z = ctx.split.features("test")
    released = fitted.release(data.part("test").x, z)
    assert torch.equal(released[:, mask], released[:1, mask].expand(len(z), -1))  # a constant per element
    assert float(released[:, ~mask].std(0).min()) > 0  # the others still vary
    assert fitted.bytes_per_sample(released) == int((~mask).sum()) * 4
    ctx = attack_context(data, net, "conv1", defense="cloak", suppress_above=1e-6, **learn)
    assert float(ctx.test.z.std(0).max()) == 0.0
    constant = _leakage(ctx)
    assert constant.value == 0.5 and constant.extra["degenerate"]  # chance from one predicted class: not "safe"


def test_pca_noise_keeps_components_and_huge_noise_hides_the_attribute(planted):
    data, net = planted
    ctx = attack_context(data, net, "conv1", defense="pca_noise", components=16, scale=50.0, finetune_epochs=1)
    assert ctx.test.z.shape[1] == 16
    lo, hi = _leakage(ctx).ci95
    assert lo <= 0.5 <= hi


# ----------------------------------------------------------------------------- DataMix
MLP = {"name": "mlp", "hidden": [16]}


@pytest.fixture(scope="module")
def linear_cloud():
    """An MLP cut at fc1: the cloud is one Linear layer, exactly affine."""
    L.seed_everything(0, verbose=False)
    return prepared_task(TASK, MLP, epochs=4)


def test_datamix_demixed_predictions_equal_unmixed_for_an_affine_cloud(linear_cloud):
    data, net = linear_cloud
    ctx, fitted = fitted_context(data, net, "fc1", defense="datamix", epochs=0)
    test = data.part("test")
    with torch.no_grad():
        plain = net(test.x)
    demixed = predict_all(fitted, test.x, ctx.split.features("test"))
    assert torch.allclose(demixed, plain, atol=1e-4)
    # the cloud sees mixtures, not the features: and fresh secret coefficients each time
    z = ctx.split.features("test")
    first, second = fitted.release(test.x[:64], z[:64]), fitted.release(test.x[:64], z[:64])
    assert not torch.allclose(first, z[:64], atol=1e-3) and not torch.allclose(first, second, atol=1e-3)
    # a single call's rows come in mixed groups of k: every row is a convex mixture within its pair
    lo = torch.minimum(z[0:64:2], z[1:64:2]) - 1e-5
    hi = torch.maximum(z[0:64:2], z[1:64:2]) + 1e-5
    assert ((first[0:64:2] >= lo) & (first[0:64:2] <= hi)).all()


def test_datamix_cost_counts_mixing_and_demixing(linear_cloud):
    data, net = linear_cloud
    ctx, fitted = fitted_context(data, net, "fc1", defense="datamix", epochs=0)
    edge, _ = net.split("fc1")
    from audit.core.models import flops_per_sample

    x = data.part("test").x
    cost = fitted.cost(x[:32], flops_per_sample(net, x[:1]))
    plain = flops_per_sample(edge, x[:1])
    # per sample: 2 * k * 16 FLOPs of mixing and 2 * k * 2 of de-mixing on top of the edge part (k = 2)
    assert cost["edge_flops"] == plain + 2 * 2 * 16 + 2 * 2 * 2
    assert cost["bytes_sent"] == 16 * 4 and cost["bytes_received"] == 2 * 4 and cost["rounds"] == 1
    assert cost["edge_flops_fraction"] == pytest.approx(cost["edge_flops"] / flops_per_sample(net, x[:1]))


def test_datamix_is_trained_to_keep_accuracy(planted):
    data, net = planted
    acc_none = _accuracy(*fitted_context(data, net, "conv1"), data)
    ctx, fitted = fitted_context(data, net, "conv1", defense="datamix", epochs=4, lr=2e-3)
    assert _accuracy(ctx, fitted, data) >= acc_none - 0.05


def test_unmix_attack_undoes_relu_mixing_and_recovers_the_leakage(linear_cloud):
    data, net = linear_cloud
    mixed = attack_context(data, net, "fc1", defense="datamix", epochs=0)
    scores = run_attack("datamix_unmix", mixed, method="nonneg", attack_params={"epochs": 8})
    s = scores_by_metric(scores)
    recovery = s[("features", "unmix_cosine")]
    assert recovery.value > 0.99 and recovery.extra["test_released_cosine"] < 0.97
    plain = _leakage(attack_context(data, net, "fc1"))
    on_mixed = _leakage(mixed)
    key = ("secret", "balanced_accuracy")
    assert s[key].value > on_mixed.value  # un-mixing restores leakage the mixing hid
    assert abs(s[key].value - plain.value) < 0.08  # to about the undefended level
    assert s[key].extra["unmix_method"] == "nonneg"


def test_unmix_attack_is_the_attribute_attack_without_mixing(linear_cloud):
    data, net = linear_cloud
    ctx = attack_context(data, net, "fc1")
    L.seed_everything(0, verbose=False)
    unmix = scores_by_metric(run_attack("datamix_unmix", ctx, attack_params={"epochs": 4}))
    L.seed_everything(0, verbose=False)
    plain = scores_by_metric(run_attack("attribute", ctx, epochs=4))
    assert unmix[("secret", "balanced_accuracy")].value == pytest.approx(plain[("secret", "balanced_accuracy")].value)
    assert unmix[("features", "unmix_cosine")].value == pytest.approx(1.0)
    assert unmix[("secret", "balanced_accuracy")].extra["k"] == 1


def test_trainable_stages_freeze_the_edge_front(planted):
    data, net = planted
    ctx, fitted = fitted_context(data, net, "fc1", defense="siamese", epochs=1, trainable_stages=1)
    edge, _ = net.split("fc1")
    tuned = fitted.edge
    for (name, a), (_, b) in zip(edge.named_parameters(), tuned.named_parameters()):
        assert torch.equal(a, b) != name.startswith("fc1"), name  # only the last stage (fc1) moved


def test_large_train_features_are_streamed_through_the_frozen_edge(planted):
    from defenses._finetune import FrozenEdge, train_inputs

    data, net = planted
    ctx = attack_context(data, net, "conv1")
    x = data.part("train").x
    inputs, pre = train_inputs(ctx.split, x, max_bytes=0)
    assert inputs is x and isinstance(pre, FrozenEdge)
    assert torch.allclose(pre(x[:16]), ctx.split.features("train")[:16], atol=1e-6)
    features, identity = train_inputs(ctx.split, x)
    assert features is ctx.split.features("train") and isinstance(identity, torch.nn.Identity)
