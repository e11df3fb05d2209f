"""Variational MI bounds as functions of a critic score matrix (pure torch, no training).

``f`` is (B, B) with ``f[i, j] = critic(z_i, s_j)``: the diagonal holds samples of
the joint p(z, s), the off-diagonal entries samples of p(z) p(s). Every function
returns nats. References: Donsker-Varadhan / MINE (Belghazi et al. 2018), NWJ
(Nguyen, Wainwright & Jordan 2010), InfoNCE (van den Oord et al. 2018; <= log B),
SMILE (Song & Ermon 2020), Jensen-Shannon critic training (Nowozin et al. 2016,
Hjelm et al. 2019); see Poole et al. (2019) for the family.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def offdiag_logmeanexp_rows(f: torch.Tensor) -> torch.Tensor:
    """(B,): log of the mean of exp(f[i, j]) over j != i, per row i."""
    b = f.shape[0]
    masked = f.masked_fill(torch.eye(b, dtype=torch.bool, device=f.device), -math.inf)
    return masked.logsumexp(dim=1) - math.log(b - 1)


def logmeanexp(x: torch.Tensor) -> torch.Tensor:
    return x.logsumexp(dim=0) - math.log(x.shape[0])


def dv_bound(f: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan: E_p[f] - log E_q[e^f]."""
    return f.diagonal().mean() - logmeanexp(offdiag_logmeanexp_rows(f))


def nwj_bound(f: torch.Tensor) -> torch.Tensor:
    """NWJ (f-divergence dual of KL): E_p[f] - E_q[e^(f - 1)]."""
    return f.diagonal().mean() - (offdiag_logmeanexp_rows(f) - 1.0).exp().mean()


def infonce_bound(f: torch.Tensor) -> torch.Tensor:
    """InfoNCE: E_i[f_ii - log (1/B) sum_j e^(f_ij)]; at most log B."""
    return (f.diagonal() - f.logsumexp(dim=1)).mean() + math.log(f.shape[0])


def smile_estimate(f: torch.Tensor, tau: float) -> torch.Tensor:
    """SMILE: E_p[f] - log E_q[clip(e^f, e^-tau, e^tau)] (DV with the critic clipped in the partition term)."""
    return f.diagonal().mean() - logmeanexp(offdiag_logmeanexp_rows(f.clamp(-tau, tau)))


def js_objective(f: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon (f-GAN) critic objective E_p[-softplus(-f)] - E_q[softplus(f)]; its maximiser
    is f = log p(z, s) / (p(z) p(s)), the log density ratio, which SMILE then plugs into DV."""
    b = f.shape[0]
    off = f.masked_select(~torch.eye(b, dtype=torch.bool, device=f.device))
    return -F.softplus(-f.diagonal()).mean() - F.softplus(off).mean()


def mine_objective(f: torch.Tensor, log_ma: torch.Tensor | None, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MINE's DV objective with the moving-average bias correction (Belghazi et al. 2018, sec. 3.2).

    The gradient of log E_q[e^f] is grad E_q[e^f] / E_q[e^f]; the minibatch estimate of the
    denominator biases it, so the denominator is replaced by an exponential moving average
    of E_q[e^f] over batches (``rate`` = weight of the new batch), tracked in log space.
    Returns (surrogate objective whose gradient is the corrected one, the updated log average)."""
    log_q = logmeanexp(offdiag_logmeanexp_rows(f))
    new = log_q.detach()
    if log_ma is None:
        log_ma = new
    else:
        log_ma = torch.logaddexp(log_ma + math.log1p(-rate), new + math.log(rate))
    surrogate = f.diagonal().mean() - (log_q - log_ma).exp()
    return surrogate, log_ma
