"""Registration of the schemas with Hydra, and composed config -> validated `Config`.

This module owns the bridge between OmegaConf trees and attrs instances: it registers the
root schema in Hydra's ConfigStore (conf/config.yaml lists it first in its defaults) and
turns a composed tree into a `Config` whose validators have run. The open sections (data,
model, optimizer, step) are dicts to Hydra; here each is read into its attrs record: the
keys the record knows are typed and validated, the others are its target's arguments
(``args``) and are refused, naming the key, where there is no target to take them.
"""

from __future__ import annotations

from typing import Any

import attrs
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from composeloop.config import parts
from composeloop.config.schema import TARGET_SECTIONS, Config, DataSource, Schedule, section_keys, validate
from composeloop.errors import ConfigError

SCHEMA_NAME = "composeloop_schema"


def register() -> None:
    """Stores the root schema under `SCHEMA_NAME` in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _open_section(name: str, values: Any) -> Any:
    """An open section's dict read into its attrs class; its unknown keys become `args`."""
    section = TARGET_SECTIONS[name]
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: must be a mapping of keys, got {values!r}")
    known = section_keys(section)
    extra = {key: value for key, value in values.items() if key not in known}
    if extra and not values.get("_target_"):
        key = next(iter(extra))
        listed = ", ".join(k for k in known if k != "_target_")
        raise ConfigError(
            f"{name}.{key}: not a key of the built-in {name} ({listed}); to pass it to a {name} of your own, "
            f"set {name}._target_"
        )
    try:
        typed = OmegaConf.merge(OmegaConf.structured(section), {k: v for k, v in values.items() if k in known})
        with attrs.validators.disabled():
            record = OmegaConf.to_object(typed)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{name}.{error.full_key}: {_first_line(error)}") from None
    record.args = extra
    return record


def to_config(tree: Any) -> Config:
    """Turns a composed OmegaConf tree into a validated `Config`.

    Validators are switched off while OmegaConf builds the instances and run afterwards
    by `validate`, which knows each value's full key for the error message.

    Raises:
      ConfigError: a value is missing or invalid, or a key unknown (names the full key).
    """
    try:
        plain = OmegaConf.to_container(tree, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as missing:
        raise ConfigError(f"{missing.full_key}: a value is required (set {missing.full_key}=...)") from None
    if not isinstance(plain, dict):
        raise ConfigError(f"the composed config is a {type(plain).__name__}, not a mapping of sections")
    sections = {name: _open_section(name, plain.pop(name, {})) for name in TARGET_SECTIONS}
    try:
        with attrs.validators.disabled():
            config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), plain))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{error.full_key}: {_first_line(error)}") from None
    for name, record in sections.items():
        setattr(config, name, record)
    validate(config)
    _check_across_sections(config)
    return config


def _check_across_sections(config: Config) -> None:
    """Checks that involve more than one field, which no single validator can see."""
    from composeloop.config.build import check_cluster

    # OmegaConf lets the schema's `path: None` win over the group's `???`, so check here.
    if config.data._target_ is None and config.data.source is DataSource.npz and not config.data.path:
        raise ConfigError("data.path: data=npz needs a file: set data.path=FILE.npz")
    optimizer = config.optimizer
    schedule = parts.check_schedule(optimizer.schedule)
    if schedule not in (None, Schedule.constant) and optimizer.min_learning_rate >= optimizer.learning_rate:
        raise ConfigError(
            f"optimizer.min_learning_rate: must be below optimizer.learning_rate ({optimizer.learning_rate}) "
            f"for schedule={schedule.value}, got {optimizer.min_learning_rate}"
        )
    if optimizer.weight_decay_exclude and optimizer.weight_decay is None:
        raise ConfigError(
            "optimizer.weight_decay_exclude: excludes variables from optimizer.weight_decay, which is not set "
            "(an optimizer's own decay, AdamW's, is not masked): set optimizer.weight_decay=RATE"
        )
    if config.lr_find.start >= config.lr_find.end:
        raise ConfigError(
            f"lr_find.start: must be below lr_find.end ({config.lr_find.end}), got {config.lr_find.start}"
        )
    parts.check_declared(config)
    check_cluster(config.strategy)  # a malformed TF_CONFIG fails before TensorFlow loads
