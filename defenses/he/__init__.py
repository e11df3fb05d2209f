"""``he``: CKKS homomorphic encryption of the split feature (PROUD-style crypto baseline).

Modules: :mod:`~defenses.he.ckks` (keys, TenSEAL/SEAL primitives),
:mod:`~defenses.he.packing` (slot layouts, diagonal matrix-vector plans),
:mod:`~defenses.he.program` (cloud part -> encrypted schedule),
:mod:`~defenses.he.protocol` (device, cloud, rounds), :mod:`~defenses.he.defense`
(the registered plugin).
"""
from defenses.he.defense import HomomorphicEncryption, describe_schedule

__all__ = ["HomomorphicEncryption", "describe_schedule"]
