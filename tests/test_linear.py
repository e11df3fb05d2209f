"""attacks._linear against known truths: the torch logistic regression solves scikit-learn's objective, the
chunked PCA finds the exact top principal subspace, and the basis is shared per feature tensor."""
import pytest
import torch

from attacks._linear import column_stats, fit_logistic, pca_basis, standardized_svd


def gaussian_classes(n: int, d: int = 30, k: int = 4, seed: int = 0):
    """k imbalanced Gaussian classes in d dimensions with unequal column scales."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([0.5, 0.25, 0.15, 0.1])[:k], n, replacement=True, generator=gen)
    centers = torch.randn(k, d, generator=gen)
    x = (centers[y] + 1.5 * torch.randn(n, d, generator=gen)) * torch.logspace(0.5, -0.5, d)
    return x, y


def sklearn_objective(x, y, weight, bias, c):
    """C * sum_i w_i CE_i + ||W||^2 / 2 with class_weight="balanced" w_i: what sklearn minimises."""
    logits = x.double() @ weight.double() + bias.double()
    counts = torch.bincount(y).double()
    w = (y.numel() / (counts.numel() * counts))[y]
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return float(c * (w * ce).sum() + 0.5 * weight.double().pow(2).sum())


def test_logistic_regression_solves_sklearns_balanced_l2_objective():
    from sklearn.linear_model import LogisticRegression

    x, y = gaussian_classes(600)
    for cs, c in ((1, 1.0), (3, None)):
        model, info = fit_logistic(x, y, 4, cs=cs, seed=0)
        c = info["c"] if c is None else c
        assert model.c == c
        ref = LogisticRegression(C=c, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(x.double().numpy(), y.numpy())
        theirs = sklearn_objective(x, y, torch.as_tensor(ref.coef_.T), torch.as_tensor(ref.intercept_), c)
        ours = sklearn_objective(x, y, model.weight, model.bias, c)
        assert ours <= theirs * (1 + 1e-5), (c, ours, theirs)  # sklearn's minimum to 1e-5 (relative)
        if c > 1:  # weak regularisation of well-separated classes: a flat optimum, weights agree less closely
            continue
        assert torch.allclose(model.weight, torch.as_tensor(ref.coef_.T), atol=1e-5, rtol=1e-4)
        centred = model.bias - model.bias.mean()  # softmax biases are defined up to a common shift
        # sklearn's lbfgs stops a little short of the optimum, by a version-dependent amount (1.9.1: 2.4e-5)
        assert torch.allclose(centred, torch.as_tensor(ref.intercept_ - ref.intercept_.mean()), atol=1e-4)
        probs = model.probs(x)
        assert torch.allclose(probs, torch.as_tensor(ref.predict_proba(x.double().numpy()), dtype=torch.float64),
                              atol=1e-4)


def test_strength_is_chosen_on_validation_and_the_probe_reaches_near_bayes_accuracy():
    """Two unit Gaussians 2 apart in 5 of 200 dimensions, 300 rows: the Bayes balanced accuracy is
    Phi(1) = 0.841; the C with the best validation score is the one kept, and it scores near Bayes."""
    gen = torch.Generator().manual_seed(1)

    def draw(n):
        y = torch.randint(0, 2, (n,), generator=gen)
        x = torch.randn(n, 200, generator=gen)
        x[:, :5] += (2 * y[:, None] - 1) * (1.0 / 5**0.5)
        return x, y

    x, y = draw(300)
    xt, yt = draw(4000)
    for cv_below, folds in ((5000, 5), (0, 1)):  # 5-fold cross-validation under cv_below rows, else one split
        model, info = fit_logistic(x, y, 2, seed=0, cv_below=cv_below)
        scores = info["val_balanced_accuracy"]
        assert info["folds"] == folds
        assert scores[f"{info['c']:.3g}"] == max(scores.values())
        whole, _ = fit_logistic(x, y, 2, seed=0, cv_below=cv_below, patience=100, extend=0)  # every strength of the grid
        assert whole.c == model.c  # the path stopped after the optimum: the same choice
        pred = model.logits(xt).argmax(1)
        bacc = 0.5 * (float((pred[yt == 0] == 0).float().mean()) + float((pred[yt == 1] == 1).float().mean()))
        assert 0.74 < bacc <= 0.841 + 0.02, (folds, bacc)  # 300 rows in 200 dimensions: a gap to Bayes


def test_the_strength_path_stops_after_its_optimum_and_looks_below_the_grid():
    """Labels carried by one of 50 features with much label noise and 120 rows: heavy regularisation wins.
    The path stops `patience` strengths after its best; when the best is the grid's first (C = 1e-4) it
    tries smaller C while they win, and a run over the whole grid chooses no better on validation."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(120, 50, generator=gen)
    y = ((x[:, 0] + 2.5 * torch.randn(120, generator=gen)) > 0).long()
    model, info = fit_logistic(x, y, 2, seed=0)
    scores = {float(c): v for c, v in info["val_balanced_accuracy"].items()}
    grid = [float(f"{c:.3g}") for c in torch.logspace(-4, 4, 8).tolist()]
    tried = [c for c in grid if c in scores]
    best = max(scores, key=scores.get)
    assert len(tried) < len(grid)  # stopped early
    assert tried == grid[: len(tried)]  # in order from the strongest regularisation
    assert sum(1 for c in tried if c > best) <= 2  # patience 2
    if best <= grid[0]:
        assert any(c < grid[0] for c in scores)  # looked below the grid
    whole, whole_info = fit_logistic(x, y, 2, seed=0, patience=100, extend=0)
    assert len(whole_info["val_balanced_accuracy"]) == 8
    assert max(whole_info["val_balanced_accuracy"].values()) <= max(scores.values())


