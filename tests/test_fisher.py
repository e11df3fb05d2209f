"""dFIL (Fisher-information leakage) against closed forms: for a linear edge W with Gaussian noise
of std sigma, tr(I) = ||W||_F^2 / sigma^2 at every input; exact JVP traces match it to float
precision, Hutchinson's estimate within a stated tolerance; per-element noise estimated from channel
queries (learned_noise, Laplace) matches sum_k 2 ||W_k||^2 / sigma_k^2; a deterministic release
reads "no bound"; and on a full-rank linear edge the least-squares (MLE) reconstruction's MSE
lies above the bound, as the Cramér-Rao bound says it must."""
import math

import lightning as L
import pytest
import torch
from torch import nn

from attacks.fisher import dfil_figures, fisher_trace, noise_precision
from audit.core.models import SplitModel
from tests.helpers import attack_context, fitted_context, prepared_task, run_attack, scores_by_metric

DIGITS = {"name": "digits", "primary": "digit", "private": ["ink"]}
D = 64  # digits: 1 x 8 x 8 inputs


def _linear_model(out: int, seed: int = 0) -> SplitModel:
    gen = torch.Generator().manual_seed(seed)
    fc = nn.Linear(D, out, bias=True)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(out, D, generator=gen) / math.sqrt(D))
    return SplitModel([("fc1", nn.Sequential(nn.Flatten(), fc)), ("logits", nn.Linear(out, 10))]).eval()


def _frobenius2(net: SplitModel) -> float:
    return float(net.stages[0][1].weight.detach().double().pow(2).sum())


@pytest.fixture(scope="module")
def digits():
    L.seed_everything(0, verbose=False)
    return prepared_task(DIGITS, {"name": "small_cnn", "widths": [8], "fc": [16]}, epochs=1)


def test_fisher_trace_of_a_linear_map_is_the_frobenius_norm():
    net = _linear_model(32)
    edge, _ = net.split("fc1")
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = 0.5
    truth = _frobenius2(net) / sigma**2
    exact, is_exact = fisher_trace(edge, x, 1 / sigma**2, probes=D, seed=0)
    assert is_exact and torch.allclose(exact, torch.full((40,), truth, dtype=torch.float64), rtol=1e-5)
    estimate, is_exact = fisher_trace(edge, x, 1 / sigma**2, probes=16, seed=0)
    assert not is_exact
    # Hutchinson (Rademacher): per-sample relative sd sqrt(2 (||A||_F^2 - sum A_ii^2) / probes) / tr(A), ~0.25
    # here; the mean of 40 samples is within 10% of the truth (more than 3 standard errors)
    assert float(estimate.mean()) == pytest.approx(truth, rel=0.10)
    assert float(estimate.std() / estimate.mean()) < 0.5
    per_element = torch.full((32,), 1 / sigma**2)  # a per-element precision of the same value: the same trace
    again, _ = fisher_trace(edge, x, per_element, probes=D, seed=0)
    assert torch.allclose(again, exact)


def test_dfil_figures_from_a_trace():
    f = dfil_figures(torch.tensor([64.0, 6400.0]), d=64, peak=1.0)
    assert f["dfil"].tolist() == [1.0, 100.0]
    assert f["mse_bound"].tolist() == pytest.approx([1.0, 0.01])
    assert f["psnr_ceiling"].tolist() == pytest.approx([0.0, 20.0])


def test_noise_precision_sources():
    assert noise_precision({"sigma": 2.0}, "gaussian", None)[:2] == (0.25, "gaussian")
    assert noise_precision({"sigma": 2.0}, "laplace", None)[:2] == (0.5, "laplace")  # Laplace: 2 / sigma^2
    releases = torch.randn(400, 3, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 4.0, 8.0, 0.5])
    precision, dist, source = noise_precision({}, None, releases)
    assert dist == "gaussian" and source == "channel queries"
    assert precision.tolist() == pytest.approx([1.0, 0.25, 1 / 16, 1 / 64, 4.0], rel=0.15)


