"""The MLflow tracking store: which URIs are good, and a client with MLflow kept quiet and quick.

This module owns the checks of ``tracking.uri`` made before a run starts (no MLflow call,
no network: the preflight's), relative SQLite and file paths made absolute, and the
MLflow client with MLflow's usage telemetry off, its INFO chatter off and its HTTP retries
bounded. What is logged to the store, and when, is `composeloop.app.tracking`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from composeloop.errors import ConfigError

SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file", "http", "https", "databricks", "databricks-uc")
DRIVERS = {"postgresql": "psycopg2", "mysql": "pymysql", "mssql": "pyodbc"}


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def check_tracking_uri(uri: str) -> None:
    """Checks a tracking URI and that MLflow is installed, without contacting the store.

    Raises:
      ConfigError: one line naming ``tracking.uri``: no MLflow, an unknown scheme, a
        SQLite URI without its three slashes or whose folder does not exist, a database
        driver that is not installed, a server URI without a host.

    Example:
      >>> check_tracking_uri("sqlite:///mlflow.db")  # fine: a file in the working directory
    """
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("tracking: MLflow is not installed; pip install 'composeloop[tracking]'")
    parsed = urlparse(uri)
    scheme = uri if uri in ("databricks", "databricks-uc") else parsed.scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise ConfigError(f"tracking.uri: unknown scheme in {uri!r} (known: {', '.join(SCHEMES)})")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri == "sqlite:///":
            raise ConfigError(f"tracking.uri: {uri!r}: write sqlite:///relative.db or sqlite:////absolute/path.db")
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.resolve().is_dir():
            raise ConfigError(f"tracking.uri: {uri!r}: the folder {folder} does not exist")
    driver = parsed.scheme.split("+")[1] if "+" in parsed.scheme else DRIVERS.get(scheme)
    if driver and importlib.util.find_spec(driver) is None:
        raise ConfigError(f"tracking.uri: {uri!r} needs the {driver} package; pip install {driver}")
    if scheme in ("http", "https") and not parsed.hostname:
        raise ConfigError(f"tracking.uri: {uri!r} has no host")


def resolve_uri(uri: str) -> str:
    """`uri` with a relative SQLite or file path made absolute (the working directory's now).

    Example:
      >>> resolve_uri("sqlite:///mlflow.db")
      'sqlite:////home/me/project/mlflow.db'
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri[len("file:") :]).resolve().as_uri()
    return uri


@contextlib.contextmanager
def _quiet_and_quick(retries: int, timeout: int) -> Iterator[None]:
    """MLflow's INFO chatter (database set-up) off, and its HTTP retries bounded, unless the user set them."""
    _import_mlflow()  # first: importing MLflow sets its loggers' levels
    names = ("mlflow", "alembic")
    levels = {name: logging.getLogger(name).level for name in names}
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    added = [name for name in limits if name not in os.environ]
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.update({name: limits[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _import_mlflow() -> Any:
    # MLflow 3 reports usage to its makers by default; a composeloop run makes no network call it was not asked
    # for, so that is off unless the user set MLFLOW_DISABLE_TELEMETRY themselves.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


def mlflow_client(uri: str) -> Any:
    """MLflow's client for `uri` (MLflow is imported here, with its usage telemetry off)."""
    return _import_mlflow().MlflowClient(tracking_uri=uri)
