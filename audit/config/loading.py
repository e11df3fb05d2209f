"""Reading a config: YAML as plain data (:class:`ConfigLoader`, a ``yaml.SafeLoader`` that refuses duplicate
keys, alias bombs and deep nesting), the one-task shorthand, relative paths, ``--set`` overrides, and errors
that name the key and the file; the embedded default audit (``audit/default.yaml``)."""
from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from audit.config.schema import TASK_KEYS, AuditConfig, KeyedError
from audit.core.errors import AuditInputError
from audit.core.registry import Registry, UnknownPluginError


def _normalize(raw: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Fold the one-task shorthand into ``tasks``; returns (data, was_shorthand)."""
    shorthand = [k for k in TASK_KEYS if k in raw]
    if not shorthand:
        return raw, False
    if "tasks" in raw:
        raise AuditInputError(
            f"the config has both 'tasks' and top-level {', '.join(shorthand)}; "
            "use one task at the top level or a list under 'tasks'"
        )
    data = {k: v for k, v in raw.items() if k not in TASK_KEYS}
    data["tasks"] = [{k: raw[k] for k in shorthand}]
    return data, True


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a", "b", "0", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise AuditInputError(f"--set {text!r}: expected KEY=VALUE, e.g. --set dataset.root=/data/utkface")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise AuditInputError(f"--set {text!r}: malformed key {key!r}")
    parsed = parse_yaml(value, f"--set {text!r}") if value.strip() else ""
    return parts, parsed


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if not isinstance(node, (list, dict)):
            raise AuditInputError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i])} is not a mapping")
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise AuditInputError(
                    f"--set {'.'.join(parts)}: no list item {part!r} under {'.'.join(parts[:i]) or 'the top level'}")
            part = int(part)  # type: ignore[assignment]
        elif part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        elif isinstance(node[part], str) and not nxt.isdigit():
            node[part] = {"name": node[part]}  # a bare plugin name gains parameters
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) > len(node):
            raise AuditInputError(f"--set {'.'.join(parts)}: no list item {last!r}")
        if int(last) == len(node):
            node.append(value)
        else:
            node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise AuditInputError(f"--set {'.'.join(parts)}: {'.'.join(parts[:-1])} is not a mapping")


def _path_fields(registry: Registry, name: Any) -> list[str]:
    try:
        model = registry.params_model(name)
    except (UnknownPluginError, TypeError):
        return []  # reported by validation
    return [f for f, info in model.model_fields.items() if "Path" in str(info.annotation)]


def resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative path parameters of datasets and models in a config file relative to the file's folder."""
    from audit.core.data import DATASETS
    from audit.core.models import MODELS

    tasks = raw.get("tasks") if isinstance(raw.get("tasks"), list) else [raw]
    for task in tasks:
        for key, registry in (("dataset", DATASETS), ("model", MODELS)):
            spec = task.get(key) if isinstance(task, dict) else None
            if not isinstance(spec, dict):
                continue
            for field in _path_fields(registry, spec.get("name")):
                value = spec.get(field)
                if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                    spec[field] = str((base / value).resolve())


def _format_errors(err: ValidationError, source: str, shorthand: bool,
                   overrides: list[tuple[list[str], str]] = ()) -> str:
    """One line per error: ``SOURCE: KEY: problem``; SOURCE is the ``--set`` flag whose key is
    (under or over) the error's key, else the config file."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        keyed = (e.get("ctx") or {}).get("error")
        loc = [str(p) for p in (keyed.loc if isinstance(keyed, KeyedError) else e["loc"])]
        if isinstance(keyed, KeyedError):
            msg = keyed.message
        if shorthand and loc[:2] == ["tasks", "0"]:
            loc = loc[2:]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        blamed = next((f"--set {text!r}" for parts, text in reversed(overrides)
                       if parts[: len(loc)] == loc[: len(parts)]), source)
        lines.append(f"{blamed}: {'.'.join(loc) or '(top level)'}: {msg}")
    return "\n".join(lines)


def build_config(raw: dict[str, Any], source: str = "<config>", overrides: list[str] = ()) -> AuditConfig:
    """Validate a config mapping after applying ``--set`` overrides."""
    if not isinstance(raw, dict):
        raise AuditInputError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}")
    try:
        raw = copy.deepcopy(raw)
    except RecursionError:
        raise AuditInputError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    applied = []
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
        applied.append((parts, text))
    data, shorthand = _normalize(raw)
    try:
        return AuditConfig.model_validate(data)
    except ValidationError as err:
        raise AuditInputError(_format_errors(err, source, shorthand, applied)) from None
    except RecursionError:
        raise AuditInputError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)") from None


MAX_CONFIG_BYTES = 1 << 20  # a config is data of a few KB
MAX_CONFIG_NODES = 100_000  # after YAML aliases are expanded (an alias bomb is refused, not expanded)
MAX_DEPTH = 64  # levels of nesting


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last one
    silently). Keys brought in by a merge (``<<: *base``) may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # unhashable: reported by the constructor
                    continue
                if earlier is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {earlier.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _too_nested(text: str) -> bool:
    """More than MAX_DEPTH open brackets at once (flow style), found without parsing: PyYAML's
    parser recurses per level and would hit Python's recursion limit on a few hundred."""
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "]}":
            depth = max(0, depth - 1)
    return False


def parse_yaml(text: str, source: str) -> Any:
    """YAML of a config: plain data only (no tags that build Python objects; :class:`ConfigLoader`),
    no duplicate keys, at most ``MAX_CONFIG_BYTES`` of text, ``MAX_DEPTH`` levels of nesting and
    ``MAX_CONFIG_NODES`` values once aliases are expanded."""
    if len(text.encode("utf-8", errors="replace")) > MAX_CONFIG_BYTES:
        raise AuditInputError(f"{source}: {len(text)} characters; a config is at most {MAX_CONFIG_BYTES} bytes")
    too_deep = AuditInputError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)")
    if _too_nested(text):
        raise too_deep
    loader = None
    try:
        loader = ConfigLoader(text)  # the reader checks the characters here
        raw = loader.get_single_data()
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if (err.problem or "").startswith("duplicate key"):
            raise AuditInputError(f"{source}: {err.problem}{where}; give each key once") from None
        raise AuditInputError(
            f"{source}: not plain data ({err.problem}{where}); "
            "configs are data only: tags that build Python objects are refused"
        ) from None
    except yaml.YAMLError as err:
        raise AuditInputError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise too_deep from None
    finally:
        if loader is not None:
            loader.dispose()
    budget = [MAX_CONFIG_NODES]

    def count(node: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise AuditInputError(
                f"{source}: too large or too deeply nested once YAML aliases are expanded "
                f"(more than {MAX_CONFIG_NODES} values or {MAX_DEPTH} levels); an alias bomb?"
            )
        if isinstance(node, dict):
            for k, v in node.items():
                count(k, depth + 1)
                count(v, depth + 1)
        elif isinstance(node, list):
            for v in node:
                count(v, depth + 1)

    count(raw, 0)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> AuditConfig:
    """Read and validate a YAML config; ``None`` means the embedded default audit."""
    if path is None:
        text, source = files("audit").joinpath("default.yaml").read_text(), "<embedded default>"
    else:
        path = Path(path)
        if not path.is_file():
            raise AuditInputError(f"config file {str(path)!r} does not exist")
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as err:
            raise AuditInputError(f"config file {str(path)!r} is not UTF-8 text ({err.reason})") from None
    raw = parse_yaml(text, source)
    raw = raw if raw is not None else {}
    if path is not None and isinstance(raw, dict):
        resolve_relative_paths(raw, path.resolve().parent)
    return build_config(raw, source, overrides)
