"""Neural MI estimators, trained with Lightning on training samples and evaluated on held-out ones.

Critic bounds (``mine``, ``nwj``, ``infonce``, ``smile``) use a separable critic
f(z, s) = g(z) . h(s): g and h are MLPs (h is an embedding table for discrete s),
so a batch of B samples gives all B x B scores at the cost of 2B network passes
(diagonal = joint pairs, off-diagonal = independent pairs). ``classifier``
(Barber-Agakov) and ``club`` fit a variational conditional q(s | z) by maximum
likelihood: a softmax classifier for labels, a diagonal Gaussian for continuous s.

Training budget (every neural method): ``steps`` Adam steps on random batches
of the training part; after every ``val_every`` steps the method's own bound
(or q's negative log-likelihood) is computed on a validation part held out from
the training samples, and the weights of the best validation check are kept.
There is no early stopping: the whole budget always runs (stopping early on a
noisy bound is what made torch-mist's InfoNCE negative on easy cases).

Calibration: after training, the critic bounds and ``classifier`` fit one scale
a >= 0 of their critic (f -> a f; ``nwj`` also the offset that is optimal for it)
on the validation part, maximising the method's own bound over a grid that holds
0 and 1. At a = 0 every bound is exactly 0, so on independent data the estimate
cannot be pushed below 0 by a critic that learnt noise (issue 22: InfoNCE, MINE,
NWJ and SMILE read -0.04 to -0.05 nats with CIs excluding 0 without it); where
the critic is informative a stays near 1 or sharpens it.

Evaluation is on samples the estimator never trained or selected on. The
estimate uses every pair of evaluation samples (row blocks, so memory is
block x N), and its 95% CI is a bootstrap over evaluation samples (rows), each
row's product-of-marginals term averaging over all other evaluation samples.
Every random draw (network initialisation, batches, splits) follows ``seed``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

import attacks.mi.bounds as bounds
from attacks.mi.core import (
    Estimator,
    EstimatorParams,
    MIInputError,
    MIResult,
    Reducer,
    Scaler,
    check_labels,
    register_estimator,
)
from audit.core.stats import bootstrap_ci, mean_ci
from audit.core.training import EpochMeanModule, KeepBest, RowBatches, TrainerSettings, gathered, make_trainer, predict

Objective = Callable[[torch.Tensor, dict], torch.Tensor]


def mlp(inp: int, hidden: int, layers: int, out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(inp, hidden), nn.ReLU()]
        inp = hidden
    mods.append(nn.Linear(inp, out))
    return nn.Sequential(*mods)


class SeparableCritic(nn.Module):
    """f(z, s) = g(z) . h(s); ``forward`` gives the (B, B) matrix f[i, j] = f(z_i, s_j)."""

    def __init__(self, dz: int, s_dim: int, discrete: bool, hidden: int, layers: int, embed: int):
        super().__init__()
        self.g = mlp(dz, hidden, layers, embed)
        self.h = nn.Embedding(s_dim, embed) if discrete else mlp(s_dim, hidden, layers, embed)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.g(z) @ self.h(s).T


class CriticModule(EpochMeanModule):
    """Maximises ``objective`` of the batch score matrix; logs ``val_mi`` = ``bound`` on the validation set."""

    def __init__(self, critic: SeparableCritic, objective: Objective, bound: Callable[[torch.Tensor], torch.Tensor],
                 lr: float, weight_decay: float):
        super().__init__()
        self.critic, self.objective, self.bound = critic, objective, bound
        self.lr, self.weight_decay = lr, weight_decay
        self.objective_state: dict[str, Any] = {}

    def training_step(self, batch, batch_idx):
        z, s = batch
        loss = -self.objective(self.critic(z, s), self.objective_state)
        self.record(z.shape[0], train_loss=loss)
        return loss

    def validation_step(self, batch, batch_idx):
        z, s = batch
        self.log("val_mi", self.bound(self.critic(z, s)), batch_size=z.shape[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class ConditionalModule(EpochMeanModule):
    """Maximum likelihood of a variational conditional q(s | z); logs ``val_nll`` (nats per sample)."""

    def __init__(self, net: nn.Module, nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 lr: float, weight_decay: float):
        super().__init__()
        self.net, self.nll = net, nll
        self.lr, self.weight_decay = lr, weight_decay

    def training_step(self, batch, batch_idx):
        z, s = batch
        loss = self.nll(self.net(z), s).mean()
        self.record(z.shape[0], train_loss=loss)
        return loss

    def validation_step(self, batch, batch_idx):
        z, s = batch
        self.log("val_nll", self.nll(self.net(z), s).mean(), batch_size=z.shape[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def categorical_nll(logits: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, s, reduction="none")


def gaussian_nll(out: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """-log N(s; mu, diag(exp(logvar))) per sample, with (mu, logvar) = out split in halves."""
    mu, logvar = out.chunk(2, dim=1)
    return 0.5 * (((s - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(1)


class NeuralParams(EstimatorParams):
    steps: int = Field(1500, ge=1, description="Adam steps (the whole budget runs; best validation check kept)")
    val_every: int = Field(100, ge=1, description="steps between validation checks")
    batch_size: int = Field(256, ge=2)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    hidden: int = Field(128, ge=1, description="hidden width of the MLPs")
    layers: int = Field(2, ge=0, description="hidden layers of the MLPs")
    val_fraction: float = Field(0.2, gt=0, lt=0.9, description="part of the training samples for model selection")


def train(module: L.LightningModule, z: torch.Tensor, s: torch.Tensor, zv: torch.Tensor, sv: torch.Tensor,
          p: NeuralParams, settings: TrainerSettings | None, seed: int, monitor: str, mode: str) -> dict[str, Any]:
    """Run the training budget of ``p`` (Lightning; keeps the best validation check). Returns facts for details."""
    L.seed_everything(seed, verbose=False)
    batch = min(p.batch_size, z.shape[0])
    data = RowBatches(z, s)
    sampler = RandomSampler(data, replacement=False, num_samples=p.val_every * batch,
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(data, batch_size=batch, sampler=sampler, drop_last=True, collate_fn=gathered)
    val_loader = DataLoader(RowBatches(zv, sv), batch_size=zv.shape[0], collate_fn=gathered)
    best = KeepBest(monitor, mode)
    epochs = max(1, math.ceil(p.steps / p.val_every))
    trainer = make_trainer(settings or TrainerSettings(), epochs, [best])
    trainer.fit(module, loader, val_loader)
    module.cpu()
    sign = 1.0 if mode == "max" else -1.0
    return {"steps": epochs * p.val_every, "batch_size": batch, "n_train": int(z.shape[0]), "n_val": int(zv.shape[0]),
            f"best_{monitor}": None if best.best is None else sign * best.best}


def _split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    n_val = max(2, int(round(n * fraction)))
    if n - n_val < 2:
        raise MIInputError(f"{n} training samples are too few to hold out a validation part")
    return perm[n_val:], perm[:n_val]


class _NeuralEstimator(Estimator):
    """Shared fitting logic: pre-processing fitted on the training part, validation split, Lightning budget."""

    Params: ClassVar[type[NeuralParams]] = NeuralParams

    def _prepare(self, z: torch.Tensor, s: torch.Tensor, num_classes: int | None, seed: int):
        p = self.params
        if s.ndim == 1:
            self.num_classes = int(num_classes if num_classes is not None else int(s.max()) + 1)
            check_labels(s, self.num_classes)
        tr, va = _split(z.shape[0], p.val_fraction, seed)
        self.reducer = Reducer(z[tr], p.standardize, p.pca, seed)
        self.scaler = Scaler(s[tr], p.standardize)
        self.s_kind = "discrete" if s.ndim == 1 else "continuous"
        zz, ss = self.reducer(z), self.scaler(s)
        return zz[tr], ss[tr], zz[va], ss[va]

    def _inputs(self, z: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(self, "reducer"):
            raise RuntimeError(f"{self.name}: call fit() before estimate()")
        if z.shape[1] != self.reducer.mean.shape[0]:
            raise MIInputError(f"{self.name}: fitted on z with D={self.reducer.mean.shape[0]}, got D={z.shape[1]}")
        if ("discrete" if s.ndim == 1 else "continuous") != self.s_kind:
            raise MIInputError(f"{self.name}: fitted on {self.s_kind} s, got shape {tuple(s.shape)}")
        if s.ndim == 1:
            check_labels(s, self.num_classes)
        elif s.shape[1] != self.scaler.mean.shape[0]:
            raise MIInputError(f"{self.name}: fitted on s with K={self.scaler.mean.shape[0]}, got K={s.shape[1]}")
        return self.reducer(z), self.scaler(s)

    def _details(self) -> dict[str, Any]:
        """Fit facts; ``trained``: the training reached a finite validation check (its best is kept), so
        the estimate comes from a fitted critic, not from its initialisation."""
        p = self.params
        best = [v for k, v in self.fit_info.items() if k.startswith("best_")]
        trained = bool(best) and all(v is not None and math.isfinite(v) for v in best)
        return {**self.fit_info, "trained": trained, "dim": self.reducer.dim, "hidden": p.hidden, "layers": p.layers,
                "lr": p.lr}


# ---------------------------------------------------------------- critic bounds
def _row_stats(g: torch.Tensor, h: torch.Tensor, tau: float | None, scale: float = 1.0, shift: float = 0.0,
               block: int = 2048) -> dict[str, torch.Tensor]:
    """Per evaluation row i: joint score f_ii, log-mean-exp of f_ij over j != i (also with f clipped to
    [-tau, tau]) and log-sum-exp over all j, for f = scale * g h^T + shift from embeddings g (N, E),
    h (N, E). Memory: block x N."""
    n = g.shape[0]
    keys = ("joint", "lme_off", "lse_all") + (("lme_off_clip",) if tau is not None else ())
    out = {k: torch.empty(n, dtype=torch.float64) for k in keys}
    for a in range(0, n, block):
        b = min(a + block, n)
        f = (g[a:b] @ h.T).double() * scale + shift
        rows = torch.arange(b - a)
        out["joint"][a:b] = f[rows, rows + a]
        out["lse_all"][a:b] = f.logsumexp(1)
        eye = torch.zeros_like(f, dtype=torch.bool)
        eye[rows, rows + a] = True
        out["lme_off"][a:b] = f.masked_fill(eye, -math.inf).logsumexp(1) - math.log(n - 1)
        if tau is not None:
            out["lme_off_clip"][a:b] = f.clamp(-tau, tau).masked_fill(eye, -math.inf).logsumexp(1) - math.log(n - 1)
    return out


def _dv_stat(joint: torch.Tensor, lme: torch.Tensor) -> torch.Tensor:
    """mean_i f_ii - log mean_i exp(lme_i): DV from per-row terms."""
    return joint.mean() - (lme.logsumexp(0) - math.log(lme.shape[0]))


def _dv_summary(joint: torch.Tensor, lme: torch.Tensor, n_boot: int, seed: int) -> tuple[float, tuple[float, float]]:
    return float(_dv_stat(joint, lme)), bootstrap_ci(_dv_stat, joint, lme, n_boot=n_boot, seed=seed)


SCALE_GRID = torch.cat([torch.zeros(1), torch.logspace(-3, math.log10(30.0), 80), torch.ones(1)]).double()


def best_scale(bound: Callable[[float], float]) -> float:
    """The a in ``SCALE_GRID`` (0, 1 and 80 log-spaced values in [1e-3, 30]) maximising ``bound(a)``;
    ties go to the smallest a."""
    values = torch.tensor([bound(float(a)) for a in SCALE_GRID], dtype=torch.float64)
    values = torch.where(torch.isfinite(values), values, torch.full_like(values, -math.inf))
    best = values.max()
    return float(SCALE_GRID[values == best].min())


class _CriticEstimator(_NeuralEstimator):
    """A bound of the critic score matrix, trained with ``objective`` and selected with ``bound``."""

    class Params(NeuralParams):
        embed: int = Field(32, ge=1, description="dimension of the separable critic's embeddings")

    def objective(self, f: torch.Tensor, state: dict) -> torch.Tensor:
        return self.bound(f)

    def bound(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def summarize(self, rows: dict[str, torch.Tensor], n_boot: int, seed: int) -> tuple[float, tuple[float, float]]:
        raise NotImplementedError

    def value(self, rows: dict[str, torch.Tensor]) -> float:
        raise NotImplementedError

    def calibration_bound(self, f: torch.Tensor) -> torch.Tensor:
        """What the scale is chosen to maximise on the validation scores: the method's own bound."""
        return self.bound(f)

    def offset(self, f: torch.Tensor) -> float:
        """A constant added to the scaled critic (0; NWJ: its optimal offset, fitted on validation scores)."""
        return 0.0

    def fit(self, z, s, *, num_classes=None, settings=None, seed=0):
        p = self.params
        zt, st, zv, sv = self._prepare(z, s, num_classes, seed)
        s_dim = self.num_classes if s.ndim == 1 else st.shape[1]
        L.seed_everything(seed, verbose=False)  # the initialisation follows the seed too
        self.critic = SeparableCritic(zt.shape[1], s_dim, s.ndim == 1, p.hidden, p.layers, p.embed)
        module = CriticModule(self.critic, self.objective, self.bound, p.lr, p.weight_decay)
        self.fit_info = train(module, zt, st, zv, sv, p, settings, seed, "val_mi", "max")
        with torch.no_grad():
            f = (predict(self.critic.g, zv, 4096) @ predict(self.critic.h, sv, 4096).T).double()
            self.scale = best_scale(lambda a: float(self.calibration_bound(a * f)))
            self.shift = self.offset(self.scale * f)
        self.fit_info.update(scale=self.scale, offset=self.shift)
        return self

    def _rows(self, z, s) -> dict[str, torch.Tensor]:
        zz, ss = self._inputs(z, s)
        if zz.shape[0] < 3:
            raise MIInputError(f"{self.name}: need at least 3 evaluation samples, got {zz.shape[0]}")
        g, h = predict(self.critic.g, zz, 4096), predict(self.critic.h, ss, 4096)
        return _row_stats(g, h, getattr(self.params, "tau", None), self.scale, self.shift)

    def estimate(self, z, s, *, n_boot=500, seed=0):
        value, ci = self.summarize(self._rows(z, s), n_boot, seed)
        return MIResult(value, ci, self.name, self.kind, int(z.shape[0]), details=self._details())

    def statistic(self, z, s, *, seed=0):
        return self.value(self._rows(z, s))


