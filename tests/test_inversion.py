"""Inversion attacks against known truths: the decoder reconstructs an early cut far above the
mean-image baseline and falls to it under huge noise; rMLE recovers the input of an invertible
edge; the scoring functions give the analytic PSNR; releases without a white-box map are refused."""
import math

import lightning as L
import pytest
import torch
from PIL import Image
from torch import nn

from attacks.inversion import data_range_of, per_sample_psnr, per_sample_ssim, reconstruction_scores
from audit.core.models import SplitModel
from defenses.base import Defense, FitContext
from tests.helpers import SETTINGS, attack_context, prepared_task, run_attack, scores_by_metric

DIGITS = {"name": "digits", "primary": "digit", "private": ["ink"]}
MODEL = {"name": "small_cnn", "widths": [8], "fc": [16]}
FAST = {"epochs": 8, "batch_size": 32, "lr": 2e-3, "width": 32}


@pytest.fixture(scope="module")
def digits():
    L.seed_everything(0, verbose=False)  # the helper initialises the task model from the global RNG
    return prepared_task(DIGITS, MODEL)


def test_psnr_and_ssim_against_analytic_values():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=gen)
    shifted = x + 0.1  # MSE = 0.01 for every sample
    assert torch.allclose(per_sample_psnr(shifted, x, 1.0), torch.full((6,), 20.0), atol=1e-4)
    assert torch.allclose(per_sample_psnr(shifted, x, 2.0), torch.full((6,), 20 + 20 * math.log10(2)), atol=1e-4)
    assert per_sample_psnr(x, x, 1.0).max() == 100.0  # exact reconstruction: capped, not inf
    assert torch.allclose(per_sample_ssim(x, x, 1.0), torch.ones(6))
    a, b = torch.rand(2, 64, 1, 4, 4, generator=gen)  # small images work; independent images score ~0
    assert abs(float(per_sample_ssim(a, b, 1.0).mean())) < 0.1 and per_sample_ssim(a, a, 1.0).min() > 0.999
    assert per_sample_ssim(x.flatten(1), x.flatten(1), 1.0) is None  # not an image: no SSIM


def test_data_range_rule():
    assert data_range_of(torch.rand(10, 1, 4, 4)) == (0.0, 1.0)
    z = torch.randn(10, 1, 4, 4)
    assert data_range_of(z) == (float(z.min()), float(z.max()))
    assert data_range_of(z, (-5, 5)) == (-5.0, 5.0)
    with pytest.raises(ValueError, match="data range"):
        data_range_of(torch.zeros(4, 3) + 2.0)


def test_mean_image_baseline_is_the_chance_level():
    x = torch.rand(50, 1, 8, 8)
    mean = x.mean(0)
    scores = scores_by_metric(reconstruction_scores(x, mean.expand_as(x), mean, (0.0, 1.0), n_boot=50, seed=0))
    for metric in ("psnr", "ssim"):
        s = scores[("input", metric)]
        assert abs(s.advantage) < 1e-9 and s.n_eval == 50
        # the same image for every input measures nothing: flagged for an `inconclusive` verdict
        assert s.extra["degenerate"] is True and s.extra["output_spread"] == pytest.approx(0.0, abs=1e-6)
    honest = scores_by_metric(reconstruction_scores(x, x.clamp(0.1, 0.9), mean, (0.0, 1.0), n_boot=50, seed=0))
    assert honest[("input", "psnr")].extra["degenerate"] is False
    assert honest[("input", "psnr")].extra["output_spread"] > 0.5


def test_decoder_reconstructs_an_early_cut_and_noise_destroys_it(digits, tmp_path):
    data, net = digits
    ctx = attack_context(data, net, "conv1")
    ctx.artifact_dir = tmp_path / "artifacts" / "cell0"
    s = scores_by_metric(run_attack("inversion", ctx, **FAST))
    psnr, ssim = s[("input", "psnr")], s[("input", "ssim")]
    assert psnr.chance < 13 and psnr.ci95[0] > psnr.chance + 10, psnr  # far above the mean image
    assert ssim.ci95[0] > ssim.chance + 0.3, ssim
    assert psnr.n_eval == len(data.part("test"))
    assert psnr.extra["grid"] == "artifacts/cell0/inversion_decoder.png"
    grid = Image.open(tmp_path / psnr.extra["grid"])
    assert grid.format == "PNG" and grid.size[0] > 2 * grid.size[1]  # 8 originals over 8 reconstructions

    noisy = attack_context(data, net, "conv1", defense="noise", scale=100.0, finetune_epochs=0)
    n = scores_by_metric(run_attack("inversion", noisy, **FAST))[("input", "psnr")]
    assert n.value < psnr.value - 10 and n.value < n.chance + 1.5, n  # near the mean-image baseline


