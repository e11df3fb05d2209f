"""``reidentify``: Osia et al.'s rank measure of re-identification.

The attacker holds N candidate inputs (the test inputs; a seeded subset of
``max_candidates`` when set) and wants to know which of them produced each observed
released feature. It pushes every candidate through the release channel it can query
(``ctx.channel.release``: fresh noise for noisy defenses),
averaging ``queries`` releases per candidate (the mean of repeated queries approaches the
noise-free feature for zero-mean noise), and links each observed feature to the
candidates by Euclidean distance in a *standardised space*: each element of the
flattened released feature is centred and divided by its standard deviation over the
attacker's aux releases (floored at 1e-3 of the median std, so constant elements do not
blow up), optionally projected on the top ``pca_components`` principal components of
the standardised aux releases.

For observed feature i with true candidate i, rank_i = 1 + #{j: d_ij < d_ii} + #{j != i:
d_ij = d_ii} / 2 (ties shared), normalised rank (rank_i - 1) / (N - 1) and top-1 hit
1{no closer candidate} / (1 + #ties). Reported: ``top1`` (chance 1/N) and
``normalized_rank`` (chance 0.5; *lower* means more leakage, so its ``advantage`` is
chance - value: positive = the attacker beats chance), each the mean over the N observed
features. CIs (95%): a Wilson score interval for ``top1`` (a proportion; a bootstrap
interval collapses to [0, 0] when no candidate is hit, which happens at chance level
1/N), a bootstrap over the observed features for ``normalized_rank``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from pydantic import Field

from attacks import register_attack
from attacks._channel import release_batched, release_batches
from attacks.base import Attack, AttackContext, ReleaseChannel, Score
from attacks.inversion import eval_subset
from audit.core.chunked import FLOAT32_BLOCK_BYTES, block_rows, column_stats, standardize_rows
from audit.core.stats import mean_ci
from audit.core.training import eval_batch_size


def link_ranks(observed: torch.Tensor | Callable[[int, int], torch.Tensor], candidates: torch.Tensor,
               chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of the true candidate for each observed row (observed[i] belongs to candidates[i]).

    candidates: (N, D); observed: (N, D), or a function (start, stop) -> its rows start:stop (so the
    observed side is never whole in memory), asked for ``chunk`` rows at a time (default: at most 256
    and at most ``FLOAT32_BLOCK_BYTES`` of them, 64 rows of UTKFace conv1). Returns (normalised rank
    (N,) in [0, 1], top-1 hit (N,) in [0, 1]), ties (distances equal within float rounding) shared as
    in the module docstring."""
    n = candidates.shape[0]
    chunk = chunk or min(256, block_rows(candidates, 4, FLOAT32_BLOCK_BYTES))
    rows_of = observed if callable(observed) else (lambda start, stop: observed[start:stop])
    if (not callable(observed) and observed.shape[0] != n) or n < 2:
        raise ValueError(f"reidentify needs N >= 2 observed features and as many candidates, got "
                         f"{observed.shape[0] if not callable(observed) else n} and {n}")
    c_sq = torch.cat([candidates[i : i + chunk].pow(2).sum(1) for i in range(0, n, chunk)])  # no (N, D) temporary
    closer, ties = torch.empty(n), torch.empty(n)
    for start in range(0, n, chunk):
        o = rows_of(start, min(start + chunk, n))
        o_sq = o.pow(2).sum(1, keepdim=True)
        d = o_sq + c_sq[None, :] - 2.0 * o @ candidates.T  # squared distances (m, N)
        rows = torch.arange(o.shape[0])
        true = d[rows, rows + start][:, None]
        tol = 1e-5 * (o_sq + c_sq.mean())  # float32 rounding of the expansion
        closer[start : start + chunk] = (d < true - tol).sum(1).float()
        ties[start : start + chunk] = ((d - true).abs() <= tol).sum(1).float() - 1.0  # minus itself
    rank = 1.0 + closer + ties / 2.0
    top1 = (closer == 0).float() / (1.0 + ties)
    return (rank - 1.0) / (n - 1), top1


