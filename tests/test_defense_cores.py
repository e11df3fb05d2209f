"""The defenses' functional cores against analytic truths (no training; fast)."""
import math

import numpy as np
import pytest
import torch

from attacks.datamix_unmix import align, group_slices, resolve_sign_scale, unmix_ica, unmix_nonneg
from defenses.datamix import demix, draw_mixing, mix, pad_to_groups
from defenses.noise import PCAProjection, pca_basis, unit_noise
from defenses.nopeek import distance_correlation
from defenses.siamese import contrastive_loss


# ----------------------------------------------------------------------------- distance correlation
def test_dcor_is_one_for_a_similarity_transform_and_small_for_independent_data():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=gen)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen))
    assert float(distance_correlation(a, 3.0 * a @ rotation + 7.0)) == pytest.approx(1.0, abs=1e-4)
    b = torch.randn(200, 5, generator=gen)
    # independent samples: the sample dCor is small (its expectation shrinks like n^-1/2)
    assert float(distance_correlation(a, b)) < 0.3


def test_dcor_matches_the_textbook_formula_on_a_small_example():
    a = torch.tensor([[0.0], [1.0], [2.0], [4.0]])
    b = torch.tensor([[1.0], [0.0], [3.0], [2.0]])

    def centred(v):
        d = (v - v.T).abs()
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    A, B = centred(a.double()), centred(b.double())
    truth = math.sqrt(float((A * B).mean() / torch.sqrt((A * A).mean() * (B * B).mean())))
    assert float(distance_correlation(a, b)) == pytest.approx(truth, abs=1e-5)


def test_dcor_of_a_single_sample_is_zero_and_differentiable():
    z = torch.randn(1, 4, requires_grad=True)
    out = distance_correlation(torch.randn(1, 3), z)
    out.backward()
    assert float(out) == 0.0 and torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- contrastive loss
def test_contrastive_loss_values():
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # rows 0, 1 same direction; 2 orthogonal
    # pairs: (0,1) similar at d=0 -> 0; (0,2), (1,2) dissimilar at d=sqrt(2) > margin 1 -> 0
    assert float(contrastive_loss(z, torch.tensor([0, 0, 1]), margin=1.0)) == pytest.approx(0.0, abs=1e-6)
    # all similar: (0,2) and (1,2) at d^2 = 2, (0,1) at 0 -> mean 4/3
    assert float(contrastive_loss(z, torch.tensor([0, 0, 0]), margin=1.0)) == pytest.approx(4 / 3, abs=1e-5)
    # margin 2 on dissimilar pairs: (2 - sqrt 2)^2 each, (0,1) similar 0 -> mean 2/3 (2 - sqrt 2)^2
    expected = 2 / 3 * (2 - math.sqrt(2)) ** 2
    assert float(contrastive_loss(z, torch.tensor([0, 0, 1]), margin=2.0)) == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------- PCA
def test_pca_basis_finds_the_planted_subspace_and_reconstructs_low_rank_data():
    gen = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(300, 4, generator=gen))
    coeff = torch.randn(500, 4, generator=gen) * torch.tensor([10.0, 5.0, 3.0, 1.0])
    z = (coeff @ basis.T + 2.0).reshape(500, 3, 10, 10)
    mean, found = pca_basis(z.flatten(1), 4)
    # same subspace: the projection matrices agree
    assert torch.allclose(found @ found.T, basis @ basis.T, atol=1e-4)
    pca = PCAProjection.fit(z, 4)
    assert pca.components == 4 and torch.allclose(pca.inverse(pca(z)), z, atol=1e-3)
    assert PCAProjection.fit(z[:3], 64).components == 2  # capped at N - 1


def test_unit_noise_has_unit_std():
    for dist in ("gaussian", "laplace"):
        e = unit_noise((200_000,), dist, torch.Generator().manual_seed(0))
        assert float(e.std()) == pytest.approx(1.0, abs=0.01) and abs(float(e.mean())) < 0.01


# ----------------------------------------------------------------------------- DataMix
def test_laplace_noise_is_finite_when_the_uniform_draw_is_exactly_zero(monkeypatch):
    """torch.rand returns 0 about once in 2^24 draws (a UTKFace pool3 aux split has 14M elements):
    the inverse CDF must not turn that into an infinite noise value (it made learned_noise NaN)."""
    draws = torch.tensor([0.0, 2.0**-24, 0.25, 0.5, 1 - 2.0**-24])
    monkeypatch.setattr(torch, "rand", lambda shape, generator=None: draws.clone())
    e = unit_noise((5,), "laplace")
    assert torch.isfinite(e).all()
    b = 1 / math.sqrt(2)
    expected = [-24 * math.log(2) * b, math.log(2.0**-23) * b, math.log(0.5) * b, 0.0, -math.log(2.0**-23) * b]
    assert torch.allclose(e, torch.tensor(expected), atol=1e-4), e


