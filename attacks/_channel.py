"""The attacker's query access to the release channel, shared by the adaptive attacks.

The threat model lets the cloud push inputs of its own through the device's
release and see what comes out: fresh noise for noisy defenses. Attacks query
``ctx.channel`` (:class:`attacks.base.ReleaseChannel`), a copy of the fitted
defense made for this cell with fresh random streams and no secrets, so their
queries neither reveal nor advance the device's draws: a cell's values do not
depend on which other attack cells of its group ran before it (resume, shards).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from attacks.base import AttackContext, ReleaseChannel


@torch.no_grad()  # on a generator function: grad mode is off inside each step, not left off between steps
def release_batches(channel: "ReleaseChannel", x: torch.Tensor, features: torch.Tensor | None = None,
                    batch_size: int = 256) -> Iterator[tuple[int, torch.Tensor]]:
    """``channel.release`` over inputs x (N, ...) one batch at a time: (first row, released batch) pairs;
    ``features`` = the channel's edge(x) if known."""
    for i in range(0, x.shape[0], batch_size):
        f = features[i : i + batch_size] if features is not None else None
        yield i, channel.release(x[i : i + batch_size], f)


@torch.no_grad()
def release_batched(channel: "ReleaseChannel", x: torch.Tensor, features: torch.Tensor | None = None,
                    batch_size: int = 256) -> torch.Tensor:
    """``channel.release`` over inputs x (N, ...) in batches (:func:`release_batches`), filling one
    preallocated output (no list of batches plus its concatenated copy)."""
    out = None
    for i, part in release_batches(channel, x, features, batch_size):
        if out is None:
            out = part.new_empty((x.shape[0], *part.shape[1:]))
        out[i : i + part.shape[0]] = part
    return out if out is not None else torch.empty(0)


def is_stochastic(channel: "ReleaseChannel", x: torch.Tensor) -> bool:
    """True when two releases of the same inputs differ (a noisy channel)."""
    a, b = release_batched(channel, x), release_batched(channel, x)
    return a.shape != b.shape or not torch.equal(a, b)


def white_box_edge(channel: "ReleaseChannel", fallback: nn.Module, x: torch.Tensor,
                   released_shape: tuple[int, ...]) -> nn.Module | None:
    """The public edge whose output is the released feature before any noise: the channel's own edge
    (it may be fine-tuned, e.g. Siamese) or else the split's (``fallback``); None when neither maps the
    inputs ``x`` (a few samples) to the per-sample ``released_shape``, i.e. the release is not edge(x)
    plus something of the same shape (PCA projections, ciphertexts, mixing)."""
    for edge in (channel.edge, fallback):
        if isinstance(edge, nn.Module) and edge_output_shape(edge, x) == tuple(released_shape):
            return edge
    return None


@torch.no_grad()
def edge_output_shape(edge: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """Per-sample output shape of ``edge`` on a couple of samples of x (eval mode)."""
    was = edge.training
    edge.eval()
    shape = tuple(edge(x[:2]).shape[1:])
    edge.train(was)
    return shape


def require_white_box_edge(ctx: "AttackContext", attack: str, needs: str = "a white-box map") -> nn.Module:
    """:func:`white_box_edge` for ``ctx`` (the channel's edge, else the split's), or a ValueError saying that
    ``attack`` needs ``needs`` from inputs to the released feature and that neither edge produces its shape."""
    shape = tuple(ctx.aux.z.shape[1:])
    edge = white_box_edge(ctx.channel, ctx.split.edge, ctx.aux.x[:2].float(), shape)
    if edge is None:
        raise ValueError(
            f"{attack} needs {needs} from inputs to the released feature; defense {ctx.channel.name} releases "
            f"shape {shape}, which neither its edge nor the split's edge ({ctx.split.cut_point}) produces"
        )
    return edge