def wilson_ci(p_hat: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion p_hat observed on n trials."""
    denom = 1.0 + z * z / n
    center = (p_hat + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p_hat * (1 - p_hat), 0.0) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


class StandardSpace:
    """Flattened release -> per-element standardised (aux statistics), optionally PCA-projected (float32)."""

    def __init__(self, z_aux: torch.Tensor, pca_components: int | None):
        flat = z_aux.flatten(1)
        mean, std = column_stats(flat)  # float64 row chunks: no copy of a (memory-mapped) aux split
        self.mean = mean.float()  # the space is float32: at UTKFace conv1 a float64 one doubled 512 MB matrices
        self.std = std.clamp_min(max(float(std.median()) * 1e-3, 1e-12)).float()
        self.projection = None
        if pca_components is not None and flat.shape[1] > pca_components:
            q = min(pca_components, flat.shape[0] - 1)
            _, _, v = torch.pca_lowrank((flat.float() - self.mean) / self.std, q=q, center=True, niter=4)
            self.projection = v[:, :q]

    def __call__(self, z: torch.Tensor, rows: torch.Tensor | None = None, *, in_place: bool = False) -> torch.Tensor:
        """The rows ``rows`` of z (all when None) in the space (N, D or q), float32, filled 64 MB of rows at a
        time into one output: no gathered copy of z[rows], no list of parts. ``in_place``: a float32 z of
        which all rows are wanted and no projection is set is overwritten (its flattened view returned)."""
        return standardize_rows(z, self.mean, self.std, rows, projection=self.projection, in_place=in_place)


@torch.no_grad()
def mean_release(channel: ReleaseChannel, x: torch.Tensor, queries: int, batch_size: int = 256) -> tuple[torch.Tensor, int]:
    """The mean of ``queries`` releases of inputs x (N, ...) through ``channel`` (fresh noise each; float32),
    summed batch by batch into one output (never two full-size releases at once: 512 MB each at UTKFace
    conv1 for 512 candidates), and the number of queries it averages: 1 when the second release equals
    the first (a deterministic channel; more queries change nothing)."""
    total = release_batched(channel, x, batch_size=batch_size).float()
    for used in range(1, queries):
        same = used == 1
        for i, part in release_batches(channel, x, batch_size=batch_size):
            block = total[i : i + part.shape[0]]
            same = same and torch.equal(part.float(), block)
            block += part
        if same:
            return total.div_(2), 1  # (a + a) / 2 == a exactly
    return total.div_(queries), queries


@register_attack("reidentify")
class Reidentify(Attack):
    """Re-identification (Osia et al.'s rank measure): link each released feature to one of N candidate inputs."""

    class Params(Attack.Params):
        max_candidates: int | None = Field(None, ge=2, description="N: candidates (a seeded subset of test); default all")
        queries: int = Field(4, ge=1, description="releases averaged per candidate (fresh noise each)")
        pca_components: int | None = Field(None, ge=1, description="project the standardised space on its top PCs")

    def fit(self, ctx: AttackContext) -> None:
        self.space = StandardSpace(ctx.aux.z.float(), self.params.pca_components)

    def score(self, ctx: AttackContext) -> list[Score]:
        p = self.params
        idx = eval_subset(len(ctx.test), p.max_candidates, ctx.seed)
        # releases of at most 64 MB per call (64 rows at UTKFace conv1, whose 256-row calls held 0.5 GB)
        rows = eval_batch_size(ctx.test.z, cap=256)
        mean, used = mean_release(ctx.channel, ctx.test.x[idx], p.queries, batch_size=rows)
        candidates = self.space(mean, in_place=True)  # (N, D): the one full-size matrix of the linking
        del mean
        norm_rank, top1 = link_ranks(lambda start, stop: self.space(ctx.test.z, rows=idx[start:stop]), candidates)
        n = len(idx)
        extra = {"candidates": n, "queries": used, "space":
                 f"standardised+pca{p.pca_components}" if self.space.projection is not None else "standardised"}
        seed, n_boot = ctx.seed, ctx.n_boot
        rank_value, top1_value = float(norm_rank.mean()), float(top1.mean())
        return [
            Score("identity", "top1", top1_value, wilson_ci(top1_value, n), 1.0 / n, n, extra=dict(extra)),
            Score("identity", "normalized_rank", rank_value, mean_ci(norm_rank, n_boot=n_boot, seed=seed), 0.5, n,
                  advantage=0.5 - rank_value, extra=dict(extra, direction="lower is more leakage; advantage = 0.5 - value")),
        ]
