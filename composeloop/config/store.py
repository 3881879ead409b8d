"""Registration of the schemas with Hydra, and composed config -> validated `Config`.

This module owns the bridge between OmegaConf trees and attrs instances: it registers the
root schema in Hydra's ConfigStore (conf/config.yaml lists it first in its defaults) and
turns a composed tree into a `Config` whose validators have run.
"""

from __future__ import annotations

from typing import Any

import attrs
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from composeloop.config.build import check_cluster
from composeloop.config.schema import Config, DataSource, Schedule, validate
from composeloop.errors import ConfigError

SCHEMA_NAME = "composeloop_schema"


def register() -> None:
    """Stores the root schema under `SCHEMA_NAME` in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def to_config(tree: Any) -> Config:
    """Turns a composed OmegaConf tree into a validated `Config`.

    Validators are switched off while OmegaConf builds the instances and run afterwards
    by `validate`, which knows each value's full key for the error message.

    Raises:
      ConfigError: a value is missing or invalid (names the full key).
    """
    try:
        with attrs.validators.disabled():
            config = OmegaConf.to_object(tree)
    except MissingMandatoryValue as missing:
        raise ConfigError(f"{missing.full_key}: a value is required (set {missing.full_key}=...)") from None
    if not isinstance(config, Config):
        raise ConfigError(f"the composed config is a {type(config).__name__}, not a composeloop Config")
    validate(config)
    _check_across_sections(config)
    return config


def _check_across_sections(config: Config) -> None:
    """Checks that involve more than one field, which no single validator can see."""
    # OmegaConf lets the schema's `path: None` win over the group's `???`, so check here.
    if config.data.source is DataSource.npz and not config.data.path:
        raise ConfigError("data.path: data=npz needs a file: set data.path=FILE.npz")
    optimizer = config.optimizer
    if optimizer.schedule is not Schedule.constant and optimizer.min_learning_rate >= optimizer.learning_rate:
        raise ConfigError(
            f"optimizer.min_learning_rate: must be below optimizer.learning_rate ({optimizer.learning_rate}) "
            f"for schedule={optimizer.schedule.value}, got {optimizer.min_learning_rate}"
        )
    check_cluster(config.strategy)  # a malformed TF_CONFIG fails before TensorFlow loads
