"""``datamix_unmix``: adaptive attack on DataMix: recover the un-mixed features without the key, then attack them.

The cloud sees, for every group of k samples, the k mixtures M z (M secret,
drawn per group, rows on the probability simplex). It knows k and which rows
arrived together (one request), not M. Two ways to undo the mixing per group:

- ``ica``: independent component analysis (scikit-learn FastICA) of the k
  mixed rows, the feature elements being the observations (edge features are
  sparse and heavy-tailed, far from Gaussian). ICA recovers the sources up to
  order, sign and scale; sign and scale are resolved by *clustering*: k-means
  centroids of clean features (the attacker computes them from its own aux
  inputs with the public edge part) and, for each recovered source, the sign
  and positive scale that bring it closest to a centroid.
- ``nonneg`` (k = 2): edge features after a ReLU are non-negative with many
  exact zeros. Both sources lie on the line through the two mixtures (rows of
  M sum to 1), and each has zeros where the other does not, so they are the
  two end points of the segment of that line inside the non-negative orthant,
  found in closed form per group.

``auto`` picks the method whose recovered aux features are closest (cosine)
to the attacker's own clean aux features (no test data involved). The
attribute attack (``attacks.attribute``) is then trained on the recovered aux
features and scored on the recovered test features. Against a defense without
mixing (k = 1) the un-mixing is the identity and this is the attribute attack.

Scoring alignment: recovery gives each group's k features in an unknown
order; to score an attribute per sample, each recovered test feature is
assigned to the sample of its group with the most similar clean feature
(Hungarian matching on cosine; evaluation-side only, it never uses labels).
The attacker learns the attributes of the group's members either way.
Besides the attribute scores, target ``features`` / metric ``unmix_cosine``
reports the mean cosine similarity of recovered and true test features
(extra: the same figure for the mixed rows as released, the baseline).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from attacks import ATTACKS, register_attack
from attacks.base import Attack, AttackContext, AttackView, Score
from audit.core.feature_store import map_batches
from audit.core.stats import mean_ci
from defenses.base import RELEASE_BATCH

Method = Literal["ica", "nonneg"]


def request_rows() -> int:
    """Rows per release call the audit makes (``defenses.base.RELEASE_BATCH``): the groups a mixing
    defense forms never cross these boundaries."""
    return RELEASE_BATCH


def group_slices(n_rows: int, k: int, call_rows: int) -> list[slice]:
    """Row slices of the mixing groups: consecutive k rows within each call of ``call_rows`` rows
    (a call's last group may be shorter: its other members were padding, not returned)."""
    out = []
    for start in range(0, n_rows, call_rows):
        stop = min(start + call_rows, n_rows)
        out += [slice(i, min(i + k, stop)) for i in range(start, stop, k)]
    return out


# ----------------------------------------------------------------------------- un-mixing
def unmix_nonneg(rows: torch.Tensor, rel_tol: float = 1e-6) -> torch.Tensor:
    """Closed-form recovery for k = 2 non-negative sources: rows (G, 2, D) of convex mixtures ->
    (G, 2, D), the end points of {r1 + t (r2 - r1) >= 0}."""
    r1, d = rows[:, 0].double(), (rows[:, 1] - rows[:, 0]).double()
    tol = rel_tol * d.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    bound = -r1 / torch.where(d.abs() > tol, d, torch.ones_like(d))
    t_lo = torch.where(d > tol, bound, -inf).amax(dim=1, keepdim=True)  # <= 0
    t_hi = torch.where(d < -tol, bound, inf).amin(dim=1, keepdim=True)  # >= 1
    t_lo = torch.where(torch.isfinite(t_lo), t_lo, torch.zeros_like(t_lo))
    t_hi = torch.where(torch.isfinite(t_hi), t_hi, torch.ones_like(t_hi))
    out = torch.stack([r1 + t_lo * d, r1 + t_hi * d], dim=1).clamp_min(0.0)
    return out.to(rows.dtype)


def unmix_ica(rows: np.ndarray, seed: int, samples: int, max_iter: int) -> np.ndarray:
    """FastICA on one group's mixed rows (g, D), the D elements as observations (a random subset of
    ``samples`` of them estimates the unmixing); returns the g sources (g, D), sign and scale
    arbitrary, or the rows unchanged when ICA cannot run (one row, a degenerate group)."""
    from sklearn.decomposition import FastICA

    g, d = rows.shape
    if g < 2:
        return rows
    rng = np.random.default_rng(seed)
    cols = rng.choice(d, size=min(samples, d), replace=False) if d > samples else np.arange(d)
    ica = FastICA(n_components=g, whiten="unit-variance", max_iter=max_iter, random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ica.fit(rows[:, cols].T.astype(np.float64))
    except (ValueError, np.linalg.LinAlgError):
        return rows
    unmixing = ica.components_
    if not np.isfinite(unmixing).all():
        return rows
    return (unmixing @ rows.astype(np.float64)).astype(rows.dtype)


def resolve_sign_scale(sources: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """For each source (g, D) the sign and non-negative scale minimising its distance to the
    nearest of the centroids (M, D) of clean features."""
    unit = sources / sources.norm(dim=1, keepdim=True).clamp_min(1e-12)
    proj = unit @ centroids.T  # (g, M)
    c2 = centroids.pow(2).sum(dim=1)  # (M,)
    best = torch.stack([c2 - proj.clamp_min(0) ** 2, c2 - (-proj).clamp_min(0) ** 2])  # (2, g, M)
    flat = best.permute(1, 0, 2).reshape(sources.shape[0], -1).argmin(dim=1)
    sign = torch.where(flat // centroids.shape[0] == 0, 1.0, -1.0)
    m = flat % centroids.shape[0]
    scale = (sign * proj[torch.arange(len(m)), m]).clamp_min(0)
    return unit * (sign * scale)[:, None]


def align(recovered: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Permutation p (g,) maximising the summed cosine of recovered[p[i]] and clean[i]."""
    from scipy.optimize import linear_sum_assignment

    a = recovered / recovered.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = clean / clean.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rows, cols = linear_sum_assignment(-(b @ a.T).numpy())  # rows: clean index, cols: recovered
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm


def cosine(a: torch.Tensor, b: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Row-wise cosine similarity of (N, ...) tensors -> (N,) float64, ``chunk`` rows at a time
    (float64 copies of whole conv features would double their memory)."""
    parts = [torch.nn.functional.cosine_similarity(a[i : i + chunk].flatten(1).double(),
                                                   b[i : i + chunk].flatten(1).double(), dim=1)
             for i in range(0, a.shape[0], chunk)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)


@register_attack("datamix_unmix")
class DataMixUnmix(Attack):
    """Adaptive attack on DataMix: un-mix the released features without the key (ICA + clustering, or the
    non-negativity end points), then the attribute attack on them."""

    class Params(Attack.Params):
        method: Literal["auto", "ica", "nonneg"] = Field("auto", description="auto: best recovery on the attacker's aux split")
        k: int | None = Field(None, ge=1, le=8, description="group size (default: the defense's public k, else 1)")
        clusters: int = Field(8, ge=1, description="k-means centroids of clean aux features (ICA sign/scale)")
        cluster_rows: int = Field(1024, ge=1, description="clean aux rows the k-means centroids are fitted on")
        ica_samples: int = Field(20000, ge=100, description="feature elements used to estimate each group's unmixing")
        ica_max_iter: int = Field(400, ge=10)
        select_rows: int = Field(512, ge=2, description="aux rows on which `auto` compares the methods")
        attack: Literal["attribute", "attribute_linear"] = Field(
            "attribute", description="the attack run on the recovered features")
        attack_params: dict[str, Any] = Field(default_factory=dict, description="parameters of that attack")

        @model_validator(mode="after")
        def _no_mirrored_views(self):
            if self.attack_params.get("augment", "none") != "none":  # its extra releases would not be un-mixed
                raise ValueError(f"attack_params.augment: {self.attack_params['augment']!r} is not supported inside "
                                 "datamix_unmix (the mirrored releases would not be un-mixed); use augment: none")
            return self

    # -------------------------------------------------------------- unmixing
    def group_size(self, ctx: AttackContext) -> int:
        if self.params.k is not None:
            return self.params.k
        return int(getattr(ctx.channel.params, "k", 1))

    def methods(self, k: int) -> list[str]:
        if self.params.method == "nonneg" and k > 2:
            raise ValueError(f"datamix_unmix: method 'nonneg' supports k = 2, the defense mixes k = {k}")
        if self.params.method != "auto":
            return [self.params.method]
        return ["ica", "nonneg"] if k == 2 else ["ica"]

    def unmix(
        self, z: torch.Tensor, clean: torch.Tensor, k: int, method: str, seed: int,
        scratch_dir: Path | None = None, max_ram_mb: float = math.inf,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recovered features (N, ...), each group's rows matched to its samples by ``clean``, and
        their cosine similarity to ``clean`` (N,) float64.

        Works one release call (``request_rows()`` rows, a whole number of groups) at a time, so
        the temporaries are bounded by one call's rows; a result larger than ``max_ram_mb`` is
        memory-mapped from an unlinked scratch file under ``scratch_dir`` (UTKFace conv1: 1 MB
        per sample).
        """
        call = request_rows()
        sims = torch.empty(z.shape[0], dtype=torch.float64)

        def block(start: int, stop: int) -> torch.Tensor:
            first_group = len(group_slices(start, k, call))  # groups before this call: seeds as one pass
            rows = self.unmix_rows(z[start:stop].flatten(1).float(), clean[start:stop].flatten(1).float(),
                                   k, method, seed + first_group)
            sims[start:stop] = cosine(rows, clean[start:stop])
            return rows.reshape(stop - start, *z.shape[1:])

        return map_batches(block, z.shape[0], scratch_dir, max_ram_mb, batch_size=call), sims

    def unmix_rows(self, flat: torch.Tensor, clean: torch.Tensor, k: int, method: str, seed: int) -> torch.Tensor:
        """Un-mix the rows (n, D) of at most one release call; ``clean`` (n, D) orders each group."""
        out = flat.clone()
        groups = group_slices(flat.shape[0], k, flat.shape[0])
        if k > 1 and method == "nonneg":
            full = [g for g in groups if g.stop - g.start == 2]
            for c in range(0, len(full), 16):  # chunks of groups bound the float64 temporaries
                idx = torch.stack([torch.arange(g.start, g.stop) for g in full[c : c + 16]])  # (G, 2)
                out[idx] = unmix_nonneg(flat[idx])
        elif k > 1:
            for i, g in enumerate(groups):
                rows = flat[g]
                if rows.shape[0] > 1:
                    sources = torch.from_numpy(unmix_ica(rows.numpy(), seed + i, self.params.ica_samples,
                                                         self.params.ica_max_iter))
                    out[g] = resolve_sign_scale(sources, self.centroids)
        for g in groups:
            if g.stop - g.start > 1:
                out[g] = out[g][align(out[g], clean[g])]
        return out

    # -------------------------------------------------------------- attack
    def fit(self, ctx: AttackContext) -> None:
        p = self.params
        self.k = self.group_size(ctx)
        clean_aux = ctx.split.features("aux")  # the attacker's own aux inputs through the public edge
        methods = self.methods(self.k)
        if self.k > 1 and "ica" in methods:
            self.centroids = self._centroids(clean_aux.flatten(1).float(), ctx.seed)
        quality = {}
        n_select = min(len(ctx.aux), p.select_rows)
        for method in methods:  # chosen on the aux split's first rows: the attacker's own data
            _, sims = self.unmix(ctx.aux.z[:n_select], clean_aux[:n_select], self.k, method, ctx.seed)
            quality[method] = float(sims.mean())
        self.method = max(quality, key=quality.get)
        self.aux_quality = quality
        recovered, _ = self.unmix(ctx.aux.z, clean_aux, self.k, self.method, ctx.seed, ctx.scratch_dir, ctx.max_ram_mb)
        self.inner = ATTACKS.create(p.attack, **p.attack_params)
        self.inner.fit(replace(ctx, aux=replace(ctx.aux, z=recovered)))

    def _centroids(self, flat: torch.Tensor, seed: int) -> torch.Tensor:
        from sklearn.cluster import KMeans

        if flat.shape[0] > self.params.cluster_rows:  # a row subset bounds k-means' copy of the features
            rows = np.sort(np.random.default_rng(seed).choice(flat.shape[0], self.params.cluster_rows, replace=False))
            flat = flat[torch.from_numpy(rows)]
        n = min(self.params.clusters, flat.shape[0])
        km = KMeans(n_clusters=n, n_init=1, max_iter=100, random_state=seed).fit(flat.numpy())
        return torch.as_tensor(km.cluster_centers_, dtype=torch.float32)

    def score(self, ctx: AttackContext) -> list[Score]:
        clean_test = ctx.split.features("test")
        recovered, sims = self.unmix(ctx.test.z, clean_test, self.k, self.method, ctx.seed + 1,
                                     ctx.scratch_dir, ctx.max_ram_mb)
        released = cosine(ctx.test.z, clean_test)
        extra = {
            "unmix_method": self.method, "k": self.k, "inner_attack": self.params.attack,
            "aux_unmix_cosine": self.aux_quality, "test_unmix_cosine": float(sims.mean()),
            "test_released_cosine": float(released.mean()),
        }
        scores = self.inner.score(replace(ctx, test=AttackView(recovered, ctx.test.x, ctx.test.y, ctx.test.private)))
        for s in scores:
            s.extra = {**s.extra, **extra}
        scores.append(Score("features", "unmix_cosine", float(sims.mean()), mean_ci(sims, seed=ctx.seed), None,
                            len(sims), extra=extra))
        return scores
