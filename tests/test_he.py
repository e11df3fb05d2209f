"""``he``: CKKS (TenSEAL) encrypted inference of the cloud part.

Known truths: the diagonal/BSGS plan reproduces W x + b exactly in the clear;
decrypted predictions equal plaintext inference; the cloud's context has no
secret key and cannot decrypt; attacks on ciphertext bytes are at chance while
the same attack on the raw feature is not.
"""
import numpy as np
import pytest
import tenseal as ts
import torch
from torch import nn

from audit.core.models import SplitModel
from defenses import DEFENSES, FitContext, SplitPoint
from defenses.he.ckks import CKKSConfigError, CloudCrypto, galois_element
from defenses.he.packing import SlotLayout, bias_vector, diagonals, pack, plan_matvec, spread, unpack, vector_layout
from defenses.he.program import UnsupportedCloudError
from tests.helpers import SETTINGS, attack_context, fitted_context, prepared_task, run_attack, scores_by_metric

CNN = {"name": "small_cnn", "widths": [8], "fc": [16]}
SYNTH = {"name": "synthetic", "n": 600, "image_size": 8, "strength": 1.0}


@pytest.fixture(scope="module")
def cnn_task():
    return prepared_task(SYNTH, CNN)


@pytest.fixture(scope="module")
def mlp_task():
    return prepared_task({"name": "synthetic", "n": 200, "image_size": 8, "strength": 0.3}, {"name": "mlp", "hidden": [32, 16]})


def fitted(data, net, cut, **params):
    edge, cloud = net.split(cut)
    split = SplitPoint(cut, net, edge, cloud, compute_features=lambda part: edge(data.part(part).x).detach())
    d = DEFENSES.create("he", **params)
    d.fit(FitContext(split, data.part("train"), data.num_classes(data.primary), SETTINGS, 0))
    return d, split


def _rot(v, k):
    return np.roll(v, -k)


@pytest.mark.parametrize(
    "slots,block,d_in,d_out,b",
    [(4096, 64, 512, 10, 64), (4096, 1, 512, 10, 1), (4096, 64, 16, 2, 30), (64, 4, 40, 100, 3), (256, 8, 100, 3, 5),
     (4096, 4096, 7, 3, 100), (4096, 4, 8192, 512, 2)],
)
def test_diagonal_plan_reproduces_matvec(slots, block, d_in, d_out, b):
    """The packed layout's arithmetic (rotations as np.roll) equals W x + b for every sample."""
    rng = np.random.default_rng(0)
    w, bias, x = rng.normal(size=(d_out, d_in)), rng.normal(size=d_out), rng.normal(size=(b, d_in))
    slot = SlotLayout(slots, block)
    plan = plan_matvec(d_out, vector_layout(d_in, slot.m))
    diag, cts = diagonals(w, plan), pack(x, slot, plan.inp)
    outs = []
    for i in range(plan.out.chunks):
        acc = [np.zeros(slots) for _ in range(plan.n2)]
        for j in range(plan.inp.chunks):
            for k in range(plan.rows):
                g, bb = divmod(k, plan.n1)
                acc[g] += spread(diag[i, j, k], slot) * _rot(cts[j], bb * block)
        total = sum(_rot(a, g * plan.n1 * block) for g, a in enumerate(acc))
        for f in plan.folds:
            total = total + _rot(total, f * block)
        outs.append(total + spread(bias_vector(bias, plan, i), slot))
    np.testing.assert_allclose(unpack(np.stack(outs), slot, plan.out, b), x @ w.T + bias, atol=1e-9)


def test_predictions_agree_with_plaintext_small_cnn(cnn_task):
    """Cut conv1: conv2 unrolled, max-pool and ReLU on the device: three encrypted rounds."""
    data, net = cnn_task
    d, split = fitted(data, net, "conv1")
    assert d.rounds == 3
    x, z = data.part("test").x[:96], split.features("test")[:96]
    logits = d.predict(x, z)
    plain = split.cloud(z)
    agree = (logits.argmax(1) == plain.argmax(1)).float().mean()
    assert agree >= 0.99
    assert (logits - plain).abs().max() < 1e-3
    assert d.agreement == [int(agree * 96), 96]
    cost = d.cost(x[:32], full_flops=10**6)
    assert cost["rounds"] == 3 and cost["bytes_sent"] > 0 and cost["bytes_received"] > 0
    assert cost["edge_ops_crypto"] > 0 and cost["cloud_latency_ms"] > 0 and cost["plaintext_agreement"] >= 0.99


