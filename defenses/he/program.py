"""Compile the cloud part of a split model into an encrypted-inference schedule.

The cloud part is read as a flat sequence of layers (nested ``nn.Sequential``
containers are walked). Each layer is one of:

- **affine** (evaluated by the cloud on ciphertexts): ``Linear``; ``Conv1d/2d``,
  ``BatchNorm1d/2d`` (eval mode), ``AvgPool1d/2d``, ``AdaptiveAvgPool1d/2d``,
  ``ZeroPad2d`` as dense matrices (read off by evaluating the layer on the
  unit vectors) when in_features x out_features <= ``max_dense_elements``;
  ``Flatten``, ``Unflatten``, ``Identity`` and ``Dropout`` are reshapes/no-ops.
  Consecutive affine layers are composed into one matrix (one level, one round).
- **activation** (element-wise: ReLU, LeakyReLU, ReLU6, ELU, GELU, SiLU,
  Sigmoid, Tanh, Softplus, Hardtanh): either a device round (decrypt, apply,
  re-encrypt) or a least-squares polynomial evaluated by the cloud.
- **device-only** (MaxPool1d/2d, AdaptiveMaxPool1d/2d): always a device round.

Leading non-affine layers (e.g. the max-pool right after a conv cut) run on
the device before encryption, trailing ones after the last decryption: no
round is spent on them. Anything else (residual blocks, attention, ...) is
refused with an error naming the layer and the cut points where ``he`` applies.

A schedule is a list of rounds. A round: the device runs its layers on the
plaintext, packs and encrypts; the cloud runs ``steps``: an affine map, then
optionally (polynomial mode) a polynomial folded into the next affine map
(y = sum_p (c_p W) x^p + (b + c_0 W 1)), and so on; the device decrypts.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from audit.core.errors import AuditInputError

RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
AFFINE = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.ZeroPad2d,
)
ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh,
)
DEVICE_ONLY = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


class UnsupportedCloudError(AuditInputError):
    """The cloud part holds a layer ``he`` cannot evaluate on ciphertexts."""


@dataclass
class Layer:
    name: str
    module: nn.Module
    in_shape: tuple[int, ...]  # per sample
    out_shape: tuple[int, ...]
    kind: str  # reshape | affine | activation | device

    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    def describe(self) -> str:
        return f"{self.name!r} ({type(self.module).__name__}, {self.in_shape} -> {self.out_shape})"


@dataclass
class DeviceStep:
    """Plaintext layers the device runs (flat (B, in_dim) -> flat (B, out_dim))."""

    layers: list[Layer]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.module(x.reshape(x.shape[0], *layer.in_shape)).flatten(1)
        return x

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


@dataclass
class Affine:
    """y = W x + b on flat vectors; ``names`` are the layers composed into it."""

    weight: np.ndarray  # (d_out, d_in) float64
    bias: np.ndarray  # (d_out,)
    names: list[str]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias


@dataclass
class CloudStep:
    """y = sum_p weights[p-1] @ x^p + bias: the cloud's affine map on powers 1..len(weights) of its input."""

    weights: list[np.ndarray]
    bias: np.ndarray
    names: list[str]

    @property
    def degree(self) -> int:
        return len(self.weights)

    @property
    def d_in(self) -> int:
        return self.weights[0].shape[1]

    @property
    def d_out(self) -> int:
        return self.weights[0].shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return sum(x**p @ w.T for p, w in enumerate(self.weights, start=1)) + self.bias


@dataclass
class Round:
    device: DeviceStep  # on the device, before encryption
    steps: list[CloudStep]  # in the cloud, on ciphertexts

    @property
    def levels(self) -> int:
        """Rescalings the round needs: one per affine map, ceil(log2 degree) per polynomial."""
        return sum(1 + math.ceil(math.log2(s.degree)) for s in self.steps)

    @property
    def d_in(self) -> int:
        return self.steps[0].d_in

    @property
    def d_out(self) -> int:
        return self.steps[-1].d_out


