"""``dfil``: Fisher-information leakage of the release (Maeng et al., NeurIPS 2023).

For a release r = f(x) + n with n zero-mean noise independent of x, of per-element std sigma_k
(a scalar, or one per feature element) and a location family of Fisher information ``c`` per
unit variance (Gaussian c = 1; Laplace c = 2), the Fisher information matrix of r about x is

    I(x) = Jf(x)^T diag(c / sigma^2) Jf(x)        (d x d, d = the input's number of elements)

and the *diagonal Fisher information leakage* is dFIL(x) = tr(I(x)) / d, in 1 / (input unit)^2.
By the Cramér-Rao bound and tr(A^-1) >= d^2 / tr(A), any *unbiased* reconstruction x^ of x has

    E ||x^ - x||^2 / d  >=  d / tr(I(x))  =  1 / dFIL(x)        (per element, input unit^2)

and so a PSNR ceiling 10 log10(peak^2 / (1 / dFIL)) dB (peak = high - low of the data range):
the PSNR an unbiased attacker whose MSE sits at the bound would reach. The bound holds for
unbiased estimators only: an attacker using a prior (the mean image, a learned decoder) may
have a lower MSE when the noise is large; Maeng et al. discuss when the bound still predicts
such attacks.

tr(I) per sample is computed with Jacobian-vector products of the edge (``torch.func.jvp``):
exactly, with the d basis vectors, when d <= ``probes``; otherwise by Hutchinson's estimator
E_v ||diag(sqrt(c) / sigma) Jf v||^2 over ``probes`` Rademacher vectors v (unbiased; its spread
enters the CI). The noise comes from the defense's public facts (``ctx.channel.facts['sigma']``,
with ``params.distribution``) when it states them, else it is estimated from the attacker's own
queries of the release channel: the per-element variance of ``queries`` releases of each of
``query_inputs`` aux inputs (assumed Gaussian unless the defense names its distribution).
A deterministic release (``none``, Siamese, NoPeek ...) gives infinite information: the bound is
0 and the PSNR ceiling the 100 dB cap, with ``extra.applicable: false`` (no ``dfil`` figure).

Scores (target ``input``, on a seeded subset of ``n_eval`` test inputs, bootstrap CI over them):
``dfil`` (1/unit^2), ``mse_bound`` (mean over samples of 1/dFIL(x), unit^2; lower = more
leakage) and ``psnr_ceiling`` (dB). None of them enters the verdicts: they are a bound, not an
attack's achievement.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from attacks import register_attack
from attacks._channel import is_stochastic, release_batched, require_white_box_edge
from attacks.base import Attack, AttackContext, Score
from attacks.inversion import PSNR_CAP_DB, data_range_of, eval_subset
from audit.core.stats import mean_ci

FISHER_PER_UNIT_VARIANCE = {"gaussian": 1.0, "laplace": 2.0}  # location Fisher information x variance
THREAT_MODEL: dict[str, Any] = {
    "edge_architecture": True, "edge_weights": True, "aux_data": False, "channel_queries": True,
    "input_domain": True, "test_inputs": True,  # an auditor's measure on the evaluated inputs, not an attack
}


# ------------------------------------------------------------------ functional core
def fisher_trace(
    edge: nn.Module, x: torch.Tensor, precision: torch.Tensor | float, *, probes: int, seed: int,
    batch_size: int = 64,
) -> tuple[torch.Tensor, bool]:
    """tr(Jf(x_i)^T diag(precision) Jf(x_i)) for each input x_i of x (N, ...): (N,) and whether it is exact.

    ``precision``: c / sigma^2, a scalar or a tensor of the edge's per-sample output shape. Exact (d JVPs
    with the basis vectors) when d <= ``probes``, else Hutchinson's estimate over ``probes`` Rademacher
    vectors per sample, drawn from ``seed``. The edge runs in eval mode (each output depends on its own
    sample only) and is left in the mode it was in."""
    from torch.func import jvp

    x = x.float()
    n, d = x.shape[0], math.prod(x.shape[1:])
    exact = d <= probes
    precision = torch.as_tensor(precision, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    was = edge.training
    edge.eval()
    traces = []
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                xb = x[i: i + batch_size]
                total = torch.zeros(xb.shape[0], dtype=torch.float64)
                for k in range(d if exact else probes):
                    if exact:
                        v = torch.zeros_like(xb).flatten(1)
                        v[:, k] = 1.0
                        v = v.view_as(xb)
                    else:
                        v = torch.randint(0, 2, xb.shape, generator=gen).float() * 2 - 1
                    _, jv = jvp(edge, (xb,), (v,))
                    total += (jv.pow(2) * precision).flatten(1).sum(1).double()
                traces.append(total if exact else total / probes)
    finally:
        edge.train(was)
    return torch.cat(traces), exact


def dfil_figures(trace: torch.Tensor, d: int, peak: float) -> dict[str, torch.Tensor]:
    """Per-sample dFIL = tr(I) / d (1/unit^2), the unbiased-MSE bound 1/dFIL (unit^2) and the PSNR ceiling
    10 log10(peak^2 / bound) (dB, capped at 100 dB) from Fisher traces (N,) of d-element inputs."""
    dfil = trace.double() / d
    bound = 1.0 / dfil.clamp_min(1e-300)
    ceiling = (10 * torch.log10(peak**2 / bound.clamp_min(1e-300))).clamp(max=PSNR_CAP_DB)
    return {"dfil": dfil, "mse_bound": bound, "psnr_ceiling": ceiling}


def noise_precision(facts: dict[str, Any], distribution: str | None, probe_releases: torch.Tensor | None
                    ) -> tuple[torch.Tensor | float, str, str]:
    """(c / sigma^2, distribution used, where sigma came from). ``facts['sigma']`` (a public std) when
    present; else the per-element variance over ``probe_releases`` (R, M, ...): R releases of M inputs."""
    dist = distribution if distribution in FISHER_PER_UNIT_VARIANCE else "gaussian"
    c = FISHER_PER_UNIT_VARIANCE[dist]
    sigma = facts.get("sigma")
    if isinstance(sigma, (int, float)) and sigma > 0:
        return c / float(sigma) ** 2, dist, "defense facts"
    if probe_releases is None:
        raise ValueError("dfil: the defense states no noise sigma and no releases were probed")
    variance = probe_releases.double().var(dim=0).mean(dim=0).float()  # per element, pooled over inputs
    return c / variance.clamp_min(1e-12), dist, "channel queries"


# ------------------------------------------------------------------ the plugin
@register_attack("dfil")
class FisherLeakage(Attack):
    """Fisher-information leakage (dFIL, Maeng et al. 2023): the MSE floor of unbiased reconstructions, its PSNR ceiling."""

    threat_model: ClassVar[dict[str, Any]] = THREAT_MODEL

    class Params(Attack.Params):
        n_eval: int = Field(64, ge=2, description="test inputs at which the Fisher information is computed")
        probes: int = Field(32, ge=1, description="Hutchinson probes per sample (exact trace for inputs of at most "
                                                  "this many elements)")
        queries: int = Field(8, ge=2, description="releases per input to estimate the noise when the defense states no sigma")
        query_inputs: int = Field(16, ge=1, description="aux inputs released `queries` times for that estimate")
        data_range: tuple[float, float] | None = Field(
            None, description="[low, high] of the inputs (the PSNR peak); default [0, 1] if the aux inputs lie in it, "
                              "else their min/max")

    def fit(self, ctx: AttackContext) -> None:
        p = self.params
        self.range = data_range_of(ctx.aux.x, p.data_range)
        self.edge = require_white_box_edge(ctx, "dfil")
        probe_x = ctx.aux.x[: p.query_inputs].float()
        self.noisy = is_stochastic(ctx.channel, probe_x[:2])
        self.noise: tuple[torch.Tensor | float, str, str] | None = None
        if self.noisy:
            facts = dict(ctx.channel.facts)
            releases = None
            if not (isinstance(facts.get("sigma"), (int, float)) and facts["sigma"] > 0):
                releases = torch.stack([release_batched(ctx.channel, probe_x) for _ in range(p.queries)])
            self.noise = noise_precision(facts, getattr(ctx.channel.params, "distribution", None), releases)

    def score(self, ctx: AttackContext) -> list[Score]:
        p = self.params
        idx = eval_subset(len(ctx.test), p.n_eval, ctx.seed)
        x = ctx.test.x[idx].float()
        d, n = math.prod(x.shape[1:]), x.shape[0]
        peak = self.range[1] - self.range[0]
        extra: dict[str, Any] = {"method": "dfil", "threat_model": dict(self.threat_model), "input_elements": d,
                                 "data_range": list(self.range), "applicable": self.noisy,
                                 "bound_for": "unbiased reconstructions; one using a prior (even the mean image) may pass it"}
        if self.noise is None:  # deterministic release: the edge is invertible in principle, no floor
            extra["reason"] = "deterministic release: infinite Fisher information, no lower bound on the MSE"
            bound, ceiling = {**extra, "unit": "unit^2", "direction": "lower"}, {**extra, "unit": "dB"}
            return [Score("input", "mse_bound", 0.0, (0.0, 0.0), None, n, extra=bound),
                    Score("input", "psnr_ceiling", PSNR_CAP_DB, (PSNR_CAP_DB, PSNR_CAP_DB), None, n, extra=ceiling)]
        precision, dist, source = self.noise
        trace, exact = fisher_trace(self.edge, x, precision, probes=p.probes, seed=ctx.seed)
        figures = dfil_figures(trace, d, peak)
        extra |= {"noise_distribution": dist, "noise_source": source, "exact_trace": exact,
                  "probes": None if exact else p.probes}
        if isinstance(precision, float):
            extra["sigma"] = math.sqrt(FISHER_PER_UNIT_VARIANCE[dist] / precision)
        units = {"dfil": "1/unit^2", "mse_bound": "unit^2", "psnr_ceiling": "dB"}
        scores = []
        for metric, values in figures.items():
            info = {**extra, "unit": units[metric]}
            if metric == "mse_bound":
                info["direction"] = "lower"  # a lower floor: more leakage
            scores.append(Score("input", metric, float(values.mean()), mean_ci(values, n_boot=ctx.n_boot, seed=ctx.seed),
                                None, n, extra=info))
        return scores