@register_estimator("mine")
class MINE(_CriticEstimator):
    """MINE: Donsker-Varadhan lower bound, trained with the moving-average gradient correction."""

    kind = "lower"

    class Params(_CriticEstimator.Params):
        ema_rate: float = Field(0.01, gt=0, le=1, description="weight of a new batch in the moving average of E_q[e^f]")

    def objective(self, f, state):
        surrogate, state["log_ma"] = bounds.mine_objective(f, state.get("log_ma"), self.params.ema_rate)
        return surrogate

    def bound(self, f):
        return bounds.dv_bound(f)

    def summarize(self, rows, n_boot, seed):
        return _dv_summary(rows["joint"], rows["lme_off"], n_boot, seed)

    def value(self, rows):
        return float(_dv_stat(rows["joint"], rows["lme_off"]))


@register_estimator("nwj")
class NWJ(_CriticEstimator):
    """NWJ lower bound E_p[f] - E_q[e^(f-1)] (Nguyen, Wainwright & Jordan 2010)."""

    kind = "lower"

    def bound(self, f):
        return bounds.nwj_bound(f)

    def calibration_bound(self, f):
        return bounds.dv_bound(f)  # NWJ at its optimal offset (below) equals DV

    def offset(self, f):
        """1 - log E_q[e^f] on validation scores: maximises E_p[f + c] - E_q[e^(f + c - 1)] over c."""
        return 1.0 - float(bounds.logmeanexp(bounds.offdiag_logmeanexp_rows(f)))

    def summarize(self, rows, n_boot, seed):
        terms = rows["joint"] - (rows["lme_off"] - 1.0).exp()
        return float(terms.mean()), mean_ci(terms, n_boot=n_boot, seed=seed)

    def value(self, rows):
        return float((rows["joint"] - (rows["lme_off"] - 1.0).exp()).mean())


