"""`tf.distribute` strategies by name, with the device set-up each needs done in time.

This module owns creating strategies (default, one device, mirrored over GPUs or logical
CPUs, multi-worker from TF_CONFIG) and the two things that must happen before TensorFlow
initialises its devices: splitting the CPU into logical devices and configuring collective
ops for multi-worker training. Strategies are kept one per process and kind: TensorFlow
configures collectives once per process, and two MirroredStrategy objects in one process
can reuse collective keys and abort each other's all-reduces. It does not read configs
(that is the application's) nor distribute data (that is `Program.distribute`).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import tensorflow as tf

from composeloop.cluster import require_task
from composeloop.errors import ConfigError
from composeloop.vocabulary import StrategyKind

KINDS = tuple(kind.value for kind in StrategyKind)
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


def _multi_worker() -> Placed:
    task = require_task()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:  # "Collective ops must be configured at program startup"
        raise ConfigError(
            f"strategy.name: multi_worker must be set up before TensorFlow starts ({error}); "
            "run it through python -m composeloop"
        ) from None
    return Placed(
        strategy,
        f"MultiWorkerMirroredStrategy: {task.kind} {task.index} of {task.workers} workers, "
        f"{strategy.num_replicas_in_sync} replicas",
    )


def place(kind: str, devices: Sequence[str] = (), logical_cpus: int = 2) -> Placed:
    """The strategy of a kind, made once per process (later calls return the same one).

    Call it before anything touches a device: mirrored over logical CPUs and multi-worker
    must set TensorFlow up before it initialises.

    Args:
      kind: "default" (no distribution), "one_device", "mirrored" (all GPUs, or
        `logical_cpus` logical CPUs when there is no GPU, or exactly `devices`) or
        "multi_worker" (MultiWorkerMirroredStrategy from TF_CONFIG).
      devices: device names for one_device or mirrored; empty: chosen as above.
      logical_cpus: logical CPU devices for mirrored on a machine without GPUs.

    Returns:
      A `Placed` strategy with its one-line description.

    Raises:
      ConfigError: devices that do not exist, a bad TF_CONFIG, too late to set up CPUs.

    Example:
      >>> placed = place("mirrored", logical_cpus=2)
      >>> placed.replicas
      2
    """
    key = (kind, tuple(devices), logical_cpus)
    if key not in _made:
        if kind == "default":
            _made[key] = Placed(tf.distribute.get_strategy(), "one device, no distribution")
        elif kind == "one_device":
            _made[key] = _one_device(devices)
        elif kind == "mirrored":
            _made[key] = _mirrored(devices, logical_cpus)
        elif kind == "multi_worker":
            _made[key] = _multi_worker()
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
