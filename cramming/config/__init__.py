"""The typed pretraining config: schema (one dataclass per group), its checks, and the entry points.

register_schemas()                  # once, before Hydra composes conf/ (cramming.conf does it on import)
budget = validate_run(container)    # the whole run checked before any long work; the parsed budget
train = check_group("train", d)     # one group of a plain dict, as its dataclass (checked)
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from cramming.budget import Budget, parse_budget
from cramming.conf import CONF_DIR, CONF_PATH
from cramming.config.checks import ConfigError
from cramming.config.schema import (
    GROUPS,
    DistillCommandConfig,
    DistillRunConfig,
    FinetuneCommandConfig,
    GlueCommandConfig,
    PredictCommandConfig,
    PretrainConfig,
)

# The other commands' roots: conf/NAME.yaml starts from NAME_schema.
ROOTS = {"glue": GlueCommandConfig, "finetune": FinetuneCommandConfig, "predict": PredictCommandConfig,
         "distill": DistillCommandConfig}  # fmt: skip

__all__ = ["CONF_DIR", "CONF_PATH", "ConfigError", "build", "check_group", "register_schemas", "validate_run"]


def register_schemas() -> None:
    """Store each group's dataclass as ``GROUP/schema`` (the node every conf/GROUP/*.yaml starts from)
    and each command's root as ``COMMAND_schema`` (the first entry of conf/COMMAND.yaml's defaults);
    storing again replaces the same nodes."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in GROUPS.items():
        store.store(group=group, name="schema", node=schema)
    store.store(name="pretrain_schema", node=PretrainConfig)
    for name, root in ROOTS.items():
        store.store(name=f"{name}_schema", node=root)


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass in a field's type (``X`` or ``Optional[X]``), or None."""
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def build(schema: type, values: Mapping, where: str) -> Any:
    """``values`` (a plain mapping, e.g. ``cfg["train"]``) as ``schema``'s dataclass, its checks run.

    Python callers that bypass Hydra get the same refusals: an unknown or missing key is named, and a
    failed check (any ValueError) is a ConfigError. ``where`` prefixes key names (``train``, ``data.hub``).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; known keys: {sorted(fields)}")
    required = [n for n, f in fields.items() if f.default == "???"]  # omegaconf.MISSING: the YAML sets it
    missing = sorted(n for n in required if n not in values)
    if missing:
        raise ConfigError(f"{where} lacks key(s) {missing}")
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for key, value in values.items():
        nested = _dataclass_of(hints[key])
        kwargs[key] = build(nested, value, f"{where}.{key}") if nested and value is not None else value
    try:
        return schema(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_group(group: str, values: Mapping) -> Any:
    """One group (``arch``, ``data``, ``train``, ``impl``, ``eval``, ``wandb``) of a plain config, checked."""
    return build(GROUPS[group], values, group)


def validate_run(cfg: Mapping) -> Budget:
    """Check the whole pretraining (or distillation) config; returns the parsed budget. The files the data
    group names are the data pipeline's to check (``cramming.data.config.check_files``)."""
    if not isinstance(cfg, dict):  # a DictConfig: the plain values, as Python callers pass them
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    budget = parse_budget(cfg["budget"])  # first: a bad budget is the most common typo
    build(DistillRunConfig if "distill" in cfg else PretrainConfig, cfg, "config")
    return budget


# Every composition of conf/ (commands, benchmarks, tests) takes CONF_PATH from here, so the schema the
# YAML files start from (``defaults: [schema, _self_]``) is in Hydra's ConfigStore before Hydra reads them.
register_schemas()
