"""Cut any ``torch.nn.Module`` at a named submodule (torch.fx).

A cut point is a submodule's qualified name, as in ``model.named_modules()``
(``layer2``, ``layer2.1``, ``features.5``, ``classifier.1``). The model is
traced with :mod:`torch.fx`, treating the cut submodule as one opaque call;
the graph is then divided in two:

- ``edge(x)``: the nodes the cut submodule's output depends on, returning that output;
- ``cloud(z)``: the nodes the model's output depends on, with the cut submodule's
  output replaced by the input ``z``; so ``cloud(edge(x)) == model(x)``.

Both halves are ``torch.fx.GraphModule`` s that share the model's parameters
(no copy), like the stage slices of :class:`audit.core.models.base.SplitModel`.

Only the modules on the path from the root to a cut point are traced; every
other submodule stays an opaque call, so control flow inside them is fine.
What cannot be cut (each raises :class:`audit.core.errors.AuditInputError` naming
the problem):

- a submodule whose output is not the only value crossing the cut: a skip
  connection (a residual ``x + f(x)``, a DenseNet concatenation) from before
  the cut to after it. Cut before or after the whole block instead
  (``layer2`` or ``layer2.1``, not ``layer2.1.conv1``);
- a submodule called more than once in a forward (a shared module), or never;
- a model (or a module containing the cut point) whose forward has
  data-dependent Python control flow (``if x.sum() > 0``), which torch.fx
  cannot trace; move that logic into a submodule that does not contain the
  cut point, where it stays opaque;
- the root module itself (there is nothing before or after it).

The cut submodule's output must be a single tensor (the split feature) and
the model's output the primary-task logits (N, K).
"""
from __future__ import annotations

import copy
import difflib
import hashlib
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import fx, nn

from audit.core.errors import AuditInputError
from audit.core.models import register_model
from audit.core.models.base import ModelFactory
from audit.core.registry import PluginParams


class _CutTracer(fx.Tracer):
    """Traces into the root and the ancestors of ``cut`` only; ``cut`` and every other submodule stay leaves."""

    def __init__(self, cut: str):
        super().__init__()
        parts = cut.split(".")
        self.cut = cut
        self.ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname not in self.ancestors


def _closure(start: list[fx.Node], stop: fx.Node | None = None) -> set[fx.Node]:
    """Nodes reachable backwards from ``start`` (inputs of inputs ...), not going past ``stop``."""
    seen: set[fx.Node] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node is not stop:
            stack.extend(node.all_input_nodes)
    return seen


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"the output of {node.target!r}"
    if node.op == "placeholder":
        return f"the model input {node.target!r}"
    return f"the value {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)})"


def split_module(module: nn.Module, cut: str, model_name: str = "model") -> tuple[fx.GraphModule, fx.GraphModule]:
    """(edge, cloud) GraphModules of ``module`` cut after submodule ``cut``; see the module docstring."""
    names = dict(module.named_modules())
    if not cut or cut not in names:
        top = [n for n in names if n and "." not in n]
        nested = next((n for n in names if n.count(".") == 1), None)
        close = difflib.get_close_matches(cut, [n for n in names if n], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AuditInputError(
            f"unknown cut point {cut!r} for model {model_name!r}{hint}: a cut point is the name of a submodule "
            f"(model.named_modules()); its top-level submodules: {', '.join(top) or '(none)'}"
            + (f", and their submodules by dotted name (e.g. {nested})" if nested else "")
        )
    tracer = _CutTracer(cut)
    try:
        graph = tracer.trace(module)
    except Exception as err:  # noqa: BLE001 - torch.fx raises TraceError, TypeError, ... for untraceable code
        inside = ", ".join(sorted(tracer.ancestors)) or "(none)"
        raise AuditInputError(
            f"cannot cut model {model_name!r} at {cut!r}: torch.fx cannot trace the forward of the model or of "
            f"a module containing the cut point ({inside}): {type(err).__name__}: {str(err).splitlines()[0]}. "
            "Data-dependent control flow (if/while on tensor values) cannot be traced; move it into a submodule "
            "that does not contain the cut point (it is then called as a whole) or cut elsewhere"
        ) from None
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == cut]
    if len(calls) != 1:
        how = "never called in its forward" if not calls else f"called {len(calls)} times in one forward (a shared module)"
        raise AuditInputError(
            f"cannot cut model {model_name!r} at {cut!r}: that submodule is {how}; a cut point must be a "
            "submodule called exactly once"
        )
    cut_node = calls[0]
    output = next(n for n in nodes if n.op == "output")
    live: set[fx.Node] = set()  # values computed from the input
    after: set[fx.Node] = {cut_node}  # values computed from the cut submodule's output
    for n in nodes:
        if n.op == "placeholder" or any(a in live for a in n.all_input_nodes):
            live.add(n)
        if any(a in after for a in n.all_input_nodes):
            after.add(n)
    cloud_nodes = _closure([output], stop=cut_node)
    if cut_node not in cloud_nodes:
        raise AuditInputError(
            f"cannot cut model {model_name!r} at {cut!r}: the model's output does not depend on that submodule's output"
        )
    crossing = sorted(
        {a for n in cloud_nodes if n is not cut_node and (n in after or n is output) for a in n.all_input_nodes
         if a in live and a not in after},
        key=nodes.index,
    )
    if crossing:
        raise AuditInputError(
            f"cannot cut model {model_name!r} at {cut!r}: besides that submodule's output, the rest of the model "
            f"also needs {', '.join(_describe(a) for a in crossing)}, computed before the cut (a skip connection "
            "crosses it); cut before or after the whole block that contains the skip connection"
        )
    edge_nodes = _closure([cut_node])

    edge_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if n.op == "placeholder" or n in edge_nodes:
            env[n] = edge_graph.node_copy(n, lambda a: env[a])
    edge_graph.output(env[cut_node])

    cloud_graph = fx.Graph()
    env = {cut_node: cloud_graph.placeholder("z")}
    for n in nodes:
        if n in cloud_nodes and n is not cut_node:
            env[n] = cloud_graph.node_copy(n, lambda a: env[a])
    edge = fx.GraphModule(module, edge_graph, class_name="Edge")
    cloud = fx.GraphModule(module, cloud_graph, class_name="Cloud")
    edge.train(module.training)
    cloud.train(module.training)
    return edge, cloud


