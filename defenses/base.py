"""The defense interface: ``fit`` on the task-train split, then ``release`` / ``infer`` / ``predict``.

A defense sits at the cut:
- ``release(x)`` is everything the device sends; the cloud (and so the
  attacker) sees exactly that, and the attacks are run on it;
- ``infer(released)`` is the cloud's computation on what it received (timed
  as the cloud latency);
- ``predict(x)`` is the whole defended pipeline, device and cloud, ending in
  primary-task logits: utility is measured through it. By default it is
  ``infer(release(x))``; defenses with device-side post-processing (DataMix
  de-mixing, HE decryption between rounds) override it.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from audit.core.data import Part
from audit.core.models import SplitModel
from audit.core.registry import PluginParams
from audit.core.training import TrainerSettings

RELEASE_BATCH = 512  # rows per release call the audit makes (audit.pipeline.release_all): mixing groups stay inside


@dataclass
class SplitPoint:
    """The task model cut at ``cut_point``; ``features(part)`` = edge(x) of a split, computed once."""

    cut_point: str
    model: SplitModel
    edge: nn.Module
    cloud: nn.Module
    compute_features: Callable[[str], torch.Tensor]
    _features: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def features(self, part: str) -> torch.Tensor:
        if part not in self._features:
            self._features[part] = self.compute_features(part)
        return self._features[part]


@dataclass
class FitContext:
    """What a defense may use to fit: the split model, the task-train split, training settings.
    ``seed``: this fit's own seed (derived from the audit seed and the cell); ``audit_seed``: the
    seed the report names, when known; ``task``: the task's name in progress lines (``digits/small_cnn``),
    when known."""

    split: SplitPoint
    train: Part
    num_classes: int
    settings: TrainerSettings
    seed: int
    audit_seed: int | None = None
    task: str = ""

    def title(self, what: str) -> str:
        """``what`` at this cut point and seed, for progress lines: 'utkface/small_cnn siamese fine-tuning at
        pool3 (seed 0)' with the task and the audit's seed, else 'siamese fine-tuning at pool3 (fit seed
        459726022)'."""
        seed = f"seed {self.audit_seed}" if self.audit_seed is not None else f"fit seed {self.seed}"
        return f"{self.task + ' ' if self.task else ''}{what} at {self.split.cut_point} ({seed})"


