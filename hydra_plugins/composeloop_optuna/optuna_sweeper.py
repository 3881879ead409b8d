"""The ``optuna`` option of Hydra's ``hydra/sweeper`` group: its config and its plugin class.

Hydra imports every public module under ``hydra_plugins`` at start-up to find plugins, so
this one stays cheap: the config schema, its registration, and a `Sweeper` whose work is
done in `hydra_plugins.composeloop_optuna._search` (imported, with Optuna, only when a
search runs). What a search means for composeloop (metric, study, pruning) is
`composeloop.app.search`'s.

Example (shell):
  python -m composeloop -m hydra/sweeper=optuna hydra.sweeper.n_trials=12 \\
      'optimizer.learning_rate=tag(log,interval(1e-4,3e-2))' 'gradient.clip_global_norm=choice(0.5,1.0,5.0)'
"""

# No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it
# is in sys.modules, and dataclasses then cannot resolve string annotations.
import enum
from dataclasses import dataclass
from typing import Any, Dict, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class Sampler(enum.Enum):
    tpe = "tpe"
    random = "random"


class Pruner(enum.Enum):
    median = "median"
    successive_halving = "successive_halving"
    none = "none"


class Direction(enum.Enum):
    maximize = "maximize"
    minimize = "minimize"


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper.*`` with ``hydra/sweeper=optuna``; the search space is ``params`` plus the command line."""

    _target_: str = "hydra_plugins.composeloop_optuna.optuna_sweeper.OptunaSweeper"
    n_trials: int = 20  # trials this run adds to the study
    n_jobs: Optional[int] = None  # trials asked at once; null: the launcher's n_jobs (joblib), else 1  # noqa: UP045
    metric: Optional[str] = None  # null: the experiment's main metric (val_accuracy, digit_confidence)  # noqa: UP045
    direction: Optional[Direction] = None  # null: from the metric's name (accuracies and scores up)  # noqa: UP045
    sampler: Sampler = Sampler.tpe
    seed: Optional[int] = None  # null: the config's seed (plus the trials already in the study)  # noqa: UP045
    pruner: Pruner = Pruner.median
    warmup_epochs: int = 1  # epochs every trial runs before it may be pruned
    startup_trials: int = 5  # trials the median pruner lets finish before it prunes
    storage: Optional[str] = None  # null: sqlite:///<hydra.sweep.dir>/optuna.db  # noqa: UP045
    study_name: str = "composeloop"
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045 - key -> distribution, as on the command line


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="composeloop")


class OptunaSweeper(Sweeper):
    """Hydra's entry point: keeps the settings, the launcher, and runs `_search.run_search`."""

    def __init__(self, **settings: Any) -> None:
        self.settings = {key: value.value if isinstance(value, enum.Enum) else value for key, value in settings.items()}
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:  # noqa: UP006
        from hydra_plugins.composeloop_optuna._search import run_search

        return run_search(self, arguments)
