"""MI estimators against analytic truths.

Truths: correlated Gaussians, I = -d/2 log(1 - rho^2); a Gaussian mixture with
discrete labels, I computed by quadrature with the exact densities (mixture_mi);
independent z and s, I = 0. Tolerances are stated next to each check. Neural
estimators run a reduced budget here (TEST_STEPS); benchmarks/mi_accuracy.py
measures them with their default budget.
"""
import math

import pytest
import torch

from attacks.mi import MIInputError, estimate_mi, list_methods
from attacks.mi.synthetic import (
    correlated_gaussian,
    gaussian_club,
    gaussian_mi,
    gaussian_mixture,
    mixture_club,
    mixture_mi,
    rho_for_mi,
)
from audit.core.registry import PluginParamsError, UnknownPluginError

TEST_STEPS = {"steps": 200, "val_every": 50, "hidden": 64}
NEURAL = ["mine", "nwj", "infonce", "smile", "club", "classifier"]
ALL = ["ksg", *NEURAL]
CONTINUOUS = [m for m in ALL if m != "classifier"]


def run(method, z, s, **kw):
    params = {**(TEST_STEPS if method != "ksg" else {}), **kw}
    return estimate_mi(z, s, method, n_boot=200, seed=0, **params)


def test_analytic_truths():
    assert gaussian_mi(0.8) == pytest.approx(0.5108, abs=1e-4)
    z, s = correlated_gaussian(200_000, 3, 1.5, seed=1)
    rho = float(torch.corrcoef(torch.stack([z[:, 0], s[:, 0]]))[0, 1])
    assert gaussian_mi(rho, 3) == pytest.approx(1.5, abs=0.02)
    assert mixture_mi(2, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert mixture_mi(4, 50.0) == pytest.approx(math.log(4), abs=1e-6)  # separated: I = H(S)
    assert mixture_club(2, 0.0) == pytest.approx(0.0, abs=1e-9) and mixture_club(4, 1.5) > mixture_mi(4, 1.5)
    # CLUB's Gaussian value, by Monte Carlo with the exact conditional: E_joint log q - E_shuffled log q
    z, s = correlated_gaussian(200_000, 2, 1.0, seed=3)
    rho = rho_for_mi(1.0, 2)
    log_q = lambda zz, ss: -((ss - rho * zz) ** 2).sum(1).double() / (2 * (1 - rho**2))  # noqa: E731
    shuffled = s[torch.randperm(len(s), generator=torch.Generator().manual_seed(0))]
    monte_carlo = float(log_q(z, s).mean() - log_q(z, shuffled).mean())
    assert monte_carlo == pytest.approx(gaussian_club(1.0, 2), rel=0.02)
    assert gaussian_club(1.0, 2) == pytest.approx(3.4366, abs=1e-3)
    # Monte Carlo with the exact posterior agrees with the quadrature
    z, s = gaussian_mixture(200_000, 4, 3, 1.5, seed=2)
    mc, se = mixture_oracle(z, s, 3, torch.arange(200_000))
    assert mc == pytest.approx(mixture_mi(4, 1.5), abs=3 * se)


def test_ksg_on_correlated_gaussian_rho_08():
    """Done-means criterion: truth 0.511 nats, n = 5000, within 0.05."""
    z, s = correlated_gaussian(5000, 1, gaussian_mi(0.8), seed=0)
    r = run("ksg", z, s)
    assert abs(r.nats - 0.5108) < 0.05, r
    assert r.ci95[0] <= r.nats <= r.ci95[1] and r.kind == "point" and r.n == 5000 and r.method == "ksg"


def test_ksg_mixed_variant_on_labels():
    """Discrete s (Ross 2014): within 0.05 nats of the quadrature truth (0.644) in 3-D, n = 3000."""
    truth = mixture_mi(4, 1.5)
    z, s = gaussian_mixture(3000, 4, 3, 1.5, seed=0)
    r = run("ksg", z, s)
    assert r.details["variant"] == "ross2014"
    assert abs(r.nats - truth) < 0.05, (r, truth)


@pytest.mark.parametrize("method", [m for m in NEURAL if m != "classifier"])
def test_neural_on_correlated_gaussian(method):
    """2-D Gaussian pair, truth 1.0 nat, n = 3000 (900 held out). Lower bounds and SMILE: within 0.15 nats,
    and a lower bound's CI starts at or below the truth. CLUB: its analytic value for Gaussians is
    d rho^2 / (1 - rho^2) (= 3.44 here, above the truth); within 10% of it and its CI reaches the truth."""
    truth = 1.0
    z, s = correlated_gaussian(3000, 2, truth, seed=0)
    r = run(method, z, s)
    assert r.n == 900 and r.method == method
    if r.kind == "upper":
        club_value = gaussian_club(truth, 2)
        assert r.ci95[1] >= truth and abs(r.nats - club_value) < 0.1 * club_value, (r, club_value)
    else:
        assert abs(r.nats - truth) < 0.15, r
        if r.kind == "lower":
            assert r.ci95[0] <= truth, r


def mixture_oracle(z, s, dim, eval_idx):
    """The MI of the evaluation samples themselves: mean of log p(s|z) - log p(s) with the exact posterior."""
    from attacks.mi.synthetic import _rotation

    x1 = (z.double() @ _rotation(dim, 1000 + dim))[:, 0]
    log_post = (-0.5 * (x1[:, None] - 1.5 * torch.arange(4.0, dtype=torch.float64)) ** 2).log_softmax(1)
    terms = log_post.gather(1, s[:, None]).squeeze(1)[eval_idx] + math.log(4)
    return float(terms.mean()), float(terms.std() / math.sqrt(eval_idx.numel()))


@pytest.mark.parametrize("method", NEURAL)
def test_neural_on_labelled_mixture(method):
    """4 labels, 3-D mixture, truth 0.644 nats (quadrature), n = 3000: within 0.12 nats and a lower bound's
    CI starts at or below the truth. CLUB (loose with labels: 2.81 nats with the exact conditional) lies
    between the truth and 110% of that exact-conditional value.

    A 95% CI misses the truth on 1 sample in 40 by design: data seed 5 is a typical draw (its 900
    evaluation samples carry 0.640 nats with the exact posterior, asserted below); seed 0's carry
    0.691 (+2.2 standard errors) and every lower bound then tracks that value, above the truth."""
    truth = mixture_mi(4, 1.5)
    z, s = gaussian_mixture(3000, 4, 3, 1.5, seed=5)
    eval_idx = torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:900]  # estimate_mi's split
    oracle, se = mixture_oracle(z, s, 3, eval_idx)
    assert abs(oracle - truth) < se
    r = run(method, z, s)
    if r.kind == "upper":
        assert truth <= r.ci95[1] and r.nats <= 1.1 * mixture_club(4, 1.5), (r, truth)
        return
    assert abs(r.nats - truth) < 0.12, (r, truth)
    if r.kind == "lower":
        assert r.ci95[0] <= truth, r


