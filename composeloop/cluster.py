"""Cluster membership: which worker this process is, from TF_CONFIG or from SLURM's srun.

This module owns reading and checking TF_CONFIG (written by hand, by `composeloop.launch`,
or by Kubeflow's TFJob), writing one per local worker for the launcher, and deciding which
description applies (`resolve`, with ``cluster=auto|tf_config|slurm``): TF_CONFIG, or the
job step srun describes (read by `composeloop.slurm`). A malformed environment is a
`ConfigError` naming the variable, raised before TensorFlow loads. It is plain Python and lives outside `engine`
(whose import loads TensorFlow) on purpose: the CLI checks the cluster in its preflight,
and the launcher writes TF_CONFIGs, without paying for TensorFlow's import. It does not
create strategies (see `engine.strategies`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from composeloop.errors import ConfigError
from composeloop.vocabulary import Cluster

if TYPE_CHECKING:
    from composeloop.slurm import SlurmStep

JOBS = ("chief", "worker")


@attrs.frozen
class Task:
    """This process's place in the cluster: its job, index, and the cluster it belongs to."""

    kind: str
    index: int
    cluster: Mapping[str, tuple[str, ...]]

    @property
    def is_chief(self) -> bool:
        """The chief writes the run's outputs: task "chief", or worker 0 when there is none."""
        return self.kind == "chief" or (self.kind == "worker" and self.index == 0 and "chief" not in self.cluster)

    @property
    def workers(self) -> int:
        return sum(len(self.cluster.get(job, ())) for job in JOBS)


def _addresses(job: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and ":" in a for a in value):
        raise ConfigError(f"TF_CONFIG.cluster.{job}: must be a non-empty list of 'host:port' strings, got {value!r}")
    return tuple(value)


def parse_tf_config(text: str) -> Task:
    """Checks a TF_CONFIG string and returns the task it describes.

    Args:
      text: JSON ``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}``.

    Returns:
      The `Task`.

    Raises:
      ConfigError: naming the TF_CONFIG key at fault.

    Example:
      >>> parse_tf_config('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}').is_chief
      True
    """
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG: not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"TF_CONFIG: must be a JSON object with 'cluster' and 'task', got {type(config).__name__}")
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not any(job in cluster for job in JOBS):
        raise ConfigError(f"TF_CONFIG.cluster: must map 'worker' (and maybe 'chief') to addresses, got {cluster!r}")
    addresses = {job: _addresses(job, value) for job, value in cluster.items() if job in JOBS}
    unknown = sorted(set(cluster) - set(JOBS))
    if unknown:
        raise ConfigError(f"TF_CONFIG.cluster: unknown job {unknown[0]!r}; multi-worker training knows {JOBS}")
    task = config.get("task")
    if not isinstance(task, dict):
        raise ConfigError(f"TF_CONFIG.task: must be an object with 'type' and 'index', got {task!r}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in addresses:
        raise ConfigError(f"TF_CONFIG.task.type: must be one of the cluster's jobs {tuple(addresses)}, got {kind!r}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(addresses[kind]):
        raise ConfigError(
            f"TF_CONFIG.task.index: must be an integer in [0, {len(addresses[kind])}) for job {kind!r}, got {index!r}"
        )
    return Task(kind, index, addresses)


def current_task(environ: Mapping[str, str] | None = None) -> Task | None:
    """The task described by the TF_CONFIG environment variable; None if it is unset."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if text is None or not text.strip():
        return None
    return parse_tf_config(text)


def require_task(environ: Mapping[str, str] | None = None) -> Task:
    """Like `current_task`, but a missing TF_CONFIG is a `ConfigError` (multi-worker needs one)."""
    task = current_task(environ)
    if task is None:
        raise ConfigError(
            "TF_CONFIG: strategy=multi_worker needs the TF_CONFIG environment variable "
            "(or start the workers with python -m composeloop.launch, or with srun under SLURM)"
        )
    return task


def local_tf_configs(ports: Sequence[int]) -> list[str]:
    """One TF_CONFIG per local worker on 127.0.0.1, worker 0 first (it is the chief).

    Example:
      >>> local_tf_configs([20001, 20002])[1]
      '{"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]}, "task": {"type": "worker", "index": 1}}'
    """
    workers = [f"127.0.0.1:{port}" for port in ports]
    return [
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        for index in range(len(workers))
    ]


# -- which cluster ------------------------------------------------------------------------


@attrs.frozen
class Membership:
    """Where this process's cluster came from, its task, and under SLURM its job step."""

    source: Cluster
    task: Task
    step: SlurmStep | None = None


def described(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment describes a cluster at all: a SLURM job step of several
    tasks, or a TF_CONFIG (checked or not)."""
    from composeloop.slurm import in_slurm_step

    environ = os.environ if environ is None else environ
    return in_slurm_step(environ) or bool(environ.get("TF_CONFIG", "").strip())


def resolve(kind: Cluster | str = Cluster.auto, environ: Mapping[str, str] | None = None) -> Membership:
    """This process's task in a multi-worker run, from TF_CONFIG or from SLURM's srun.

    Args:
      kind: "tf_config", "slurm", or "auto": SLURM inside a SLURM job step with more than
        one task (`in_slurm_step`), else TF_CONFIG.
      environ: the environment (default: os.environ).

    Raises:
      ConfigError: naming the variable at fault, or saying none describes a cluster.

    Example:
      >>> resolve("auto", {"TF_CONFIG": '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker"}}'}).source
      <Cluster.tf_config: 'tf_config'>
    """
    from composeloop.slurm import in_slurm_step, slurm_step, slurm_task

    kind = Cluster(kind) if isinstance(kind, str) else kind
    environ = os.environ if environ is None else environ
    if kind is Cluster.slurm or (kind is Cluster.auto and in_slurm_step(environ)):
        step = slurm_step(environ)
        return Membership(Cluster.slurm, slurm_task(step), step)
    return Membership(Cluster.tf_config, require_task(environ))
