"""SLURM job steps: this task's rank, its step's nodes, ports and GPUs, from srun's environment.

This module owns reading and checking the ``SLURM_*`` variables srun sets for every task of
a job step (a `ConfigError` naming the variable that is missing, malformed or disagrees with
the others), the step's cluster (every task a worker at ``node:port``, in rank order, on
ports that differ between job steps), and which GPUs each task uses: TensorFlow's
SlurmClusterResolver's rule, made safe for CPU-only nodes and for GPUs SLURM already bound
to each task. Plain Python, for the same reason as `composeloop.cluster`, which decides
when it applies; `engine.strategies` hands the result to TensorFlow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from composeloop.cluster import Task
from composeloop.errors import ConfigError

# srun sets these for every task of a job step (see `man srun`, OUTPUT ENVIRONMENT VARIABLES).
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")
# Each job step gets its own block of ports, so that two steps sharing a node do not collide:
# blocks of PORTS_PER_NODE from 12000, below Linux's ephemeral ports (32768 and up).
PORTS_FROM, PORT_BLOCKS, PORTS_PER_NODE = 12000, 1250, 16


@attrs.frozen
class SlurmStep:
    """This task's place in a SLURM job step, as srun describes it.

    Tasks are numbered node by node in the order of the step's node list (srun's default
    block distribution): the first node's tasks first.
    """

    rank: int
    tasks: int
    nodes: tuple[str, ...]
    tasks_per_node: tuple[int, ...]
    local_rank: int
    job_id: int = 0
    step_id: int = 0

    @property
    def node_index(self) -> int:
        first = 0
        for index, count in enumerate(self.tasks_per_node):
            if self.rank < first + count:
                return index
            first += count
        raise AssertionError("rank checked against the task counts")

    @property
    def node(self) -> str:
        return self.nodes[self.node_index]

    @property
    def tasks_here(self) -> int:
        return self.tasks_per_node[self.node_index]


def expand_hostlist(text: str) -> tuple[str, ...]:
    """SLURM's compressed host list, expanded in order (zero padding kept).

    Example:
      >>> expand_hostlist("gpu[01-02,7],login")
      ('gpu01', 'gpu02', 'gpu7', 'login')
    """
    hosts: list[str] = []
    for part in re.split(r",(?![^\[]*\])", text):  # commas outside brackets
        match = re.fullmatch(r"([^\[\],]+)(?:\[([\d,-]+)\]([^\[\],]*))?", part)
        if match is None:
            raise ValueError(f"bad host {part!r}")
        prefix, ranges, suffix = match.groups()
        if ranges is None:
            hosts.append(prefix)
            continue
        for piece in ranges.split(","):
            bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", piece)
            if bounds is None:
                raise ValueError(f"bad range {piece!r}")
            low, high = bounds.group(1), bounds.group(2) or bounds.group(1)
            hosts += [f"{prefix}{str(n).zfill(len(low))}{suffix}" for n in range(int(low), int(high) + 1)]
    return tuple(hosts)


def expand_counts(text: str) -> tuple[int, ...]:
    """SLURM's compressed task counts per node, e.g. ``2(x3),1`` -> (2, 2, 2, 1)."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise ValueError(f"bad count {part!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return tuple(counts)


def _slurm(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name)
    if value is None or not value.strip():
        raise ConfigError(
            f"{name}: not set; strategy.cluster=slurm runs inside a SLURM job step (start the workers with srun)"
        )
    return value.strip()


def _slurm_integer(environ: Mapping[str, str], name: str, minimum: int = 0) -> int:
    value = _slurm(environ, name)
    if not value.isdigit() or int(value) < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _slurm_parsed(environ: Mapping[str, str], name: str, parse: Callable[[str], Any], what: str) -> Any:
    text = _slurm(environ, name)
    try:
        return parse(text)
    except ValueError as error:
        raise ConfigError(f"{name}: {text!r} is not {what} ({error})") from None


def _optional_integer(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name, "").strip()
    return int(value) if value.isdigit() else 0