def _invertible_edge_model(channels: int) -> SplitModel:
    """conv1: a 3x3 conv with identity centre taps plus small random weights (invertible; no ReLU)."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(channels, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=gen))
        for c in range(4):
            conv.weight[c, c % channels, 1, 1] += 1.0
    return SplitModel([("conv1", conv), ("logits", nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 10)))]).eval()


def test_rmle_recovers_the_input_of_an_invertible_edge(digits, tmp_path):
    data, _ = digits
    net = _invertible_edge_model(channels=1)
    ctx = attack_context(data, net, "conv1")
    ctx.artifact_dir = tmp_path / "artifacts" / "cellR"
    scores = scores_by_metric(run_attack("inversion_rmle", ctx, n_eval=16, iterations=300, tv_weight=0.0))
    psnr = scores[("input", "psnr")]
    assert psnr.value > 35 and psnr.chance < 13, psnr
    assert scores[("input", "ssim")].value > 0.98
    assert psnr.n_eval == 16 and psnr.extra["feature_residual"] < 1e-3
    assert (tmp_path / psnr.extra["grid"]).is_file()


def test_rmle_in_bfloat16_refines_in_float32_and_recovers_the_input(digits):
    """precision: bfloat16 runs three quarters of the steps in bfloat16 autocast, then float32: the input of an
    invertible edge is still recovered to a float32-level feature residual; all steps in bfloat16 stop at
    bfloat16's resolution (a residual over 10x larger)."""
    from attacks.inversion_rmle import rmle_invert

    data, _ = digits
    net = _invertible_edge_model(channels=1)
    scores = scores_by_metric(run_attack("inversion_rmle", attack_context(data, net, "conv1"), n_eval=16,
                                         iterations=300, tv_weight=0.0, precision="bfloat16"))
    psnr = scores[("input", "psnr")]
    assert psnr.value > 35 and psnr.extra["feature_residual"] < 1e-3, psnr
    assert psnr.extra["bfloat16_steps"] == 225 and psnr.extra["iterations"] == 300

    edge, _ = net.split("conv1")
    x = data.part("test").x[:16].float()
    z = edge.eval()(x).detach()
    x0 = data.part("aux").x.float().mean(0).expand_as(x)
    kw = dict(iterations=300, lr=0.05, tv_weight=0.0, feature_scale=float(z.pow(2).mean()))
    _, tail = rmle_invert(edge, z, x0, (0.0, 1.0), low_precision_steps=225, **kw)
    _, all_bf16 = rmle_invert(edge, z, x0, (0.0, 1.0), low_precision_steps=300, **kw)
    assert all_bf16.median() > 10 * tail.median(), (all_bf16.median(), tail.median())


def test_rmle_precision_auto_uses_bfloat16_only_where_the_device_computes_it(monkeypatch):
    import attacks.inversion_rmle as rmle
    from attacks import create_attack

    attack = create_attack("inversion_rmle", iterations=200, precision="auto")
    monkeypatch.setattr(rmle, "native_bfloat16", lambda device: False)
    assert attack.low_precision_steps(torch.device("cpu")) == 0
    monkeypatch.setattr(rmle, "native_bfloat16", lambda device: True)
    assert attack.low_precision_steps(torch.device("cpu")) == 150
    assert create_attack("inversion_rmle", iterations=7, precision="bfloat16").low_precision_steps(
        torch.device("cpu")) == 5  # ceil(7 / 4) = 2 steps in float32
    assert create_attack("inversion_rmle", precision="float32").low_precision_steps(torch.device("cpu")) == 0
    assert create_attack("inversion_rmle").params.precision == "auto"


def test_rmle_on_the_trained_model_beats_the_mean_image(digits):
    data, net = digits
    psnr = scores_by_metric(run_attack("inversion_rmle", attack_context(data, net, "conv1"), n_eval=16,
                                       iterations=200))[("input", "psnr")]
    assert psnr.ci95[0] > psnr.chance + 10, psnr


class _Projected(Defense):
    """Releases the first 10 elements of the flattened edge feature: not edge(x) plus same-shaped noise."""

    @torch.no_grad()
    def release(self, x, features=None):
        z = features if features is not None else self.edge(x)
        return z.flatten(1)[:, :10]


def test_rmle_refuses_a_release_without_white_box_map(digits):
    data, net = digits
    ctx = attack_context(data, net, "conv1")
    ctx.defense = _Projected(Defense.Params())
    ctx.defense.fit(FitContext(ctx.split, data.part("train"), 10, SETTINGS, 0))
    ctx.aux.z = ctx.defense.release(ctx.aux.x)
    with pytest.raises(ValueError, match="white-box map"):
        run_attack("inversion_rmle", ctx)


def test_rmle_batched_over_images_equals_one_image_at_a_time(digits):
    """All images are optimised in one batch: the loss is a sum of per-image terms and Adam is elementwise,
    so each image's reconstruction is the one a loop over single images finds (float rounding aside)."""
    from attacks.inversion_rmle import rmle_invert

    data, net = digits
    edge, _ = net.split("conv1")
    x = data.part("test").x[:6].float()
    z = edge.eval()(x).detach()
    x0 = data.part("aux").x.float().mean(0).expand_as(x)
    kw = dict(iterations=60, lr=0.05, tv_weight=0.05, feature_scale=float(z.pow(2).mean()))
    batched, res = rmle_invert(edge, z, x0, (0.0, 1.0), **kw)
    for i in range(6):
        single, res_i = rmle_invert(edge, z[i : i + 1], x0[i : i + 1], (0.0, 1.0), **kw)
        assert torch.allclose(batched[i : i + 1], single, atol=1e-4), i
        assert torch.allclose(res[i : i + 1], res_i, rtol=1e-3, atol=1e-7)


def test_decoder_stops_early_and_keeps_its_best_epoch(digits):
    """With patience the decoder stops once the validation MSE has not improved for that many epochs, and
    the record says which epoch was kept; without it every epoch runs."""
    data, net = digits
    ctx = attack_context(data, net, "pool1")
    fast = dict(FAST, epochs=30, lr=2e-2)
    early = scores_by_metric(run_attack("inversion", ctx, patience=1, **fast))[("input", "psnr")]
    assert early.extra["epochs_run"] <= early.extra["best_epoch"] + 2 and early.extra["epochs_run"] < 30
    assert early.ci95[0] > early.chance + 3  # still far above the mean image
    full = scores_by_metric(run_attack("inversion", ctx, patience=None, **dict(fast, epochs=3)))[("input", "psnr")]
    assert full.extra["epochs_run"] == 3