def test_plugin_matches_the_closed_form_under_gaussian_noise(digits):
    data, _ = digits
    net = _linear_model(32)
    ctx, defense = fitted_context(data, net, "fc1", defense="noise", scale=2.0, finetune_epochs=0)
    sigma = defense.sigma
    truth = _frobenius2(net) / sigma**2 / D  # dFIL: tr(I) / d
    exact = scores_by_metric(run_attack("dfil", ctx, n_eval=20, probes=D))
    dfil = exact[("input", "dfil")]
    assert dfil.value == pytest.approx(truth, rel=1e-4) and dfil.extra["exact_trace"] is True
    assert dfil.extra["sigma"] == pytest.approx(sigma) and dfil.extra["noise_source"] == "defense facts"
    bound = exact[("input", "mse_bound")]
    assert bound.value == pytest.approx(1 / truth, rel=1e-4) and bound.extra["unit"] == "unit^2"
    assert bound.extra["bound_for"].startswith("unbiased reconstructions")  # the report says the bound's scope
    ceiling = exact[("input", "psnr_ceiling")]
    assert ceiling.value == pytest.approx(10 * math.log10(truth), rel=1e-4)  # peak 1 (digits lie in [0, 1])
    hutchinson = scores_by_metric(run_attack("dfil", ctx, n_eval=64, probes=8))[("input", "dfil")]
    assert hutchinson.value == pytest.approx(truth, rel=0.10) and hutchinson.extra["exact_trace"] is False
    assert hutchinson.ci95[0] < truth < hutchinson.ci95[1]


def test_plugin_estimates_per_element_laplace_noise_from_queries(digits):
    data, _ = digits
    net = _linear_model(16)
    ctx, defense = fitted_context(data, net, "fc1", defense="learned_noise", epochs=0, finetune_epochs=0,
                                  init_scale=1.0)
    with torch.no_grad():  # give every element its own noise scale, as a trained defense would
        ctx.channel._device.noise.log_sigma.add_(torch.linspace(-0.5, 0.5, 16))
        sigma = ctx.channel._device.noise.sigma().double()
    w = net.stages[0][1].weight.double()
    truth = float((2 * w.pow(2).sum(1) / sigma.pow(2)).sum()) / D  # Laplace: c = 2
    s = scores_by_metric(run_attack("dfil", ctx, n_eval=8, probes=D, queries=32, query_inputs=32))[("input", "dfil")]
    assert s.extra["noise_source"] == "channel queries" and s.extra["noise_distribution"] == "laplace"
    assert s.value == pytest.approx(truth, rel=0.15)


def test_a_deterministic_release_has_no_bound(digits):
    data, net = digits
    s = scores_by_metric(run_attack("dfil", attack_context(data, net, "conv1"), n_eval=8))
    assert ("input", "dfil") not in s
    assert s[("input", "mse_bound")].value == 0.0 and s[("input", "mse_bound")].extra["applicable"] is False
    assert s[("input", "psnr_ceiling")].value == 100.0


def test_the_mle_of_a_full_rank_linear_edge_lies_above_the_bound(digits):
    """Cramér-Rao: least squares (unbiased for a full-rank W) has per-element MSE sigma^2 tr((W^T W)^-1) / d
    >= d sigma^2 / ||W||_F^2 = 1 / dFIL."""
    data, _ = digits
    net = _linear_model(128)
    ctx, defense = fitted_context(data, net, "fc1", defense="noise", scale=1.0, finetune_epochs=0)
    bound = scores_by_metric(run_attack("dfil", ctx, n_eval=64, probes=D))[("input", "mse_bound")].value
    fc = net.stages[0][1]
    x = ctx.test.x.flatten(1).double()
    x_hat = torch.linalg.lstsq(fc.weight.double(), (ctx.test.z.double() - fc.bias.double()).T).solution.T
    mse = float((x_hat - x).pow(2).mean())
    predicted = defense.sigma**2 * float(torch.linalg.inv(fc.weight.double().T @ fc.weight.double()).trace()) / D
    assert mse == pytest.approx(predicted, rel=0.15)
    assert bound < mse