@dataclass
class Schedule:
    rounds: list[Round]
    trailing: DeviceStep
    polynomials: dict[str, dict] = field(default_factory=dict)  # activation name -> coefficients, fit error

    @property
    def levels(self) -> int:
        return max(r.levels for r in self.rounds)

    def plaintext(self, z: torch.Tensor) -> torch.Tensor:
        """The schedule evaluated in the clear (float64): logits for cut features z (B, ...)."""
        x = z.flatten(1)
        for r in self.rounds:
            x = r.device(x.float()).double()
            for step in r.steps:
                x = torch.from_numpy(step(x.numpy()))
        return self.trailing(x.float())


# --------------------------------------------------------------------- parsing
def leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Flatten nested nn.Sequential containers into (qualified name, layer)."""
    if isinstance(module, nn.Sequential):
        out = []
        for name, child in module.named_children():
            out += leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or type(module).__name__, module)]


def classify(module: nn.Module) -> str | None:
    if isinstance(module, RESHAPES):
        return "reshape"
    if isinstance(module, AFFINE):
        return "affine"
    if isinstance(module, ELEMENTWISE):
        return "activation"
    if isinstance(module, DEVICE_ONLY):
        return "device"
    return None


@torch.no_grad()
def trace(cloud: nn.Module, sample: torch.Tensor) -> list[Layer]:
    """Layers of the cloud part with per-sample shapes, from one sample (1, ...) of the cut feature."""
    layers, x = [], sample
    for name, module in leaves(cloud):
        y = module(x)
        layers.append(Layer(name, module, tuple(x.shape[1:]), tuple(y.shape[1:]), classify(module) or "unsupported"))
        x = y
    return layers


def check(layers: list[Layer], max_dense_elements: int) -> None:
    """Raise UnsupportedCloudError for a layer ``he`` cannot run (without the cut-point list)."""
    for layer in layers:
        if layer.kind == "unsupported":
            raise UnsupportedCloudError(
                f"layer {layer.describe()} is not supported on ciphertexts (supported: affine layers "
                "Linear/Conv/BatchNorm/AvgPool/Flatten/Dropout, element-wise activations, max-pooling)"
            )
        if layer.kind == "affine" and not isinstance(layer.module, nn.Linear):
            size = layer.in_dim * layer.out_dim
            if size > max_dense_elements:
                raise UnsupportedCloudError(
                    f"layer {layer.describe()} would unroll to a {layer.out_dim} x {layer.in_dim} dense matrix "
                    f"({size:,} elements > max_dense_elements={max_dense_elements:,})"
                )
    if not any(layer.kind == "affine" for layer in layers):
        raise UnsupportedCloudError("the cloud part has no linear layer to evaluate on ciphertexts")


@torch.no_grad()
def dense(layer: Layer) -> Affine:
    """The layer as y = W x + b on flattened vectors (float64)."""
    module = layer.module
    if isinstance(module, nn.Linear):
        bias = module.bias.double().numpy() if module.bias is not None else np.zeros(module.out_features)
        return Affine(module.weight.double().numpy().copy(), bias.copy(), [layer.name])
    module = copy.deepcopy(module).double().eval()  # the task model's layer stays as it is
    zero = module(torch.zeros(1, *layer.in_shape, dtype=torch.float64)).flatten(1)
    columns = []
    eye = torch.eye(layer.in_dim, dtype=torch.float64)
    for start in range(0, layer.in_dim, 1024):
        basis = eye[start : start + 1024].reshape(-1, *layer.in_shape)
        columns.append(module(basis).flatten(1) - zero)
    weight = torch.cat(columns).T.numpy()
    return Affine(weight, zero[0].numpy(), [layer.name])


def compose(first: Affine, second: Affine) -> Affine:
    return Affine(second.weight @ first.weight, second.weight @ first.bias + second.bias, first.names + second.names)


# -------------------------------------------------------------------- compiling
PolyFitter = Callable[[Layer, np.ndarray], np.ndarray]  # (activation, pre-activation samples) -> coefficients c_0..c_d


def compile_cloud(
    cloud: nn.Module,
    sample: torch.Tensor,
    max_dense_elements: int,
    polynomial: PolyFitter | None = None,
    calibration: torch.Tensor | None = None,
) -> Schedule:
    """Schedule for ``cloud`` on cut features shaped like ``sample`` (1, ...). With ``polynomial``,
    element-wise activations followed by an affine map become cloud-side polynomials fitted on the
    pre-activations of ``calibration`` (cut features, (n, ...)); otherwise they are device rounds."""
    layers = trace(cloud, sample[:1])
    check(layers, max_dense_elements)
    # group: [(kind, [layers])] with consecutive affine (and reshape) layers merged
    groups: list[tuple[str, list[Layer]]] = []
    for layer in layers:
        kind = "affine" if layer.kind in ("affine", "reshape") else layer.kind
        if kind == "affine" and groups and groups[-1][0] == "affine":
            groups[-1][1].append(layer)
        else:
            groups.append((kind, [layer]))
    first = next(i for i, (k, ls) in enumerate(groups) if k == "affine" and any(x.kind == "affine" for x in ls))
    last = max(i for i, (k, ls) in enumerate(groups) if k == "affine" and any(x.kind == "affine" for x in ls))
    prefix = [x for _, ls in groups[:first] for x in ls]
    trailing = [x for _, ls in groups[last + 1 :] for x in ls]
    middle = groups[first : last + 1]

    affines: list[Affine | None] = []
    for kind, ls in middle:
        if kind != "affine":
            affines.append(None)
            continue
        maps = [dense(x) for x in ls if x.kind == "affine"]
        if not maps:  # only reshapes between two non-linear layers: identity
            d = ls[0].in_dim
            maps = [Affine(np.eye(d), np.zeros(d), [x.name for x in ls])]
        acc = maps[0]
        for nxt in maps[1:]:
            acc = compose(acc, nxt)
        acc.names = [x.name for x in ls]
        affines.append(acc)

    schedule = Schedule([], DeviceStep(trailing))
    pre = calibration.flatten(1).double() if calibration is not None else None
    if pre is not None:
        pre = DeviceStep(prefix)(pre.float()).double()
    device_layers = list(prefix)
    steps: list[CloudStep] = []
    pending_poly: np.ndarray | None = None
    for g, ((kind, ls), aff) in enumerate(zip(middle, affines)):
        if aff is not None:
            weights = [aff.weight]
            bias = aff.bias
            if pending_poly is not None:  # fold c_0..c_d into this map
                weights = [c * aff.weight for c in pending_poly[1:]]
                bias = aff.bias + pending_poly[0] * aff.weight.sum(axis=1)
                pending_poly = None
            steps.append(CloudStep(weights, bias, aff.names))
            if pre is not None:
                pre = torch.from_numpy(aff(pre.numpy()))
            continue
        foldable = polynomial is not None and kind == "activation" and affines[g + 1] is not None
        if foldable:
            layer = ls[0]
            samples = pre.numpy() if pre is not None else np.zeros((0, layer.in_dim))
            pending_poly = np.asarray(polynomial(layer, samples), dtype=np.float64)
            schedule.polynomials[layer.name] = {"coefficients": [float(c) for c in pending_poly]}
        elif steps:  # a device round: close the cloud's current round
            schedule.rounds.append(Round(DeviceStep(device_layers), steps))
            device_layers, steps = list(ls), []
        else:  # consecutive device layers share one round trip
            device_layers += ls
        if pre is not None:
            pre = DeviceStep(ls)(pre.float()).double()
    schedule.rounds.append(Round(DeviceStep(device_layers), steps))
    return schedule


def supported_cuts(model, sample_input: torch.Tensor, max_dense_elements: int) -> list[str]:
    """Cut points of a SplitModel whose cloud part ``he`` can evaluate (sample_input: (1, ...) input)."""
    ok = []
    with torch.no_grad():
        was_training = model.training
        model.eval()
        x = sample_input[:1]
        for i, cut in enumerate(model.cut_points):
            x = model.stages[i](x)
            try:
                check(trace(model.stages[i + 1 :], x), max_dense_elements)
            except UnsupportedCloudError:
                continue
            ok.append(cut)
        model.train(was_training)
    return ok