@register_estimator("infonce")
class InfoNCE(_CriticEstimator):
    """InfoNCE lower bound (contrastive; capped at log of the number of evaluation samples)."""

    kind = "lower"

    def bound(self, f):
        return bounds.infonce_bound(f)

    def summarize(self, rows, n_boot, seed):
        terms = rows["joint"] - rows["lse_all"] + math.log(rows["joint"].shape[0])
        return float(terms.mean()), mean_ci(terms, n_boot=n_boot, seed=seed)

    def value(self, rows):
        return float((rows["joint"] - rows["lse_all"]).mean() + math.log(rows["joint"].shape[0]))


@register_estimator("smile")
class SMILE(_CriticEstimator):
    """SMILE: critic trained with the Jensen-Shannon objective, DV estimate with e^f clipped to [e^-tau, e^tau]."""

    # Clipping the partition term makes it smaller, so SMILE can exceed DV and the truth: not a bound.
    kind = "point"

    class Params(_CriticEstimator.Params):
        tau: float = Field(5.0, gt=0, description="clip of the critic in the partition term (Song & Ermon use 1 or 5)")

    def objective(self, f, state):
        return bounds.js_objective(f)

    def calibration_bound(self, f):
        return bounds.dv_bound(f)  # SMILE is no bound: maximising it over the scale would inflate it

    def bound(self, f):
        return bounds.smile_estimate(f, self.params.tau)

    def summarize(self, rows, n_boot, seed):
        return _dv_summary(rows["joint"], rows["lme_off_clip"], n_boot, seed)

    def value(self, rows):
        return float(_dv_stat(rows["joint"], rows["lme_off_clip"]))


