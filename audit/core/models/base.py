"""Models as a sequence of named stages; a cut point is the name of a stage.

Cutting after stage ``c`` gives ``edge`` (the stages up to and including c,
run on the device) and ``cloud`` (the rest); ``cloud(edge(x)) == model(x)``.
Edge and cloud share parameters with the model (no copy).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import torch
from torch import nn

from audit.core.errors import AuditInputError
from audit.core.file_keys import KeyedByFiles
from audit.core.registry import PluginParams


class SplitModel(nn.Module):
    """A classifier built from named stages; every stage but the last is a cut point."""

    def __init__(self, stages: list[tuple[str, nn.Module]], name: str = "model"):
        super().__init__()
        if len(stages) < 2:
            raise ValueError("a split model needs at least two stages")
        self.model_name = name
        self.stages = nn.Sequential(OrderedDict(stages))

    @property
    def cut_points(self) -> list[str]:
        return list(self.stages._modules)[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def split(self, cut_point: str) -> tuple[nn.Sequential, nn.Sequential]:
        """(edge, cloud) for ``cut_point``; raises naming the known cut points on a typo."""
        if cut_point not in self.cut_points:
            raise AuditInputError(
                f"unknown cut point {cut_point!r} for model {self.model_name!r}; "
                f"its cut points: {', '.join(self.cut_points)}"
            )
        i = self.cut_points.index(cut_point) + 1
        return self.stages[:i], self.stages[i:]


class ModelFactory(KeyedByFiles):
    """Base class of model plugins: ``build(input_shape, num_classes)`` returns a :class:`SplitModel`;
    ``key_files`` (e.g. ``weights``): the file enters the task key by its contents, so an edited weights file
    never gets a task model or cells cached for its old contents (:class:`audit.core.file_keys.KeyedByFiles`)."""

    name: ClassVar[str]

    class Params(PluginParams):
        pass

    def __init__(self, params: PluginParams):
        self.params = params

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> SplitModel:  # pragma: no cover
        raise NotImplementedError


def flops_per_sample(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``module`` on one sample (torch's flop counter; x is a batch of one)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())
