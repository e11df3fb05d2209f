"""Mutual-information estimators: a functional core and the ``mi`` attack plugin.

    import torch
    from attacks.mi import estimate_mi, list_methods
    z = torch.randn(2000, 1); s = 0.8 * z + 0.6 * torch.randn(2000, 1)   # truth 0.511 nats
    r = estimate_mi(z, s, method="ksg")   # MIResult(nats, ci95, method, kind, n, details)

Methods (``list_methods()``): ``ksg`` (point; k-NN, mixed variant for labels),
``mine``, ``nwj``, ``infonce``, ``classifier`` (lower bounds), ``smile`` (point)
and ``club`` (upper bound). Importing this package registers the ``mi`` attack.
"""
from attacks.mi import knn, neural  # noqa: F401  (registers the estimators)
from attacks.mi.core import ESTIMATORS, MethodInfo, MIInputError, MIResult, estimate_mi, list_methods
from attacks.mi.plugin import MIAttack, flatten_features

__all__ = ["ESTIMATORS", "MIAttack", "MIInputError", "MIResult", "MethodInfo", "estimate_mi", "flatten_features",
           "list_methods"]
