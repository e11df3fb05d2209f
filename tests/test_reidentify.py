"""Re-identification against known truths: exact ranks on constructed distances; a deterministic
release is a perfect identifier; huge noise drives the attack to chance (1/N top-1, 0.5 rank)."""
import lightning as L
import pytest
import torch

from attacks.reidentify import StandardSpace, link_ranks, wilson_ci
from tests.helpers import attack_context, fitted_context, prepared_task, run_attack, scores_by_metric


def test_link_ranks_exact():
    c = torch.arange(5.0)[:, None] * torch.tensor([[1.0, 0.0]])  # candidates on a line: 0, 1, 2, 3, 4
    rank, top1 = link_ranks(c.clone(), c)
    assert torch.equal(rank, torch.zeros(5)) and torch.equal(top1, torch.ones(5))
    observed = c.flip(0)  # observed i sits on candidate 4 - i
    rank, top1 = link_ranks(observed, c)
    # true distances |4 - 2i|: for i = 0 every other candidate is closer (rank 5 -> 1.0); i = 2 is exact;
    assert torch.allclose(rank, torch.tensor([1.0, 0.75, 0.0, 0.75, 1.0]))  # i = 1 (at 3, true at 1): 3 closer
    assert torch.equal(top1, torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))
    tied = torch.zeros(4, 3)  # all candidates identical: ties shared
    rank, top1 = link_ranks(tied, tied)
    assert torch.allclose(rank, torch.full((4,), 0.5)) and torch.allclose(top1, torch.full((4,), 0.25))


def test_independent_features_rank_at_chance():
    gen = torch.Generator().manual_seed(0)
    rank, top1 = link_ranks(torch.randn(400, 16, generator=gen), torch.randn(400, 16, generator=gen))
    assert abs(float(rank.mean()) - 0.5) < 0.04 and float(top1.mean()) < 0.02


def test_link_ranks_do_not_depend_on_the_chunk():
    gen = torch.Generator().manual_seed(1)
    candidates = torch.randn(50, 8, generator=gen)
    observed = candidates + 0.8 * torch.randn(50, 8, generator=gen)  # some links right, some wrong
    whole = link_ranks(observed, candidates, chunk=50)
    assert 0.0 < float(whole[1].mean()) < 1.0
    for chunk in (1, 7, None):
        parts = link_ranks(lambda start, stop: observed[start:stop], candidates, chunk=chunk)
        assert all(torch.allclose(a, b) for a, b in zip(whole, parts))


def test_wilson_interval():
    lo, hi = wilson_ci(0.0, 100)
    assert lo == 0.0 and 0.03 < hi < 0.04  # covers a 1/100 chance level with no hit
    lo, hi = wilson_ci(0.5, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3


@pytest.fixture(scope="module")
def task():
    L.seed_everything(0, verbose=False)  # the helper initialises the task model from the global RNG
    return prepared_task({"name": "synthetic", "n": 400, "image_size": 8, "strength": 0.3},
                         {"name": "small_cnn", "widths": [8], "fc": [16]})


def test_none_is_a_perfect_identifier_and_huge_noise_is_chance(task):
    data, net = task
    s = scores_by_metric(run_attack("reidentify", attack_context(data, net, "conv1")))
    top1, rank = s[("identity", "top1")], s[("identity", "normalized_rank")]
    n = len(data.part("test"))
    assert top1.chance == 1 / n and top1.n_eval == n and rank.chance == 0.5
    assert top1.ci95[0] > 0.9 and rank.value < 0.01 and rank.advantage > 0.49

    ctx = attack_context(data, net, "conv1", defense="noise", scale=1000.0, finetune_epochs=0)
    s = scores_by_metric(run_attack("reidentify", ctx))
    top1, rank = s[("identity", "top1")], s[("identity", "normalized_rank")]
    assert top1.ci95[0] <= 1 / n <= top1.ci95[1] and top1.value < 0.05, top1
    assert rank.ci95[0] <= 0.5 <= rank.ci95[1], rank
    assert top1.extra["queries"] == 4  # fresh releases of a noisy channel are averaged


def test_reidentify_does_not_disturb_the_defense_noise(task):
    """Queries go to a private copy: the defense's own next draws are unchanged."""
    data, net = task
    a, defense_a = fitted_context(data, net, "conv1", defense="noise", scale=1.0, finetune_epochs=0)
    _, defense_b = fitted_context(data, net, "conv1", defense="noise", scale=1.0, finetune_epochs=0)
    run_attack("reidentify", a)
    x = data.part("test").x[:8]
    assert torch.equal(defense_a.release(x), defense_b.release(x))


def test_the_standard_space_is_the_same_gathered_in_blocks_or_in_place():
    """z[rows] mapped block by block, and a float32 matrix standardised in place, equal the plain
    (x - mean) / std of the aux statistics (floored std), in float32."""
    gen = torch.Generator().manual_seed(0)
    aux = torch.randn(50, 3, 4, 4, generator=gen) * torch.linspace(0.1, 3, 48).view(1, 3, 4, 4) + 2.0
    z = torch.randn(40, 3, 4, 4, generator=gen)
    space = StandardSpace(aux, None)
    flat = aux.flatten(1).double()
    expected = ((z.flatten(1).double() - flat.mean(0)) / flat.std(0)).float()
    rows = torch.tensor([5, 1, 30, 7])
    torch.testing.assert_close(space(z), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(space(z, rows=rows), expected[rows], atol=1e-5, rtol=1e-5)
    copy = z.clone()
    out = space(copy, in_place=True)
    assert out.data_ptr() == copy.data_ptr() and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


class _NoisyChannel:
    """A release channel stand-in: x * 2 plus seeded Gaussian noise of ``sigma`` (0: deterministic)."""

    def __init__(self, sigma: float):
        self.sigma, self.gen = sigma, torch.Generator().manual_seed(3)

    def release(self, x, features=None):
        return x * 2 + self.sigma * torch.randn(x.shape, generator=self.gen)


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_mean_release_is_the_mean_of_whole_releases_summed_in_place(sigma):
    from attacks._channel import release_batched
    from attacks.reidentify import mean_release

    x = torch.randn(700, 5)
    mean, used = mean_release(_NoisyChannel(sigma), x, queries=4, batch_size=256)
    reference = _NoisyChannel(sigma)  # the same draws in the same order, whole releases summed
    releases = [release_batched(reference, x) for _ in range(4)]
    if sigma == 0:
        assert used == 1 and torch.equal(mean, releases[0])
    else:
        total = releases[0].clone()
        for r in releases[1:]:
            total += r
        assert used == 4 and torch.equal(mean, total / 4)
        assert (mean - 2 * x).std() < 0.6  # averaging 4 draws halves the noise's std