def test_chunked_pca_finds_the_top_principal_subspace():
    gen = torch.Generator().manual_seed(0)
    n, d, q = 700, 500, 6
    basis = torch.linalg.qr(torch.randn(d, q, generator=gen))[0]
    flat = (torch.randn(n, q, generator=gen) * torch.linspace(12, 4, q)) @ basis.T + 0.3 * torch.randn(n, d, generator=gen)
    flat = flat * torch.rand(d, generator=gen).add(0.5) + 3.0
    mean, std = column_stats(flat, chunk=128)
    assert torch.allclose(mean, flat.mean(0), atol=1e-4) and torch.allclose(std, flat.std(0), rtol=1e-4)
    a = (flat - flat.mean(0)) / flat.std(0)
    _, s_true, vh = torch.linalg.svd(a, full_matrices=False)
    v, s = standardized_svd(flat, mean, std, q, chunk=128)
    assert torch.allclose(s, s_true[:q], rtol=1e-3)
    assert torch.allclose(v.T @ v, torch.eye(q), atol=1e-4)
    cosines = torch.linalg.svdvals(v.T @ vh[:q].T)  # principal angles between the subspaces
    assert float(cosines.min()) > 0.999


def test_pca_basis_is_shared_per_tensor_deterministic_and_renewed_after_an_in_place_change():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(300, 4, 8, 8, generator=gen)
    torch.manual_seed(1)
    first = pca_basis(z, 10)
    torch.manual_seed(2)  # the global stream plays no part
    assert pca_basis(z, 10) is first  # the same tensor: cached
    other = z.clone()
    again = pca_basis(other, 10)
    assert again is not first and torch.equal(again.projection, first.projection)
    assert first.projection.shape == (256, 10) and torch.all(first.variances[:-1] >= first.variances[1:])
    z.mul_(2.0).add_(torch.randn(300, 4, 8, 8, generator=gen))
    assert pca_basis(z, 10) is not first


def test_linear_probe_reports_its_choice_and_a_degenerate_probe_stays_flagged():
    """On labels independent of the features the strongest regularisation may predict one class: the
    scores then say degenerate (never a silent 'at chance')."""
    from attacks import ATTACKS, AttackContext, AttackView

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400, 64, generator=gen)
    s = torch.randint(0, 3, (400,), generator=gen)
    view = AttackView(z[:200], z[:200], s[:200], {"s": s[:200]})
    test = AttackView(z[200:], z[200:], s[200:], {"s": s[200:]})
    ctx = AttackContext(view, test, {"s": 3}, "s", channel=None, split=None, settings=None, seed=0, n_boot=50)
    attack = ATTACKS.create("attribute_linear", pca_components=16, cs=2)
    attack.fit(ctx)
    scores = attack.score(ctx)
    bacc = next(x for x in scores if x.metric == "balanced_accuracy")
    assert bacc.extra["head"] == "logistic" and bacc.extra["dim"] == 16 and bacc.extra["c"] in (1e-4, 1e4)
    assert bacc.ci95[0] <= 1 / 3 + 0.05
    assert bacc.extra["degenerate"] == (bacc.extra["predicted_classes"] < 2)


@pytest.mark.parametrize("k", [2, 5])
def test_a_class_missing_from_aux_gets_no_probability_mass_it_did_not_earn(k):
    x, y = gaussian_classes(200, k=min(k, 4))
    model, _ = fit_logistic(x, y, k, cs=2)
    probs = model.probs(x)
    assert probs.shape == (200, k) and torch.allclose(probs.sum(1), torch.ones(200, dtype=probs.dtype), atol=1e-5)
