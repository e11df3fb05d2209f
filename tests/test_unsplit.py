"""UnSplit (architecture-only inversion) against known truths on digits: with no aux data and a
surrogate edge that holds none of the edge's weights it reconstructs a shallow cut far above the
mean-image baseline, the reconstruction falls with depth and to the baseline under overwhelming
noise, a collapsed reconstruction is flagged degenerate, and the aux split never changes what it
reconstructs."""
import lightning as L
import pytest
import torch
from torch import nn

from attacks.unsplit import THREAT_MODEL, fresh_surrogate, surrogate_seed
from tests.helpers import attack_context, prepared_task, run_attack, scores_by_metric

DIGITS = {"name": "digits", "primary": "digit", "private": ["ink"]}
MODEL = {"name": "small_cnn", "widths": [8, 16], "fc": [16]}
FAST = {"n_eval": 32, "rounds": 20, "grid": False}


@pytest.fixture(scope="module")
def digits():
    L.seed_everything(0, verbose=False)  # the task model's initial weights: the seed the attack also uses
    return prepared_task(DIGITS, MODEL)


def test_the_surrogate_has_the_architecture_and_none_of_the_weights(digits):
    _, net = digits
    edge, _ = net.split("conv1")
    surrogate, redrawn = fresh_surrogate(edge, seed=0)
    assert [type(m) for m in surrogate.modules()] == [type(m) for m in edge.modules()] and redrawn == 0
    for (name, new), (_, old) in zip(surrogate.named_parameters(), edge.named_parameters()):
        assert new.shape == old.shape and not torch.equal(new, old), name
    conv, original = surrogate[0][0].weight, edge[0][0].weight
    assert (conv - original).abs().max() > 0.3  # not the task model's initialisation (seed 0) either
    assert surrogate_seed(0) != 0 and surrogate_seed(0) == surrogate_seed(0) != surrogate_seed(1)
    again, _ = fresh_surrogate(edge, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), surrogate.parameters()))  # per seed


def test_a_parameter_without_reset_is_redrawn():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4, 3))

        def forward(self, x):
            return x @ self.w

    surrogate, redrawn = fresh_surrogate(Scale(), seed=0)
    assert redrawn == 1 and not torch.equal(surrogate.w, torch.ones(4, 3))


def test_unsplit_beats_the_mean_image_at_a_shallow_cut_and_falls_with_depth(digits):
    data, net = digits
    shallow = scores_by_metric(run_attack("unsplit", attack_context(data, net, "conv1"), **FAST))
    psnr, ssim = shallow[("input", "psnr")], shallow[("input", "ssim")]
    assert psnr.chance < 13 and psnr.ci95[0] > psnr.chance + 5, psnr  # no aux data, yet far above the mean image
    assert ssim.ci95[0] > ssim.chance + 0.2 and psnr.extra["degenerate"] is False
    assert psnr.n_eval == 32 and psnr.extra["threat_model"] == THREAT_MODEL
    assert THREAT_MODEL["aux_data"] is False and THREAT_MODEL["edge_weights"] is False
    deep = scores_by_metric(run_attack("unsplit", attack_context(data, net, "conv2"), **FAST))[("input", "psnr")]
    assert deep.value < psnr.value - 5, (deep, psnr)


def test_the_aux_split_does_not_change_the_reconstruction(digits):
    """Only the input domain (here given) and the mean-image chance level come from the aux split."""
    data, net = digits
    ctx = attack_context(data, net, "conv1")
    params = {**FAST, "rounds": 3, "data_range": (0.0, 1.0)}
    before = scores_by_metric(run_attack("unsplit", ctx, **params))[("input", "psnr")]
    ctx.aux.z = torch.randn_like(ctx.aux.z)
    ctx.aux.y = torch.zeros_like(ctx.aux.y)
    ctx.aux.x = ctx.aux.x.mean(0, keepdim=True).expand_as(ctx.aux.x).clone()  # same mean image, no samples
    after = scores_by_metric(run_attack("unsplit", ctx, **params))[("input", "psnr")]
    assert after.value == before.value and after.ci95 == before.ci95


def test_a_collapsed_reconstruction_reads_degenerate(digits):
    data, net = digits
    s = scores_by_metric(run_attack("unsplit", attack_context(data, net, "conv1"), n_eval=16, rounds=2,
                                    input_steps=2, input_lr=1e-5, grid=False))[("input", "psnr")]
    assert s.extra["degenerate"] is True  # every input still the mid-range start image: inconclusive, not safe


def test_a_release_without_a_white_box_map_is_refused(digits):
    data, net = digits
    ctx = attack_context(data, net, "conv1")
    ctx.aux.z = ctx.aux.z.flatten(1)[:, :10]  # e.g. a projection: no edge of this architecture produces it
    with pytest.raises(ValueError, match="architecture of a map"):
        run_attack("unsplit", ctx)


def test_a_feature_drowned_in_noise_gives_no_advantage(digits):
    """Independent data: at 100x the feature's std the release carries (almost) nothing about the input."""
    data, net = digits
    ctx = attack_context(data, net, "conv1", defense="noise", scale=100.0, finetune_epochs=0)
    s = scores_by_metric(run_attack("unsplit", ctx, **FAST))[("input", "psnr")]
    assert s.ci95[0] < s.chance + 1.0, s  # not above the mean image by the verdicts' 1 dB