# ---------------------------------------------------------------- variational conditionals
class _ConditionalEstimator(_NeuralEstimator):
    """Fits q(s | z) by maximum likelihood (softmax classifier for labels, diagonal Gaussian otherwise),
    then calibrates it on the validation part (``_calibrate``)."""

    def fit(self, z, s, *, num_classes=None, settings=None, seed=0):
        p = self.params
        zt, st, zv, sv = self._prepare(z, s, num_classes, seed)
        out = self.num_classes if s.ndim == 1 else 2 * st.shape[1]
        L.seed_everything(seed, verbose=False)  # the initialisation follows the seed too
        self.net = mlp(zt.shape[1], p.hidden, p.layers, out)
        self.nll = categorical_nll if s.ndim == 1 else gaussian_nll
        module = ConditionalModule(self.net, self.nll, p.lr, p.weight_decay)
        self.fit_info = train(module, zt, st, zv, sv, p, settings, seed, "val_nll", "min")
        if s.ndim == 1:
            self.log_pi = _log_prior(st, self.num_classes, smoothing=0.5)
        self._calibrate(predict(self.net, zv).double(), sv)
        return self

    def _calibrate(self, out_val: torch.Tensor, s_val: torch.Tensor) -> None:
        """Labels: the softmax temperature minimising the validation cross-entropy."""
        self.temperature = _fit_temperature(out_val, s_val) if s_val.ndim == 1 else 1.0
        self.fit_info["temperature"] = self.temperature

    def _outputs(self, z, s):
        zz, ss = self._inputs(z, s)
        out = predict(self.net, zz, 4096).double()
        return (out / self.temperature, ss) if s.ndim == 1 else (out, ss.double())


