"""composeloop's own Hydra plugins, made known to Hydra however composeloop was installed.

Hydra finds plugins by walking the `hydra_plugins` namespace package with `pkgutil`, which
sees a regular or wheel install but not an editable one (setuptools' editable finder hides
the directory behind an import hook). This module owns the list of the plugins composeloop
ships (the search path plugin that puts composeloop's configs behind every Hydra app's,
and the sweepers) and registers any Hydra's scan missed before a command runs.
"""

from __future__ import annotations

import importlib
import inspect

# The modules under hydra_plugins/ that composeloop ships.
PLUGIN_MODULES = (
    "hydra_plugins.composeloop_searchpath.searchpath",
    "hydra_plugins.composeloop_optuna.optuna_sweeper",  # hydra/sweeper=optuna
)


def register() -> None:
    """Adds composeloop's plugins to Hydra's registry where its scan did not find them (idempotent)."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.plugin import Plugin

    plugins = Plugins.instance()
    for module_name in PLUGIN_MODULES:
        module = importlib.import_module(module_name)
        for plugin in vars(module).values():
            if not (inspect.isclass(plugin) and issubclass(plugin, Plugin) and plugin.__module__ == module_name):
                continue
            if f"{plugin.__module__}.{plugin.__name__}" not in plugins.class_name_to_class:
                plugins.register(plugin)  # Hydra's own way to add a plugin by hand
