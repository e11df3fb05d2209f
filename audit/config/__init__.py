"""Audit configuration: YAML read as plain data (:class:`ConfigLoader`, a ``yaml.SafeLoader`` that
also refuses duplicate keys), validated by pydantic models that forbid unknown keys, non-finite
numbers and out-of-range integers; ``--set key=value`` overrides (errors name the flag); the
embedded default audit.

Two equivalent shapes. One task::

    dataset: {name: utkface, root: ../shared/data/utkface/crop_part1}
    model: {name: small_cnn}
    cut_points: [conv1, pool1, pool2]
    defenses: [none, {name: noise, scale: 1.0}]
    attacks: {attribute: {epochs: 10}}

or several, under ``tasks:`` (each with dataset / model / cut_points / training / splits).
Relative paths of dataset and model parameters in a config file are relative to
that file's folder; paths given with ``--set`` are relative to the working directory.
Plugin parameters (dataset, model, defenses, attacks) are checked against the plugin's own
parameter model when the config is loaded, before any work starts.
"""
from audit.config.loading import apply_override, build_config, load_config, parse_override, parse_yaml
from audit.config.schema import (
    AuditConfig,
    MemoryConfig,
    PluginSpec,
    SplitFractions,
    TaskConfig,
    TrackingConfig,
    TrainingConfig,
    WandbSettings,
)

__all__ = ["AuditConfig", "MemoryConfig", "PluginSpec", "SplitFractions", "TaskConfig", "TrackingConfig", "TrainingConfig",
           "WandbSettings", "apply_override", "build_config", "load_config", "parse_override", "parse_yaml"]