def test_predictions_agree_mlp_and_naive_layout(mlp_task):
    data, net = mlp_task
    test = data.part("test")
    packed, split = fitted(data, net, "fc1")
    naive, _ = fitted(data, net, "fc1", layout="naive", batch_size=4)
    z = split.features("test")[:8]
    plain = split.cloud(z)
    for d in (packed, naive):
        logits = d.predict(test.x[:8], z)
        assert torch.equal(logits.argmax(1), plain.argmax(1))
        assert (logits - plain).abs().max() < 1e-3
    assert naive.cost(test.x[:4], 10**6)["bytes_received"] > 10 * packed.cost(test.x[:4], 10**6)["bytes_received"]


def test_cloud_context_has_no_secret_key(cnn_task):
    data, net = cnn_task
    d, _ = fitted(data, net, "pool1")
    public = ts.context_from(d.device_crypto.public_context)  # exactly the bytes the cloud is built from
    assert not public.is_private() and not public.has_secret_key()
    assert not d.protocol.cloud.crypto.context.is_private()
    secret = ts.ckks_vector(d.device_crypto.context, [1.0, 2.0, 3.0]).serialize()
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(public, secret).decrypt()
    leaked = d.device_crypto.context.serialize(save_secret_key=True)
    with pytest.raises(ValueError, match="secret key"):
        CloudCrypto(leaked, b"", 2.0**40)
    # Galois keys exist for exactly the rotation steps the cloud program uses
    keys = d.protocol.cloud.crypto.galois_keys
    steps = d.device_crypto.rotation_steps
    assert steps and all(keys.has_key(galois_element(s, 8192)) for s in steps)
    unused = next(s for s in range(1, 4096) if s not in steps)
    assert not keys.has_key(galois_element(unused, 8192))


def test_attacks_find_chance_on_ciphertext(cnn_task):
    data, net = cnn_task
    raw = scores_by_metric(run_attack("attribute_linear", attack_context(data, net, "pool1")))
    ctx, fitted = fitted_context(data, net, "pool1", defense="he", release_bytes=4096)
    assert ctx.aux.z.dtype == torch.uint8 and ctx.aux.z.shape[1] == fitted.release_width == 4096
    # the attacker's own queries encrypt under the public key: same width, and it cannot decrypt
    queried = ctx.channel.release(data.part("aux").x[:4])
    assert queried.dtype == torch.uint8 and queried.shape == (4, 4096)
    for name, params in (("attribute_linear", {}), ("attribute", {"epochs": 3})):
        enc = scores_by_metric(run_attack(name, ctx, **params))
        for (target, metric), score in enc.items():
            if metric != "balanced_accuracy":
                continue
            # no leakage: below chance + 0.12 (3 standard errors at n=150; asserting that a 95% CI
            # covers chance would fail 1 run in 20 by design), while the raw feature leaks far beyond
            assert score.value < score.chance + 0.12, (name, target, score)
            assert raw[(target, metric)].ci95[0] > score.chance + 0.3, raw[(target, metric)]


def test_release_is_fresh_ciphertext(cnn_task):
    data, net = cnn_task
    d, split = fitted(data, net, "fc1")
    test = data.part("test")
    a = d.release(test.x[:70], split.features("test")[:70])
    b = d.release(test.x[:70], split.features("test")[:70])
    assert a.shape == (70, d.release_width) and a.dtype == torch.uint8
    assert (a != b).float().mean() > 0.9  # encryption is randomised: same input, new bytes
    assert d.bytes_per_sample(a) == d.release_width


def test_unsupported_cloud_layers_are_refused_with_the_cut_points_that_work(cnn_task):
    data, net = cnn_task
    with pytest.raises(UnsupportedCloudError) as err:
        fitted(data, net, "conv1", max_dense_elements=1000)
    msg = str(err.value)
    assert "conv2.0" in msg and "max_dense_elements" in msg and "where he applies: conv2, pool1, fc1" in msg

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 64)

        def forward(self, x):
            return x + self.lin(x)

    model = SplitModel([("a", nn.Sequential(nn.Flatten(), nn.Linear(64, 64))), ("res", Residual()),
                        ("logits", nn.Linear(64, 2))], name="toy").eval()
    with pytest.raises(UnsupportedCloudError, match=r"'res' \(Residual.*where he applies: res"):
        fitted(data, model, "a")


def test_polynomial_activations(mlp_task):
    data, net = mlp_task
    with pytest.raises(CKKSConfigError, match="needs 3 multiplicative levels"):
        fitted(data, net, "fc1", activations="polynomial")
    d, split = fitted(data, net, "fc1", activations="polynomial", coeff_mod_bit_sizes=[40, 30, 30, 30, 40],
                      scale_bits=30)
    assert d.rounds == 1 and "fc2.1" in d.schedule.polynomials
    z = split.features("test")
    logits = d.predict(data.part("test").x, z)
    poly_plain = d.schedule.plaintext(z)  # the same polynomial network in the clear
    assert (logits.argmax(1) == poly_plain.argmax(1)).float().mean() >= 0.99
    assert (logits - poly_plain).abs().max() < 0.05