def in_slurm_step(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one of several tasks of a SLURM job step (what `auto` asks)."""
    environ = os.environ if environ is None else environ
    return "SLURM_PROCID" in environ and environ.get("SLURM_STEP_NUM_TASKS", "").strip() not in ("", "0", "1")


def slurm_step(environ: Mapping[str, str] | None = None) -> SlurmStep:
    """Reads and checks this task's SLURM job step from srun's environment variables.

    Raises:
      ConfigError: naming the variable that is missing, malformed or disagrees with the others.

    Example:
      >>> env = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "n[1-2]",
      ...        "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_LOCALID": "0"}
      >>> slurm_step(env).node
      'n2'
    """
    environ = os.environ if environ is None else environ
    rank = _slurm_integer(environ, "SLURM_PROCID")
    tasks = _slurm_integer(environ, "SLURM_STEP_NUM_TASKS", minimum=1)
    nodes = _slurm_parsed(environ, "SLURM_STEP_NODELIST", expand_hostlist, "a host list")
    counts = _slurm_parsed(environ, "SLURM_STEP_TASKS_PER_NODE", expand_counts, "a list of task counts")
    if len(counts) != len(nodes) or sum(counts) != tasks:
        raise ConfigError(
            f"SLURM_STEP_TASKS_PER_NODE: {environ['SLURM_STEP_TASKS_PER_NODE']!r} does not give {tasks} tasks "
            f"(SLURM_STEP_NUM_TASKS) over the {len(nodes)} node(s) of SLURM_STEP_NODELIST"
        )
    if rank >= tasks:
        raise ConfigError(f"SLURM_PROCID: {rank} is not below SLURM_STEP_NUM_TASKS={tasks}")
    step = SlurmStep(
        rank,
        tasks,
        nodes,
        counts,
        local_rank=0,
        job_id=_optional_integer(environ, "SLURM_JOB_ID"),
        step_id=_optional_integer(environ, "SLURM_STEP_ID"),
    )
    local = (
        _slurm_integer(environ, "SLURM_LOCALID")
        if "SLURM_LOCALID" in environ
        else rank - sum(counts[: step.node_index])
    )
    if local >= step.tasks_here:
        raise ConfigError(f"SLURM_LOCALID: {local} is not below the {step.tasks_here} task(s) on node {step.node}")
    here = environ.get("SLURMD_NODENAME")
    if here and here != step.node:
        raise ConfigError(
            f"SLURM_PROCID: task {rank} belongs on node {step.node} with srun's block distribution but runs on "
            f"{here} (SLURMD_NODENAME); start the step with srun --distribution=block"
        )
    return attrs.evolve(step, local_rank=local)


def default_port_base(step: SlurmStep) -> int:
    """The first port of this job step's block: a pure function of its job and step ids."""
    return PORTS_FROM + ((step.job_id * 8 + step.step_id) % PORT_BLOCKS) * PORTS_PER_NODE


def slurm_task(step: SlurmStep, port_base: int | None = None) -> Task:
    """The cluster of a SLURM job step, every task a worker at ``node:port_base+i``, in rank order.

    Example:
      >>> step = SlurmStep(rank=1, tasks=2, nodes=("n1",), tasks_per_node=(2,), local_rank=1)
      >>> slurm_task(step, port_base=20000).cluster
      {'worker': ('n1:20000', 'n1:20001')}
    """
    base = default_port_base(step) if port_base is None else port_base
    if not 1024 <= base <= 65535 - max(step.tasks_per_node):
        raise ValueError(f"port_base must leave room for {max(step.tasks_per_node)} ports below 65536, got {base}")
    addresses = tuple(
        f"{node}:{base + offset}"
        for node, count in zip(step.nodes, step.tasks_per_node, strict=True)
        for offset in range(count)
    )
    return Task("worker", step.rank, {"worker": addresses})


@attrs.frozen
class GpuShare:
    """The GPUs one task of a SLURM step uses: `devices` index the GPUs the process sees."""

    per_task: int
    devices: tuple[int, ...]


def visible_gpus(environ: Mapping[str, str] | None = None) -> int:
    """GPUs this process can see: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's count, else 0.

    Unlike TensorFlow's SlurmClusterResolver, a node without nvidia-smi has no GPU (it is
    not an error), and SLURM's "NoDevFiles" (a job without GPUs) counts as none.
    """
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip() and d.strip() != "NoDevFiles"])
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi is None:
        return 0
    try:
        output = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in output.splitlines())


def gpu_share(
    step: SlurmStep,
    gpus_per_node: int | None = None,
    gpus_per_task: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> GpuShare:
    """Which of the visible GPUs this task uses: TensorFlow's SlurmClusterResolver's rule,
    made safe for CPU-only nodes and for GPUs that SLURM already bound to each task.

    Args:
      step: this task's job step.
      gpus_per_node: GPUs this process sees; None: `visible_gpus`.
      gpus_per_task: None: SLURM_GPUS_PER_TASK when srun was given --gpus-per-task, else the
        visible GPUs divided evenly among this node's tasks (0 on a CPU-only node).

    Returns:
      No devices on a CPU-only node; all visible ones when they are exactly this task's
      (srun --gpus-per-task binds them so); else the task's slice by its local rank.

    Raises:
      ConfigError: fewer GPUs than the node's tasks need.

    Example:
      >>> step = SlurmStep(rank=1, tasks=2, nodes=("n1",), tasks_per_node=(2,), local_rank=1)
      >>> gpu_share(step, gpus_per_node=4).devices
      (2, 3)
    """
    environ = os.environ if environ is None else environ
    visible = visible_gpus(environ) if gpus_per_node is None else gpus_per_node
    if gpus_per_task is None and environ.get("SLURM_GPUS_PER_TASK"):
        count = environ["SLURM_GPUS_PER_TASK"].rpartition(":")[2]  # "a100:1" names a type
        if not count.isdigit():
            raise ConfigError(
                f"SLURM_GPUS_PER_TASK: must be a count (or type:count), got {environ['SLURM_GPUS_PER_TASK']!r}"
            )
        gpus_per_task = int(count)
    per_task = visible // step.tasks_here if gpus_per_task is None else gpus_per_task
    if per_task == 0:
        if visible:
            raise ConfigError(
                f"SLURM: {visible} GPU(s) for {step.tasks_here} tasks on node {step.node}; "
                "start one task per GPU (srun --ntasks-per-node or --gpus-per-task=1)"
            )
        return GpuShare(0, ())
    if visible == per_task:
        return GpuShare(per_task, tuple(range(visible)))
    if per_task * step.tasks_here > visible:
        raise ConfigError(
            f"SLURM: {step.tasks_here} tasks x {per_task} GPU(s) on node {step.node}, but {visible} visible"
        )
    first = step.local_rank * per_task
    return GpuShare(per_task, tuple(range(first, first + per_task)))