@pytest.mark.parametrize("method", ALL)
def test_independent_data_reads_zero(method):
    """Independent 3-D z and 4 labels: the CI covers 0, or its lower end is <= 0.05 nats."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2000, 3, generator=gen)
    s = torch.randint(0, 4, (2000,), generator=gen)
    r = run(method, z, s)
    assert r.ci95[0] <= 0.05 and (r.ci95[0] <= 0.0 <= r.ci95[1] or r.ci95[0] <= 0.05), r
    assert abs(r.nats) < 0.06, r


def test_independent_continuous_reads_zero_with_ksg():
    gen = torch.Generator().manual_seed(4)
    r = run("ksg", torch.randn(3000, 2, generator=gen), torch.randn(3000, 2, generator=gen))
    assert r.ci95[0] <= 0.0 <= r.ci95[1] or r.ci95[0] <= 0.05


def test_list_methods():
    methods = {m.name: m for m in list_methods()}
    assert set(methods) == set(ALL)
    assert methods["club"].kind == "upper" and methods["ksg"].kind == "point"
    assert {methods[m].kind for m in ("mine", "nwj", "infonce", "classifier")} == {"lower"}
    assert methods["classifier"].accepts == ("discrete",)
    assert set(methods["ksg"].accepts) == {"discrete", "continuous"} and not methods["ksg"].trains


def test_result_is_frozen():
    r = run("ksg", *correlated_gaussian(300, 1, 0.5))
    with pytest.raises(AttributeError):
        r.nats = 1.0
    assert r.bits == pytest.approx(r.nats / math.log(2))


@pytest.mark.parametrize(
    "z, s, match",
    [
        (torch.randn(100, 3, 4, 4), torch.randint(0, 2, (100,)), r"z must be \(N, D\).*pool"),
        (torch.randn(100, 3), torch.randint(0, 2, (90,)), "same number of samples N, got 100 and 90"),
        (torch.randn(100, 3), torch.randn(100), "integer class labels.*s\\[:, None\\]"),
        (torch.randn(100, 3), torch.randn(100, 2, 2), r"s must be \(N,\)"),
        (torch.full((100, 3), float("nan")), torch.randint(0, 2, (100,)), "z has NaN/inf values in 100 rows"),
        (torch.randn(100, 3), torch.randn(100, 1).masked_fill(torch.arange(100)[:, None] == 7, float("nan")),
         r"s has NaN/inf values in 1 rows \(first: \[7\]\)"),
        (torch.randn(2, 3), torch.randint(0, 2, (2,)), "at least 4 samples"),
    ],
)
def test_bad_input_is_named(z, s, match):
    with pytest.raises(MIInputError, match=match):
        estimate_mi(z, s, "ksg")


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(UnknownPluginError, match="unknown MI estimator 'kgs'.*did you mean 'ksg'.*classifier, club"):
        estimate_mi(torch.randn(50, 2), torch.randint(0, 2, (50,)), "kgs")


def test_method_refuses_the_wrong_s_type_and_bad_params():
    with pytest.raises(MIInputError, match="'classifier' does not take continuous s.*methods for continuous s: club"):
        estimate_mi(torch.randn(50, 2), torch.randn(50, 1), "classifier")
    with pytest.raises(PluginParamsError, match="bad parameters for MI estimator 'ksg'.*k"):
        estimate_mi(torch.randn(50, 2), torch.randn(50, 1), "ksg", k=0)
    with pytest.raises(PluginParamsError, match="stepz"):
        estimate_mi(torch.randn(50, 2), torch.randn(50, 1), "mine", stepz=3)


def test_labels_are_remapped_and_pca_reduces():
    z, s = gaussian_mixture(1500, 3, 6, 2.0, seed=5)
    r1 = run("ksg", z, s)
    r2 = run("ksg", z, s * 10 - 7)  # arbitrary integer labels
    assert r1.nats == pytest.approx(r2.nats)
    r3 = run("ksg", z, s, pca=2)
    assert r3.details["dim"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("method", CONTINUOUS)
def test_default_budget_on_5d_gaussian(method):
    """Default budgets, 5-D pair, truth 2 nats, n = 10000: lower bounds' CIs start at or below the truth and
    the estimate is within 0.4 nats (KSG within 0.6: its known high-dimension bias); CLUB's CI reaches the truth."""
    truth = 2.0
    z, s = correlated_gaussian(10_000, 5, truth, seed=0)
    r = estimate_mi(z, s, method, n_boot=200, seed=0)
    if r.kind == "upper":
        assert r.ci95[1] >= truth, r
    else:
        assert abs(r.nats - truth) < (0.6 if method == "ksg" else 0.4), r
        if r.kind == "lower":
            assert r.ci95[0] <= truth, r