class GraphSplitModel(nn.Module):
    """Any classifier ``module`` (x -> primary logits) with cut points at its named submodules.

    Same interface as :class:`audit.core.models.base.SplitModel`: ``split(cut)`` ->
    (edge, cloud), ``cut_points``, ``forward``; parameters live in ``module``.
    """

    def __init__(self, module: nn.Module, name: str | None = None):
        super().__init__()
        self.module = module
        self.model_name = name or type(module).__name__
        self.__dict__["_splits"] = {}  # cut -> (edge, cloud), kept out of the module tree and state_dict

    @property
    def cut_points(self) -> list[str]:
        """Every submodule name where the model can be cut and the cloud still has work to do
        (in module order; found by trying each, once)."""
        if "_cut_points" not in self.__dict__:
            names = []
            for name, _ in self.module.named_modules():
                if not name:
                    continue
                try:
                    _, cloud = self.split(name)
                except AuditInputError:
                    continue
                if any(n.op not in ("placeholder", "output") for n in cloud.graph.nodes):
                    names.append(name)
            self.__dict__["_cut_points"] = names
        return self.__dict__["_cut_points"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def split(self, cut_point: str) -> tuple[nn.Module, nn.Module]:
        if cut_point not in self._splits:
            self._splits[cut_point] = split_module(self.module, cut_point, self.model_name)
        return self._splits[cut_point]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_splits"] = {}  # rebuilt on demand (GraphModules of another process are not shared)
        state.pop("_cut_points", None)
        return state


def module_fingerprint(module: nn.Module) -> str:
    """A hash of the module's class and state_dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for key, value in module.state_dict().items():
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def last_linear(module: nn.Module) -> str | None:
    """Qualified name of the last ``nn.Linear`` (the classifier of most classification models)."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def load_state_file(module: nn.Module, path: Path) -> None:
    """Load a state_dict file (``torch.load(weights_only=True)``) into ``module``. Mismatched shapes of the
    classifier (last Linear) are re-initialised with a warning; any other mismatch is an error."""
    from audit.core.models.torchvision_models import load_weights

    head = last_linear(module)
    load_weights(module, Path(path).expanduser(), f"{head}." if head else "\0")


def check_logits(model: nn.Module, x: torch.Tensor, num_classes: int, name: str) -> None:
    """Raise unless ``model(x)`` is a (N, num_classes) tensor (x: a small batch)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001
        raise AuditInputError(
            f"model {name!r} fails on a batch of inputs of shape {tuple(x.shape)}: {type(err).__name__}: {err}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AuditInputError(
            f"model {name!r} must map inputs to primary-task logits of shape (N, {num_classes}); got {got}"
        )


class ModuleModel(ModelFactory):
    """Base class for model plugins wrapping any ``nn.Module``: implement ``module(input_shape, num_classes)``.

    Cut points are submodule names (torch.fx, see :mod:`audit.core.models.fx_split`). ``weights`` loads a
    state_dict file (``weights_only``); with ``training.epochs: 0`` the model is audited as loaded.
    Register a subclass through the ``splitaudit.models`` entry-point group to use it from YAML.
    """

    key_files = ("weights",)

    class Params(PluginParams):
        weights: Path | None = Field(None, description="state_dict file (weights_only load); none = as constructed")

    def module(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:  # pragma: no cover
        """The module (x of shape (N, *input_shape) -> (N, num_classes) logits)."""
        raise NotImplementedError

    def adapt(self, module: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
        """Adjust the module after its weights are loaded (default: as is)."""
        return module

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> GraphSplitModel:
        module = self.module(input_shape, num_classes)
        if self.params.weights is not None:
            load_state_file(module, self.params.weights)
        model = GraphSplitModel(self.adapt(module, input_shape), name=getattr(self, "name", type(module).__name__))
        check_logits(model, torch.zeros(2, *input_shape), num_classes, model.model_name)
        return model


@register_model("python")
class PythonModel(ModelFactory):
    """An nn.Module passed to the Python API (audit.Audit(model=...)); stands in for it in configs and reports."""

    class Params(PluginParams):
        object: str = Field(description="the module's class (for reports)")
        fingerprint: str = Field(description="hash of the module's class and weights")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise AuditInputError(
            f"model 'python' ({self.params.object}) stands for an nn.Module given to audit.Audit(model=...) and "
            "is only available in that Python process; to use your model from YAML, register a "
            "audit.core.models.fx_split.ModuleModel subclass under the 'splitaudit.models' entry-point group"
        )


class ModuleInstance:
    """A live ``nn.Module`` standing in for a model plugin (what the Python API hands to the runner).

    ``build`` returns a copy, so the audit (task training, defenses switching train/eval mode) never
    changes the caller's module.
    """

    def __init__(self, module: nn.Module, name: str):
        self.module, self.name = module, name

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        module = copy.deepcopy(self.module).cpu()
        if hasattr(module, "split") and hasattr(module, "cut_points"):
            return module  # already a split model (e.g. from the built-in zoo)
        return GraphSplitModel(module, name=self.name)
