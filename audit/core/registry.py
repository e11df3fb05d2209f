"""Small plugin registries (in the style of timm / Opacus).

A registry maps a name to a class. Classes declare their parameters as a
nested pydantic model ``Params`` (unknown keys are errors), so ``create`` can
validate user input and ``splitaudit list`` can print every parameter with its
default. Third-party plugins are found through an entry-point group, loaded
lazily on the first lookup (nothing happens at import time).
"""
from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T")


class PluginParams(BaseModel):
    """Base for a plugin's parameters: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class UnknownPluginError(KeyError):
    """Raised for a name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginParamsError(ValueError):
    """Raised when a plugin's parameters do not validate."""


class Registry(Generic[T]):
    """Name -> class registry with an optional entry-point group.

    >>> reg = Registry("defense", "splitaudit.defenses")
    >>> @reg.register("none")
    ... class NoDefense: ...
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._classes: dict[str, type[T]] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering ``cls`` under ``name`` (sets ``cls.name``)."""

        def decorator(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by "
                    f"{self._classes[name].__module__}.{self._classes[name].__qualname__}; "
                    f"known {self.kind}s: {', '.join(sorted(self._classes))}"
                )
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._classes:
                continue
            cls = ep.load()
            if ep.name not in self._classes:  # loading may have registered it already
                self.register(ep.name)(cls)

    def list(self) -> list[str]:
        """Sorted names of every registered plugin (built-in and entry points)."""
        self._load_entry_points()
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; raises with the known names on a typo."""
        self._load_entry_points()
        try:
            return self._classes[name]
        except KeyError:
            known = sorted(self._classes)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}{hint}; known {self.kind}s: {', '.join(known)}"
            ) from None

    def params_model(self, name: str) -> type[PluginParams]:
        return getattr(self.get(name), "Params", PluginParams)

    def validate_params(self, name: str, params: dict[str, Any] | None) -> PluginParams:
        """Validate ``params`` for plugin ``name``; errors name the plugin and the key."""
        model = self.params_model(name)
        try:
            return model(**(params or {}))
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in err.errors()
            )
            known = ", ".join(model.model_fields) or "(none)"
            raise PluginParamsError(
                f"bad parameters for {self.kind} {name!r}: {problems} (its parameters: {known})"
            ) from None

    def create(self, name: str, **params: Any) -> T:
        """Instantiate plugin ``name`` with validated ``params``."""
        return self.from_params(name, self.validate_params(name, params))

    def from_params(self, name: str, params: PluginParams) -> T:
        """Instantiate plugin ``name`` with parameters validated before (e.g. by the config loader)."""
        cls = self.get(name)
        if not isinstance(params, self.params_model(name)):
            raise TypeError(f"{self.kind} {name!r} takes {self.params_model(name).__name__}, got {type(params).__name__}")
        return cls(params)  # type: ignore[call-arg]

    def catalogue(self) -> list[tuple[str, str, list[tuple[str, str, Any]]]]:
        """(name, one-line doc, [(param, type, default)]) for every plugin."""
        rows = []
        for name in self.list():
            cls = self._classes[name]
            doc = (cls.__doc__ or "").strip().splitlines()
            fields = [
                (fname, _type_name(f.annotation), REQUIRED if f.is_required() else f.get_default(call_default_factory=True))
                for fname, f in self.params_model(name).model_fields.items()
            ]
            rows.append((name, doc[0] if doc else "", fields))
        return rows


REQUIRED = "(required)"


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is None and hasattr(annotation, "__name__"):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "")