class Defense:
    """Base class: the identity defense (releases the raw split feature)."""

    name: ClassVar[str]
    rounds: int = 1  # device <-> cloud round trips per inference
    # True when release(x, features) is ``features`` itself: the attack views are then the split's
    # feature tensors, not copies of them
    releases_features: ClassVar[bool] = False
    # True when a release call combines its rows (DataMix's groups): the audit then always calls release on
    # RELEASE_BATCH rows; otherwise on at most 64 MB of features at a time (64 rows of UTKFace conv1)
    mixes_rows: ClassVar[bool] = False
    # True when release(x, features) runs an edge of its own on ``x`` (fine-tuned by the defense) and ignores
    # ``features``: the audit then sizes release batches by that edge's largest activation, not the features
    runs_edge: ClassVar[bool] = False

    class Params(PluginParams):
        pass

    def __init__(self, params: PluginParams):
        self.params = params
        self.edge: nn.Module | None = None
        self.cloud: nn.Module | None = None
        # facts of the cloud's fine-tuning (``defenses.noise.finetune_on_noise``: epochs run, best epoch,
        # validation loss / accuracy), recorded with the utility; empty when the cloud is not fine-tuned
        self.cloud_training: dict[str, Any] = {}

    def fit(self, ctx: FitContext) -> None:
        """Prepare the defense (may fine-tune copies of edge and/or cloud)."""
        self.edge, self.cloud = ctx.split.edge, ctx.split.cloud
        self.edge.eval()
        self.cloud.eval()

    @torch.no_grad()
    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """What the device sends for inputs x (N, ...). ``features`` = edge(x) if the caller has it."""
        return features if features is not None else self.edge(x)

    @torch.no_grad()
    def infer(self, released: torch.Tensor) -> torch.Tensor:
        """The cloud's computation on what it received: (N, K) primary-task logits by default."""
        return self.cloud(released)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Primary-task logits (N, K) for inputs x through the whole defended pipeline."""
        return self.infer(self.release(x, features))

    def query_copy(self, seed: int) -> "Defense":
        """A copy of this fitted defense to answer the attacker's release queries: the same parameters
        and weights, every random stream (each ``torch.Generator`` it holds) re-seeded from ``seed``, so
        the copy carries none of the device's draws. Defenses holding other secrets (keys) override it."""
        # weights and other tensors are public and read-only here: shared, not copied (a conv1 PCA basis
        # is hundreds of MB); everything else, random streams included, is the copy's own
        shared = {id(t): t for t in instances_of(self, torch.Tensor)}
        twin = copy.deepcopy(self, memo=shared)
        for i, generator in enumerate(generators_of(twin)):
            generator.manual_seed(seed + i)
        return twin

    def public_facts(self) -> dict[str, Any]:
        """Figures of the fitted defense that the threat model makes public (e.g. a noise sigma)."""
        return {}

    def bytes_per_sample(self, released: torch.Tensor) -> int:
        """Bytes the device sends per sample (released[i] as stored)."""
        return int(released[0].numel() * released.element_size())

    def cost(self, x: torch.Tensor, full_flops: int) -> dict[str, Any]:
        """Edge FLOPs (torch's flop counter) and their fraction of the full model, bytes sent,
        edge / cloud latency per sample (ms: the median and quartiles of timed runs on the batch ``x``
        after warm-up, :func:`timed_runs`, :func:`latency`), rounds."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.release(x[:1])
        edge_flops = int(counter.get_total_flops())
        released = self.release(x)
        n = x.shape[0]
        return {
            "edge_flops": edge_flops,
            "edge_flops_fraction": edge_flops / full_flops if full_flops else None,
            "bytes_sent": self.bytes_per_sample(released),
            **latency(timed_runs(lambda: self.release(x)), n, "edge"),
            **latency(timed_runs(lambda: self.infer(released)), n, "cloud"),
            "rounds": self.rounds,
        }


def generators_of(obj: Any) -> list[torch.Generator]:
    """Every ``torch.Generator`` reachable from ``obj`` (see :func:`instances_of`)."""
    return instances_of(obj, torch.Generator)


def instances_of(obj: Any, kind: type) -> list:
    """Every instance of ``kind`` reachable from ``obj`` through attributes, containers and submodules,
    in a fixed order (attribute order; each once)."""
    found: list = []
    seen: set[int] = set()

    def walk(o: Any) -> None:
        if id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, kind):
            found.append(o)
        elif isinstance(o, (torch.Tensor, str, bytes, int, float, bool, type(None))):
            return
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple, set, frozenset)):
            for v in o:
                walk(v)
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            for v in vars(o).values():
                walk(v)

    walk(obj)
    return found


LATENCY_REPEATS, LATENCY_WARMUP, LATENCY_BUDGET_S = 11, 2, 2.0


def timed_runs(fn: Callable[[], Any], repeats: int = LATENCY_REPEATS, warmup: int = LATENCY_WARMUP,
               budget_s: float = LATENCY_BUDGET_S, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Wall times (ms) of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (caches, lazy
    initialisation, allocator); when the warm-up shows that the runs would take more than
    ``budget_s`` seconds, fewer are timed (never fewer than 3). ``clock``: seconds (tests pass a fake)."""
    start = clock()
    for _ in range(warmup):
        fn()
    per_run = (clock() - start) / warmup if warmup else 0.0
    if per_run > 0:
        repeats = max(3, min(repeats, int(budget_s / per_run)))
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append((clock() - start) * 1000.0)
    return times


def latency(times_ms: list[float], n: int, prefix: str) -> dict[str, float]:
    """``{prefix}_latency_ms``: the median of ``times_ms`` (timings of a batch of ``n``) per sample;
    ``{prefix}_latency_q1_ms`` / ``_q3_ms``: its lower and upper quartiles per sample, the spread a
    difference between two latencies must clear to be one (``audit.decision.latencies_differ``). Names end in
    ``_ms`` so that report identity (``audit.merge``) leaves them out."""
    q1, median, q3 = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else times_ms * 3
    return {f"{prefix}_latency_ms": median / n, f"{prefix}_latency_q1_ms": q1 / n, f"{prefix}_latency_q3_ms": q3 / n}