def test_mixing_matrices_are_convex_invertible_well_conditioned_and_fresh():
    m = draw_mixing(500, 3, torch.Generator().manual_seed(0), max_condition=8.0)
    assert m.shape == (500, 3, 3) and (m >= 0).all()
    assert torch.allclose(m.sum(dim=2), torch.ones(500, 3))
    assert (torch.linalg.cond(m) <= 8.0 + 1e-4).all()
    assert (torch.linalg.det(m).abs() > 1e-4).all()
    assert len({tuple(x.flatten().tolist()) for x in m}) == 500  # a fresh secret per group
    again = draw_mixing(500, 3, torch.Generator().manual_seed(0), max_condition=8.0)
    assert torch.equal(m, again)  # deterministic per seed


def test_demix_inverts_mix_and_an_affine_cloud_commutes_with_it():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 4, 5, generator=gen)
    m = draw_mixing(6, 2, gen)
    assert torch.allclose(demix(mix(z, m), m), z, atol=1e-5)
    cloud = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20, 3))  # affine: rows summing to 1 suffice
    with torch.no_grad():
        assert torch.allclose(demix(cloud(mix(z, m)), m), cloud(z), atol=1e-5)


def test_padding_and_group_slices_agree():
    z = torch.arange(5.0)[:, None]
    assert pad_to_groups(z, 2).flatten().tolist() == [0, 1, 2, 3, 4, 0]
    assert pad_to_groups(z[:1], 3).flatten().tolist() == [0, 0, 0]
    assert group_slices(7, 2, call_rows=4) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 7)]


def _sparse_sources(g: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(g, 2, d, generator=gen))  # ReLU features: about half exact zeros


def test_nonneg_unmixing_recovers_relu_sources_exactly():
    z = _sparse_sources(50, 400, 0)
    m = draw_mixing(50, 2, torch.Generator().manual_seed(1))
    mixed = torch.bmm(m, z)
    found = unmix_nonneg(mixed)
    for g in range(50):
        perm = align(found[g], z[g])
        assert torch.allclose(found[g][perm], z[g], atol=1e-4)


def test_ica_with_cluster_sign_scale_recovers_independent_sources():
    gen = torch.Generator().manual_seed(2)
    d = 5000
    sources = torch.relu(torch.randn(2, d, generator=gen)) ** 2  # sparse, heavy-tailed, independent
    m = draw_mixing(1, 2, gen)[0]
    found = torch.from_numpy(unmix_ica((m @ sources).numpy(), seed=0, samples=d, max_iter=400))
    found = resolve_sign_scale(found, sources)  # centroids: the true sources (the best case)
    perm = align(found, sources)
    cos = torch.nn.functional.cosine_similarity(found[perm], sources, dim=1)
    assert (cos > 0.99).all(), cos
    scale = found[perm].norm(dim=1) / sources.norm(dim=1)
    assert torch.allclose(scale, torch.ones(2), atol=0.05)


def test_ica_leaves_a_single_row_unchanged():
    row = np.ones((1, 10), dtype=np.float32)
    assert np.array_equal(unmix_ica(row, 0, 100, 10), row)


def test_unmix_streams_release_calls_into_a_mapped_array_with_the_in_ram_result(tmp_path):
    """The adaptive attack un-mixes one release call at a time: over several calls (one partial),
    the memory-mapped result (as for UTKFace conv1 features, 1 MB per sample) equals the in-RAM
    one and recovers the ReLU sources exactly."""
    from attacks import ATTACKS
    from attacks.datamix_unmix import request_rows
    from audit.core.feature_store import is_mapped

    call = request_rows()
    n = 2 * call + 10  # two full release calls and a short third one
    gen = torch.Generator().manual_seed(3)
    clean = torch.relu(torch.randn(n, 4, 8, 8, generator=gen))
    groups = group_slices(n, 2, call)
    mixed = clean.clone().flatten(1)
    for g, m in zip(groups, draw_mixing(len(groups), 2, gen)):
        mixed[g] = m @ clean.flatten(1)[g]
    mixed = mixed.reshape(clean.shape)
    attack = ATTACKS.create("datamix_unmix", method="nonneg")
    in_ram, sims = attack.unmix(mixed, clean, 2, "nonneg", seed=0)
    mapped, mapped_sims = attack.unmix(mixed, clean, 2, "nonneg", seed=0, scratch_dir=tmp_path, max_ram_mb=0.01)
    assert is_mapped(mapped) and not is_mapped(in_ram)
    assert torch.equal(mapped, in_ram) and torch.equal(sims, mapped_sims)
    assert torch.allclose(in_ram, clean, atol=1e-4)
    assert float(sims.min()) > 0.9999