def _fit_temperature(logits: torch.Tensor, s: torch.Tensor) -> float:
    """Softmax temperature minimising the cross-entropy on (validation) data; in [0.05, 20]."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=50)
    logits = logits.double()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.double().exp(), s)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def _log_prior(s: torch.Tensor, k: int, smoothing: float = 0.0) -> torch.Tensor:
    """log of the label frequencies of ``s`` (K,), with ``smoothing`` pseudo-counts per label."""
    return ((torch.bincount(s, minlength=k).double() + smoothing) / (s.shape[0] + k * smoothing)).log()


def _leave_one_out_prior(s: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K): row i = the label frequencies of the other N - 1 samples (the product-of-marginals partners of i)."""
    counts = torch.bincount(s, minlength=k).double()
    return (counts[None, :] - F.one_hot(s, k).double()) / (s.shape[0] - 1)


def ratio_scores(logits: torch.Tensor, log_pi: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, K) critic f(z, s) = log q_a(s | z) - log pi(s), q_a = softmax(a (logits - log pi) + log pi):
    a = 1 is the classifier itself, a = 0 the prior pi (f = 0), a in between shrinks it towards pi."""
    return (scale * (logits - log_pi) + log_pi).log_softmax(1) - log_pi


def classifier_rows(f: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample i: the joint score f(z_i, s_i) and log sum_s p_-i(s) e^f(z_i, s), the DV partition term of
    row i against the other samples' labels."""
    joint = f.gather(1, s[:, None]).squeeze(1)
    return joint, (f + _leave_one_out_prior(s, f.shape[1]).log()).logsumexp(1)


