"""The ``mi`` attack: I(Z; S) in nats between the released feature and each private attribute.

Spatial features (N, C, H, W) are average-pooled per channel to ``pool`` x ``pool``
and flattened; every method then standardises and, with ``pca``, projects on the
top principal components (no labels used). Pooling and PCA can only lose
information (data processing), so a lower bound on the reduced feature is a lower
bound on I(Z; S) itself; an upper bound (``club``) bounds the reduced feature only.
Estimators that train are fitted on the attacker's aux split and evaluated on the
test split; ``ksg`` uses the test split alone. chance = 0 nats, advantage = value.

Every record carries a permutation test of "I(Z; S) > 0" against the estimator's
own null: the fitted estimator is re-evaluated ``n_perm`` times with the attribute
shuffled among the test samples (no refitting; exact, since the test samples did
not train it). ``extra["p_value_permutation"]`` = (1 + #{null >= value}) / (1 + n_perm),
``extra["null_values"]`` = the null's n_perm, mean, std, q95 and max in nats.
Values and CIs are mapped into [0, inf) (MI is non-negative); ``extra["raw"]`` keeps
the raw ones where that changed them. ``extra["trained"]``: whether the estimator trained (a
critic with a finite validation check; True for ``ksg``); False makes the record's verdict
``inconclusive`` (``audit.verdicts.invalid_reason``). The smallest p-value is 1/(1 + n_perm);
under Holm over m comparisons a leak needs p <= alpha/m, so when the observed value beats every
shuffle the verdict refines p with the null's normal tail and the CI (``audit.verdicts``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from attacks import register_attack
from attacks.base import Attack, AttackContext, Score
from attacks.mi.core import ESTIMATORS, Estimator, check_inputs, check_method, clipped, with_null
from audit.core.registry import PluginParamsError, UnknownPluginError


def flatten_features(z: torch.Tensor, pool: int | None = None) -> torch.Tensor:
    """(N, ...) -> (N, D) float32: (N, C, H, W) and (N, C, L) are average-pooled per channel to at most
    ``pool`` x ``pool`` (``pool`` for 1-D) cells first when ``pool`` is given; other shapes are flattened."""
    z = z.detach().float()
    if pool is not None and z.ndim == 4 and max(z.shape[2:]) > pool:
        z = F.adaptive_avg_pool2d(z, (min(pool, z.shape[2]), min(pool, z.shape[3])))
    elif pool is not None and z.ndim == 3 and z.shape[2] > pool:
        z = F.adaptive_avg_pool1d(z, pool)
    return z.flatten(1)


def merged_params(params: Any, method: str) -> dict[str, Any]:
    """The plugin's ``pca`` (and ``steps``, ``batch_size`` for estimators that train) overridden by
    ``method_params[method]``."""
    common: dict[str, Any] = {"pca": params.pca}
    if ESTIMATORS.get(method).trains:
        common.update(steps=params.steps, batch_size=params.batch_size)
    return {**common, **params.method_params.get(method, {})}


@register_attack("mi")
class MIAttack(Attack):
    """Mutual information I(Z; S) in nats between the released feature and each private attribute."""

    class Params(Attack.Params):
        methods: list[str] = Field(["classifier", "ksg"], min_length=1,
                                   description="estimators (attacks.mi.list_methods()); one record each")
        targets: list[str] | None = Field(None, description="private attributes (default: all)")
        pool: int | None = Field(4, ge=1, description="average-pool spatial features to pool x pool per channel "
                                                      "(None: flatten as released)")
        pca: int | None = Field(16, ge=1, description="principal components kept before estimation (None: all)")
        steps: int = Field(200, ge=1, description="training budget (Adam steps) of every estimator that trains")
        batch_size: int = Field(128, ge=2, description="batch size of every estimator that trains")
        n_perm: int = Field(100, ge=0, description="permutations of the attribute among the test samples for each "
                                                   "record's null and p-value (0: none; smallest p = 1/(1+n_perm))")
        method_params: dict[str, dict[str, Any]] = Field(
            default_factory=dict, description="per-method parameters, e.g. {ksg: {k: 5}, classifier: {steps: 800}}")

        @model_validator(mode="after")
        def _known_methods(self):
            for name in [*self.methods, *self.method_params]:
                try:
                    ESTIMATORS.get(name)
                except UnknownPluginError as err:
                    raise ValueError(str(err)) from None
            for name in self.method_params:
                try:
                    ESTIMATORS.validate_params(name, merged_params(self, name))
                except PluginParamsError as err:
                    raise ValueError(str(err)) from None
            return self

    def estimator(self, method: str) -> Estimator:
        return ESTIMATORS.create(method, **merged_params(self.params, method))

    def targets(self, ctx: AttackContext) -> list[str]:
        names = self.params.targets or list(ctx.aux.private)
        unknown = [t for t in names if t not in ctx.aux.private]
        if unknown:
            raise ValueError(f"mi: unknown targets {unknown}; private labels: {list(ctx.aux.private)}")
        return names

    def fit(self, ctx: AttackContext) -> None:
        z = flatten_features(ctx.aux.z, self.params.pool)
        self.fitted: dict[tuple[str, str], Estimator] = {}
        for target in self.targets(ctx):
            zc, s = check_inputs(z, ctx.aux.private[target])
            for method in self.params.methods:
                est = self.estimator(method)
                check_method(type(est), s)
                if est.trains:
                    est.fit(zc, s, num_classes=ctx.num_classes[target], settings=ctx.settings, seed=ctx.seed)
                self.fitted[(target, method)] = est

    def score(self, ctx: AttackContext) -> list[Score]:
        z = flatten_features(ctx.test.z, self.params.pool)
        scores = []
        for (target, method), est in self.fitted.items():
            zc, s = check_inputs(z, ctx.test.private[target])
            r = clipped(with_null(est.estimate(zc, s, n_boot=ctx.n_boot, seed=ctx.seed), est, zc, s,
                                  self.params.n_perm, ctx.seed))
            details = dict(r.details)
            null = details.pop("null", None)
            extra = {"unit": "nats", "kind": r.kind, "feature_dim": int(z.shape[1]), "pool": self.params.pool,
                     "p_value_permutation": r.p_value, "null_values": null, **details,
                     "trained": bool(details.get("trained", False))}  # not said: not trained (inconclusive)
            scores.append(Score(target, f"mi_{method}", r.nats, r.ci95, 0.0, r.n, extra=extra))
        return scores
