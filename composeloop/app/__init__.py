"""The application: a validated config turned into a finished run, for any composition.

This package owns the command line, the runner (run directory, resume, loop services,
summary), compositions and modes, sweeps and search, and tracking. It is the only layer
that knows both the configs (`composeloop.config`) and the engine (`composeloop.engine`),
and the public entry point for a user's own project:

- `main(config_path="conf")`: your script's command line, with your configs beside
  composeloop's (``python my_train.py +experiment=mine``, ``-m`` sweeps, every service);
- `run(config, directory)`: one run from Python; `load_config(overrides)` composes a config;
- `Composition`: what a step builder may return besides a bare `Step`;
- `Parts`: objects that replace configured parts when running from Python.

Importing it does not load TensorFlow.
"""

from composeloop.app.cli import main
from composeloop.app.compositions import Composition, Parts
from composeloop.app.preflight import load_config
from composeloop.app.run import run

__all__ = ["Composition", "Parts", "load_config", "main", "run"]
