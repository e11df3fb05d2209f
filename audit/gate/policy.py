"""Policies: the YAML that states what a report must satisfy (rules, regression), validated."""
from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit.core.errors import AuditInputError
from audit.core.records import Record


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Patterns = str | int | float | list[str | int | float] | None


class Selector(_Strict):
    """Which records a rule covers. Each field is a value or a list of values (shell-style
    wildcards allowed, e.g. ``mi_*``); an omitted field matches everything. ``defense``
    matches the plugin name; ``defense_params`` the listed parameters (others are free)."""

    dataset: Patterns = None
    model: Patterns = None
    cut_point: Patterns = None
    defense: Patterns = None
    defense_params: dict[str, Any] | None = None
    attack: Patterns = None
    target: Patterns = None
    metric: Patterns = None
    seed: int | list[int] | None = None

    def matches(self, record: Record, measurement: bool = True) -> bool:
        """True when ``record`` is selected; ``measurement=False`` ignores target and metric."""
        for key in ("dataset", "model", "cut_point", "defense", "attack", "target", "metric"):
            pattern = getattr(self, key)
            if pattern is None or (not measurement and key in ("target", "metric")):
                continue
            patterns = pattern if isinstance(pattern, list) else [pattern]
            value = record.get(key)
            if value is None or not any(fnmatch.fnmatchcase(str(value), str(p)) for p in patterns):
                return False
        if self.seed is not None:
            seeds = self.seed if isinstance(self.seed, list) else [self.seed]
            if record.get("seed") not in seeds:
                return False
        if self.defense_params:
            params = record.get("defense_params") or {}
            if any(k not in params or params[k] != v for k, v in self.defense_params.items()):
                return False
        return True

    def text(self) -> str:
        parts = [f"{k}={v}" for k, v in self.model_dump(exclude_none=True).items()]
        return ", ".join(parts) or "every record"


Quantity = str  # value | advantage | primary_accuracy | cost.<key>


class Rule(_Strict):
    """A bound: ``min <= quantity <= max`` on every selected record."""

    name: str | None = Field(None, description="shown in failure lines and as the JUnit suite name")
    description: str | None = None
    select: Selector = Field(default_factory=Selector)
    quantity: Quantity = Field("value", description="value | advantage | primary_accuracy | cost.<key>")
    use: Literal["estimate", "ci_high", "ci_low"] = Field(
        "estimate", description="compare the point estimate, or the upper / lower end of its 95% CI")
    max: float | None = None
    min: float | None = None

    @field_validator("quantity")
    @classmethod
    def _known_quantity(cls, value: str) -> str:
        if value in ("value", "advantage", "primary_accuracy") or (value.startswith("cost.") and len(value) > 5):
            return value
        raise ValueError(f"unknown quantity {value!r}; use value, advantage, primary_accuracy or cost.<key>")

    @model_validator(mode="after")
    def _has_bound(self) -> "Rule":
        if self.max is None and self.min is None:
            raise ValueError("a rule needs max or min")
        if self.quantity.startswith("cost.") and self.use != "estimate":
            raise ValueError("cost quantities have no confidence interval; use: estimate")
        return self

    @property
    def per_group(self) -> bool:
        """Utility and cost belong to a (cut point, defense) group, not to one attack record."""
        return self.quantity == "primary_accuracy" or self.quantity.startswith("cost.")


class Regression(_Strict):
    """What counts as a regression against a baseline report."""

    select: Selector = Field(default_factory=Selector)
    tolerance: float = Field(0.0, ge=0, description="added to the combined CI, in the metric's units")
    tolerances: dict[str, float] = Field(default_factory=dict, description="per metric, overrides tolerance")
    alpha: float = Field(0.05, gt=0, lt=1, description="error rate of the regression calls: with correction holm, "
                                                       "the chance that noise alone calls any compared record")
    correction: Literal["holm", "none"] = Field(
        "holm", description="holm: the compared records are one family (Holm's step-down over their p-values), so a "
                            "report of many records does not fail by chance; none: each record at alpha on its own "
                            "(the rule before 2026-12-05)")

    def tolerance_for(self, metric: str | None) -> float:
        return self.tolerances.get(str(metric), self.tolerance)


class Policy(_Strict):
    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)
    regression: Regression = Field(default_factory=Regression)
    allow_failed_cells: bool = Field(False, description="failed cells in the report do not fail the check")

    @model_validator(mode="after")
    def _names(self) -> "Policy":
        seen = set()
        for i, rule in enumerate(self.rules):
            if rule.name is None:
                rule.name = f"rule{i + 1}"
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy YAML (``yaml.safe_load``; unknown keys are errors naming the key)."""
    path = Path(path)
    if not path.is_file():
        raise AuditInputError(f"policy {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise AuditInputError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise AuditInputError(f"{path}: a policy must be a YAML mapping with 'rules'")
    try:
        return Policy.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            if e["type"] == "extra_forbidden":
                msg = "unknown key" + _did_you_mean(str(e["loc"][-1]), _keys_at(e["loc"][:-1]))
            else:
                msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {loc}: {msg}")
        raise AuditInputError("\n".join(lines)) from None


def _keys_at(loc: tuple) -> list[str]:
    """The keys the policy model allows at ``loc`` (e.g. ``("rules", 0, "select")``: a Selector's)."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``list[Rule]`` -> Rule), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else (f" (known: {', '.join(known)})" if known else "")