@register_estimator("classifier")
class Classifier(_ConditionalEstimator):
    """Classifier lower bound: DV with the critic log q(s|z) / pi(s) of a classifier q, on held-out samples."""

    # With pi = p(s) the DV partition term is 0 and this is Barber & Agakov's H(S) - CE(q); estimating
    # the partition term on the evaluation samples instead of assuming it keeps it a DV bound for the
    # training prior pi, and makes it exactly 0 for the prior itself (a = 0).
    kind = "lower"
    accepts = ("discrete",)

    def _calibrate(self, out_val, s_val):
        """The shrinkage a (``ratio_scores``) maximising the bound on the validation part."""
        self.scale = best_scale(lambda a: float(_dv_stat(*classifier_rows(ratio_scores(out_val, self.log_pi, a),
                                                                           s_val))))
        self.fit_info["scale"] = self.scale

    def _scores(self, z, s):
        zz, ss = self._inputs(z, s)
        logits = predict(self.net, zz, 4096).double()
        return ratio_scores(logits, self.log_pi, self.scale), ss

    def statistic(self, z, s, *, seed=0):
        f, ss = self._scores(z, s)
        return float(_dv_stat(*classifier_rows(f, ss)))

    def estimate(self, z, s, *, n_boot=500, seed=0):
        f, ss = self._scores(z, s)
        joint, lme = classifier_rows(f, ss)
        value, ci = _dv_summary(joint, lme, n_boot, seed)
        entropy = float(-_log_prior(ss, self.num_classes)[ss].mean())
        cross_entropy = float(-(f.gather(1, ss[:, None]).squeeze(1) + self.log_pi[ss]).mean())
        return MIResult(value, ci, self.name, self.kind, int(z.shape[0]),
                        details={**self._details(), "entropy_s": entropy, "cross_entropy": cross_entropy})


@register_estimator("club")
class CLUB(_ConditionalEstimator):
    """CLUB upper bound E_p[log q(s|z)] - E_p(z)p(s)[log q(s|z)] (Cheng et al. 2020)."""

    # An upper bound when q(s|z) fits p(s|z) well enough (Cheng et al. 2020, Theorem 3.2);
    # on PCA-reduced z it bounds I(reduced Z; S), which need not bound I(Z; S).
    # The product-of-marginals term of sample i averages over the other samples only
    # (leave one out), so on independent data each term has expectation exactly 0.
    kind = "upper"

    def terms(self, z, s) -> torch.Tensor:
        """(N,) per-sample terms log q(s_i|z_i) - mean_{j != i} log q(s_j|z_i); their mean is the estimate."""
        out, ss = self._outputs(z, s)
        n = ss.shape[0]
        if n < 2:
            raise MIInputError(f"{self.name}: need at least 2 evaluation samples, got {n}")
        if s.ndim == 1:
            log_q = out.log_softmax(1)
            joint = log_q.gather(1, ss[:, None]).squeeze(1)
            return joint - (log_q * _leave_one_out_prior(ss, self.num_classes)).sum(1)
        mu, logvar = out.chunk(2, dim=1)
        inv = 0.5 * (-logvar).exp()  # the normalisers cancel
        own = (ss - mu) ** 2
        # sum_{j != i} (s_j - mu_i)^2 = n (var s + (mean s - mu_i)^2) - (s_i - mu_i)^2
        others = (n * (ss.var(0, unbiased=False) + (ss.mean(0) - mu) ** 2) - own) / (n - 1)
        return ((others - own) * inv).sum(1)

    def statistic(self, z, s, *, seed=0):
        return float(self.terms(z, s).mean())

    def estimate(self, z, s, *, n_boot=500, seed=0):
        terms = self.terms(z, s)
        return MIResult(float(terms.mean()), mean_ci(terms, n_boot=n_boot, seed=seed), self.name, self.kind,
                        int(z.shape[0]), details=self._details())
