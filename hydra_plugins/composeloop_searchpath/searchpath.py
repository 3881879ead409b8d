"""A Hydra search-path plugin: composeloop's configs are found by every Hydra app.

Hydra discovers plugins in the `hydra_plugins` namespace package. This one appends
composeloop's own config directory to the search path of any Hydra app, so that a user's
project (``composeloop.app.main(config_path="conf")``, or a ``@hydra.main`` app of its own)
composes its configs with composeloop's groups, experiments and sweeps behind them; a config
of the project's with the same name comes first and wins.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class ComposeloopSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from composeloop.app.cli import config_dir

        path = f"file://{config_dir()}"
        if not any(element.path == path for element in search_path.get_path()):
            search_path.append(provider="composeloop", path=path)