def test_a_neural_estimator_without_a_finite_validation_check_says_it_did_not_train():
    from attacks.mi.core import ESTIMATORS

    est = ESTIMATORS.create("classifier", steps=50, val_every=25, hidden=8)
    z, s = torch.randn(200, 3), torch.randint(0, 2, (200,))
    est.fit(z, s, num_classes=2, seed=0)
    assert est._details()["trained"] is True
    est.fit_info = {**est.fit_info, "best_val_nll": None}
    assert est._details()["trained"] is False
    est.fit_info = {**est.fit_info, "best_val_nll": float("nan")}
    assert est._details()["trained"] is False


@pytest.mark.parametrize("dim", [1, 10])
def test_ksg_permutation_nulls_recompute_the_observed_statistic_exactly(dim):
    """Issue 22: the permutation null must re-estimate the way the observed value was estimated. The fast
    nulls (neighbour lists for labels, dense distance matrices for continuous s) applied to the unshuffled
    s give the observed statistic to the bit (before: float32 brute force vs a float64 null, 1.5e-4 nats)."""
    from attacks.mi.core import ESTIMATORS, Reducer, Scaler
    from attacks.mi.knn import INF, NULL_LIST, _jitter, ksg_terms_dense, mixed_terms_listed, nearest_lists

    g = torch.Generator().manual_seed(dim)
    z, labels = torch.randn(300, dim, generator=g), torch.randint(0, 2, (300,), generator=g)
    cont = torch.randn(300, 1, generator=g)
    est = ESTIMATORS.create("ksg")

    def jittered():
        gen = torch.Generator().manual_seed(0)
        return _jitter(Reducer(z, True, None, 0)(z), est.params.jitter, gen), gen

    x, _ = jittered()
    dist, idx = nearest_lists(x, NULL_LIST)
    assert float(mixed_terms_listed(x, labels, est.params.k, dist, idx).mean()) == est.statistic(z, labels, seed=0)
    x, gen = jittered()
    sj = _jitter(Scaler(cont, True)(cont), est.params.jitter, gen).double()
    dense = ksg_terms_dense(torch.cdist(x.double(), x.double(), p=INF), torch.cdist(sj, sj, p=INF), est.params.k)
    assert float(dense.mean()) == est.statistic(z, cont, seed=0)
