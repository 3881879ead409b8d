"""`tf.distribute` strategies by name, with the device set-up each needs done in time.

This module owns creating strategies (default, one device, mirrored over GPUs or logical
CPUs, multi-worker with its cluster from TF_CONFIG or SLURM) and the things that must
happen before TensorFlow initialises its devices: splitting the CPU into logical devices,
and, for multi-worker training, configuring collective ops, the coordination service (so
that a worker that never comes up is reported after a bounded wait, by name) and, under
SLURM, which GPUs each task uses. Strategies are kept one per process and kind: TensorFlow
configures collectives once per process, and two MirroredStrategy objects in one process
can reuse collective keys and abort each other's all-reduces. It does not read configs
(that is the application's) nor distribute data (that is `Program.distribute`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import tensorflow as tf
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import SlurmClusterResolver
from tensorflow.python.eager import context

from composeloop import cluster, slurm
from composeloop.errors import ClusterError, ConfigError
from composeloop.vocabulary import StrategyKind

KINDS = tuple(kind.value for kind in StrategyKind)
CONNECT_TIMEOUT_S = 300.0  # how long the workers wait for each other to start
EXIT_BARRIER_MS = 30_000  # how long a finished worker waits for the others at exit
_made: dict[tuple, Placed] = {}


@attrs.frozen
class Placed:
    """A strategy and the one line that says where it runs."""

    strategy: tf.distribute.Strategy
    note: str

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def configure_logical_cpus(count: int) -> int:
    """Splits the first CPU into `count` logical devices, if TensorFlow has not started yet.

    Returns:
      The number of logical CPU devices TensorFlow now has (the old number, if it had
      already initialised its devices; that is not an error while it is enough).

    Example:
      >>> configure_logical_cpus(2)
      2
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is None or len(configured) != count:
        with contextlib.suppress(RuntimeError):  # already initialised: keep what there is
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    return len(tf.config.list_logical_devices("CPU"))


def _same_device(a: tf.DeviceSpec, b: tf.DeviceSpec) -> bool:
    return (a.device_type or "").upper() == (b.device_type or "").upper() and (a.device_index or 0) == (
        b.device_index or 0
    )


def _check_devices(devices: Sequence[str]) -> None:
    present = [tf.DeviceSpec.from_string(d.name) for d in tf.config.list_logical_devices()]
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except ValueError:
            raise ConfigError(f"strategy.devices: {device!r} is not a device name (like /gpu:0 or /cpu:1)") from None
        if not any(_same_device(spec, other) for other in present):
            names = ", ".join(f"/{p.device_type.lower()}:{p.device_index}" for p in present)
            hint = "; strategy.logical_cpus sets how many CPU devices there are" if spec.device_type == "CPU" else ""
            raise ConfigError(f"strategy.devices: {device} does not exist here (devices: {names}){hint}")


def _mirrored(devices: Sequence[str], logical_cpus: int) -> Placed:
    gpus = tf.config.list_physical_devices("GPU")
    if devices:
        if not gpus:
            configure_logical_cpus(logical_cpus)
        _check_devices(devices)
        return Placed(tf.distribute.MirroredStrategy(list(devices)), f"MirroredStrategy over {', '.join(devices)}")
    if gpus:
        return Placed(tf.distribute.MirroredStrategy(), f"MirroredStrategy over {len(gpus)} GPU(s)")
    available = configure_logical_cpus(logical_cpus)
    if available < logical_cpus:
        raise ConfigError(
            f"strategy.logical_cpus: TensorFlow already started with {available} CPU device(s); "
            f"set up {logical_cpus} before anything touches a device"
        )
    cpus = [f"/cpu:{index}" for index in range(logical_cpus)]
    note = f"no GPU visible: MirroredStrategy over {logical_cpus} logical CPU devices (strategy.logical_cpus)"
    return Placed(tf.distribute.MirroredStrategy(cpus), note)


def _one_device(devices: Sequence[str]) -> Placed:
    device = devices[0] if devices else ("/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0")
    _check_devices([device])
    return Placed(tf.distribute.OneDeviceStrategy(device), f"OneDeviceStrategy on {device}")


