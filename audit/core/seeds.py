"""Seeds and ids derived by hashing: a stage's seed depends on what the stage is, not on what ran before."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest (``length`` characters) of JSON-serialisable ``parts``: ids and cache keys."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def stage_seed(seed: int, *identity: Any) -> int:
    """A seed for one stage, derived from the audit seed and what the stage is."""
    return int(stable_hash(seed, *identity, length=8), 16) % (2**31 - 1)