class SlurmResolver(SlurmClusterResolver):
    """TensorFlow's SlurmClusterResolver, given the job step `composeloop.cluster` resolved.

    The parent reads the step itself, which fails on CPU-only nodes (it runs nvidia-smi,
    then divides the node's GPUs among its tasks with a zero step) and numbers tasks by
    sorted host name rather than by rank. Here the parent gets explicit values (so it runs
    no nvidia-smi and sets no CUDA_VISIBLE_DEVICES: GPUs are chosen with
    `tf.config.set_visible_devices`, which works after TensorFlow has listed them), and
    `cluster_spec` returns the cluster in rank order; `num_accelerators`, `master` and
    `get_task_info` are the parent's.
    """

    def __init__(self, membership: cluster.Membership, share: slurm.GpuShare) -> None:
        step, task = membership.step, membership.task
        assert step is not None, "a SLURM membership has its step"
        self._membership = membership
        per_node = dict(zip(step.nodes, step.tasks_per_node, strict=True))
        super().__init__(
            jobs={"worker": step.tasks},
            gpus_per_node=share.per_task * max(step.tasks_per_node),
            gpus_per_task=share.per_task,
            tasks_per_node=per_node,
            auto_set_gpu=False,
        )
        self.task_type, self.task_id = task.kind, task.index

    def _resolve_own_rank(self) -> int:  # the parent would read SLURM_PROCID again
        return self._membership.task.index

    def cluster_spec(self) -> tf.train.ClusterSpec:
        return tf.train.ClusterSpec({job: list(addresses) for job, addresses in self._membership.task.cluster.items()})


def _use_gpus(share: slurm.GpuShare) -> None:
    gpus = tf.config.list_physical_devices("GPU")
    if share.devices and len(gpus) > len(share.devices):
        tf.config.set_visible_devices([gpus[index] for index in share.devices], "GPU")


def _configure_coordination(task: cluster.Task, connect_timeout_s: float) -> None:
    """Sets up the coordination service as MultiWorkerMirroredStrategy would, with a deadline.

    By default a worker waits an hour for the others to register, and the leader waits
    without bound unless it waits at a barrier: with ``cluster_register_with_barrier`` and
    a timeout, a worker that never comes up fails every other one after `connect_timeout_s`
    with an error naming it. The strategy keeps a service configured before it.
    """
    jobs = [job for job in cluster.JOBS if job in task.cluster]
    leader = f"/job:{jobs[0]}/replica:0/task:0"  # the chief, else worker 0: as the strategy picks it
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=leader,
        cluster_register_timeout_in_ms=int(connect_timeout_s * 1000),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(task.cluster[job])) for job in jobs
        ],
    )
    context.context().coordination_service.cluster_register_with_barrier = True


def _unreachable(error: Exception, task: cluster.Task, connect_timeout_s: float) -> ClusterError:
    """One line naming the tasks that the error's text says did not answer (never this one)."""
    named = dict.fromkeys(
        (job, int(index)) for job, index in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", str(error))
    )
    others = [
        f"{job} {index} ({task.cluster[job][index]})"
        for job, index in named
        if (job, index) != (task.kind, task.index) and job in task.cluster and index < len(task.cluster[job])
    ]
    what = " and ".join(others) or "a peer"
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return ClusterError(
        f"strategy: {what} did not join the cluster within {connect_timeout_s:g}s "
        f"(this is {task.kind} {task.index} of {task.workers}; {first[:120]})"
    )


def _leave_together() -> None:
    """At exit, waits for the other workers, then stops writing to stderr.

    Every worker but the last to leave would otherwise log, from TensorFlow's C++ runtime,
    that a peer (or the coordination service's leader) stopped answering: true, and no
    news once every worker has finished. So the workers wait for each other at a barrier
    and then point file descriptor 2 at /dev/null for the rest of their exit. A failed
    barrier (a peer died) silences nothing.
    """
    try:
        context.context().wait_at_barrier("composeloop/exit", EXIT_BARRIER_MS)
    except Exception:  # a peer is gone: what the runtime says next may matter
        return
    sys.stderr.flush()
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)


def _multi_worker(kind: cluster.Cluster | str, connect_timeout_s: float) -> Placed:
    membership = cluster.resolve(kind)
    task = membership.task
    resolver = None
    if membership.source is cluster.Cluster.slurm:
        share = slurm.gpu_share(membership.step)
        _use_gpus(share)
        resolver = SlurmResolver(membership, share)
    try:
        _configure_coordination(task, connect_timeout_s)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as error:  # "Collective ops must be configured at program startup"
        raise ConfigError(
            f"strategy.name: multi_worker must be set up before TensorFlow starts ({error}); "
            "run it through python -m composeloop"
        ) from None
    except tf.errors.OpError as error:  # deadline exceeded, unavailable: someone did not come
        raise _unreachable(error, task, connect_timeout_s) from None
    atexit.register(_leave_together)
    source = f"SLURM job step {membership.step.job_id}.{membership.step.step_id}" if membership.step else "TF_CONFIG"
    return Placed(
        strategy,
        f"MultiWorkerMirroredStrategy: {task.kind} {task.index} of {task.workers} workers, "
        f"{strategy.num_replicas_in_sync} replicas (cluster from {source})",
    )


def place(
    kind: str,
    devices: Sequence[str] = (),
    logical_cpus: int = 2,
    cluster_kind: cluster.Cluster | str = cluster.Cluster.auto,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> Placed:
    """The strategy of a kind, made once per process (later calls return the same one).

    Call it before anything touches a device: mirrored over logical CPUs and multi-worker
    must set TensorFlow up before it initialises.

    Args:
      kind: "default" (no distribution), "one_device", "mirrored" (all GPUs, or
        `logical_cpus` logical CPUs when there is no GPU, or exactly `devices`) or
        "multi_worker" (MultiWorkerMirroredStrategy over the cluster `cluster_kind` names).
      devices: device names for one_device or mirrored; empty: chosen as above.
      logical_cpus: logical CPU devices for mirrored on a machine without GPUs.
      cluster_kind: for multi_worker, where the cluster comes from: "tf_config", "slurm"
        (srun's environment: no TF_CONFIG needed), or "auto" (SLURM inside a SLURM job
        step with more than one task, else TF_CONFIG); see `composeloop.cluster.resolve`.
      connect_timeout_s: for multi_worker, how long the workers wait for each other at
        start; then a `ClusterError` names the worker that did not come.

    Returns:
      A `Placed` strategy with its one-line description.

    Raises:
      ConfigError: devices that do not exist, a bad TF_CONFIG or SLURM environment (naming
        the variable), too late to set up CPUs.
      ClusterError: a worker did not join within `connect_timeout_s`.

    Example:
      >>> placed = place("mirrored", logical_cpus=2)
      >>> placed.replicas
      2
    """
    key = (kind, tuple(devices), logical_cpus, str(cluster_kind), connect_timeout_s)
    if key not in _made:
        if kind == "default":
            _made[key] = Placed(tf.distribute.get_strategy(), "one device, no distribution")
        elif kind == "one_device":
            _made[key] = _one_device(devices)
        elif kind == "mirrored":
            _made[key] = _mirrored(devices, logical_cpus)
        elif kind == "multi_worker":
            _made[key] = _multi_worker(cluster_kind, connect_timeout_s)
        else:
            raise ConfigError(f"strategy.name: unknown {kind!r}; known: {', '.join(KINDS)}")
    return _made[key]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, outside multi-worker runs)."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def output_directory(strategy: tf.distribute.Strategy, directory: Path) -> Path:
    """`directory` on the chief; on every other worker a temporary directory, removed at exit.

    Every worker runs the same program (saving included, so no collective is left
    waiting), but only the chief's files land in the run directory.
    """
    if is_chief(strategy):
        return directory
    scratch = tempfile.mkdtemp(prefix="composeloop-worker-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return Path(scratch)
