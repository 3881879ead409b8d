"""Cluster membership: srun's SLURM environment, `cluster=auto`, GPUs per task, bad environments.

The arithmetic is plain Python (`composeloop.cluster`) and checked against TensorFlow's own
SlurmClusterResolver where that one works (GPU nodes, given gpus_per_node); on a CPU-only
node TensorFlow's fails and `engine.strategies.SlurmResolver` must not. A worker that never
comes up is a subprocess test: a one-line `ClusterError` naming it, after a bounded wait.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from test_cli import assert_one_line_error, cli

from composeloop import cluster, slurm
from composeloop.errors import ConfigError

TWO_ON_ONE = {
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_NODELIST": "vm",
    "SLURM_STEP_TASKS_PER_NODE": "2",
    "SLURM_JOB_ID": "17",
    "SLURM_STEP_ID": "0",
    "SLURMD_NODENAME": "vm",
}
FOUR_ON_TWO = {
    **TWO_ON_ONE,
    "SLURM_PROCID": "3",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NODELIST": "gpu[09-10]",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURMD_NODENAME": "gpu10",
}
TF_CONFIG = json.dumps({"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}})


def test_hostlists_and_task_counts_expand_in_slurm_order():
    assert slurm.expand_hostlist("gpu[09-11,20],login1") == ("gpu09", "gpu10", "gpu11", "gpu20", "login1")
    assert slurm.expand_hostlist("vm") == ("vm",)
    assert slurm.expand_counts("3(x2),1") == (3, 3, 1)
    for bad in ("gpu[1-", "gpu[a-b]", ""):
        with pytest.raises(ValueError):
            slurm.expand_hostlist(bad)


def test_a_step_over_two_nodes_numbers_tasks_node_by_node():
    step = slurm.slurm_step(FOUR_ON_TWO)
    assert (step.rank, step.node, step.local_rank, step.tasks_here) == (3, "gpu10", 1, 2)
    task = slurm.slurm_task(step, port_base=20000)
    # Rank order, not sorted host names: rank 2 is the first task of the second node.
    assert task.cluster == {"worker": ("gpu09:20000", "gpu09:20001", "gpu10:20000", "gpu10:20001")}
    assert (task.kind, task.index, task.is_chief) == ("worker", 3, False)


def test_every_task_of_a_step_gets_the_same_ports_and_other_steps_others():
    ports = {slurm.default_port_base(slurm.slurm_step({**TWO_ON_ONE, "SLURM_PROCID": r})) for r in "01"}
    assert len(ports) == 1
    (base,) = ports
    assert slurm.PORTS_FROM <= base < 32768 - slurm.PORTS_PER_NODE  # below the ephemeral ports
    later = slurm.slurm_step({**TWO_ON_ONE, "SLURM_STEP_ID": "1"})
    assert slurm.default_port_base(later) != base


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"SLURM_PROCID": None}, "SLURM_PROCID"),
        ({"SLURM_PROCID": "one"}, "SLURM_PROCID"),
        ({"SLURM_PROCID": "2"}, "SLURM_PROCID"),
        ({"SLURM_STEP_NUM_TASKS": "0"}, "SLURM_STEP_NUM_TASKS"),
        ({"SLURM_STEP_NODELIST": None}, "SLURM_STEP_NODELIST"),
        ({"SLURM_STEP_NODELIST": "vm[1-"}, "SLURM_STEP_NODELIST"),
        ({"SLURM_STEP_TASKS_PER_NODE": "2(x"}, "SLURM_STEP_TASKS_PER_NODE"),
        ({"SLURM_STEP_TASKS_PER_NODE": "3"}, "SLURM_STEP_TASKS_PER_NODE"),
        ({"SLURM_LOCALID": "2"}, "SLURM_LOCALID"),
        ({"SLURMD_NODENAME": "elsewhere"}, "SLURM_PROCID"),
    ],
)
def test_a_malformed_slurm_environment_names_the_variable(change, variable):
    environ = {key: value for key, value in {**TWO_ON_ONE, **change}.items() if value is not None}
    with pytest.raises(ConfigError, match=f"^{variable}: ") as raised:
        cluster.resolve("slurm", environ)
    assert "\n" not in str(raised.value)


def test_auto_picks_slurm_only_in_a_step_of_several_tasks():
    assert cluster.resolve("auto", {**TWO_ON_ONE, "TF_CONFIG": TF_CONFIG}).source is cluster.Cluster.slurm
    one_task = {**TWO_ON_ONE, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0", "TF_CONFIG": TF_CONFIG}
    assert cluster.resolve("auto", one_task).source is cluster.Cluster.tf_config
    forced = cluster.resolve("tf_config", {**TWO_ON_ONE, "TF_CONFIG": TF_CONFIG})
    assert forced.task.cluster == {"worker": ("h:1", "h:2")}
    with pytest.raises(ConfigError, match="^TF_CONFIG: .*srun"):
        cluster.resolve("auto", {})
    with pytest.raises(ConfigError, match="^SLURM_PROCID: not set"):
        cluster.resolve("slurm", {"TF_CONFIG": TF_CONFIG})


def test_gpus_are_shared_out_by_local_rank_or_taken_as_slurm_bound_them():
    step = slurm.slurm_step(TWO_ON_ONE)  # local rank 1 of 2
    cpu = {"PATH": ""}  # no nvidia-smi, no CUDA_VISIBLE_DEVICES: a CPU-only node
    assert slurm.gpu_share(step, environ=cpu) == slurm.GpuShare(0, ())
    assert slurm.gpu_share(step, gpus_per_node=2, environ=cpu) == slurm.GpuShare(1, (1,))
    assert slurm.gpu_share(step, gpus_per_node=8, environ=cpu) == slurm.GpuShare(4, (4, 5, 6, 7))
    assert slurm.gpu_share(step, environ={"CUDA_VISIBLE_DEVICES": "0,1,2,3"}).devices == (2, 3)
    bound = {"CUDA_VISIBLE_DEVICES": "3", "SLURM_GPUS_PER_TASK": "a100:1"}  # srun --gpus-per-task=1
    assert slurm.gpu_share(step, environ=bound) == slurm.GpuShare(1, (0,))
    assert slurm.gpu_share(step, environ={"CUDA_VISIBLE_DEVICES": "NoDevFiles"}).devices == ()
    with pytest.raises(ConfigError, match="^SLURM: 1 GPU"):
        slurm.gpu_share(step, gpus_per_node=1, environ=cpu)
    with pytest.raises(ConfigError, match="^SLURM: 2 tasks x 2 GPU"):
        slurm.gpu_share(step, gpus_per_node=3, gpus_per_task=2, environ=cpu)


@pytest.fixture
def in_step(monkeypatch):
    """TWO_ON_ONE as this process's environment (TensorFlow's resolver reads os.environ)."""
    for key, value in TWO_ON_ONE.items():
        monkeypatch.setenv(key, value)
    # TensorFlow's resolver sets CUDA_VISIBLE_DEVICES itself: set first, so that it is undone after.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    return cluster.resolve("slurm")


def test_gpu_arithmetic_matches_tensorflows_slurm_resolver(in_step, monkeypatch):
    import tensorflow as tf

    from composeloop.engine.strategies import SlurmResolver

    base = slurm.default_port_base(in_step.step)
    theirs = tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=base, gpus_per_node=2)
    spec = theirs.cluster_spec()  # sets CUDA_VISIBLE_DEVICES to this task's share
    share = slurm.gpu_share(in_step.step, gpus_per_node=2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, share.devices)) == "1"
    ours = SlurmResolver(in_step, share)
    assert ours.cluster_spec().as_dict() == spec.as_dict() == {"worker": [f"vm:{base}", f"vm:{base + 1}"]}
    assert ours.get_task_info() == theirs.get_task_info() == ("worker", 1)
    assert ours.num_accelerators() == theirs.num_accelerators() == {"GPU": 1}


def test_a_cpu_only_node_fails_tensorflows_resolver_but_not_ours(in_step, monkeypatch):
    import tensorflow as tf

    from composeloop.engine.strategies import SlurmResolver

    monkeypatch.setenv("PATH", "")  # no nvidia-smi
    with pytest.raises(FileNotFoundError):
        tf.distribute.cluster_resolver.SlurmClusterResolver()
    with pytest.raises(ValueError, match="must not be zero"):
        tf.distribute.cluster_resolver.SlurmClusterResolver(gpus_per_node=0).cluster_spec()
    ours = SlurmResolver(in_step, slurm.gpu_share(in_step.step))
    assert ours.num_accelerators() == {"GPU": 0}
    assert ours.cluster_spec().as_dict() == {"worker": list(in_step.task.cluster["worker"])}
    assert ours.master() == f"grpc://{in_step.task.cluster['worker'][1]}"


def test_a_malformed_slurm_environment_is_one_line_from_the_cli(tmp_path, monkeypatch):
    for key, value in {**TWO_ON_ONE, "SLURM_STEP_TASKS_PER_NODE": "2(x"}.items():
        monkeypatch.setenv(key, value)
    result = cli("strategy=multi_worker", "data=synthetic", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, "SLURM_STEP_TASKS_PER_NODE", "2(x")
    assert not (tmp_path / "run").exists()


ALONE = """
import json, os, sys
from composeloop.engine.strategies import place
from composeloop.errors import ClusterError
task = {"type": "worker", "index": int(sys.argv[1])}
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": sys.argv[2:]}, "task": task})
try:
    place("multi_worker", connect_timeout_s=3)
except ClusterError as error:
    print(error)
"""


@pytest.mark.slow
def test_a_worker_that_never_comes_up_is_named_after_a_bounded_wait(tmp_path):
    from composeloop.launch import free_ports

    addresses = [f"127.0.0.1:{port}" for port in free_ports(4)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.monotonic()
    # Worker 0 (the coordination leader) without worker 1, and worker 1 without worker 0.
    alone = [
        subprocess.Popen([sys.executable, "-c", ALONE, str(index), *pair], env=env, stdout=subprocess.PIPE, text=True)
        for index, pair in ((0, addresses[:2]), (1, addresses[2:]))
    ]
    lines = [process.communicate(timeout=180)[0].strip() for process in alone]
    assert time.monotonic() - started < 150
    assert lines[0].startswith(f"strategy: worker 1 ({addresses[1]}) did not join the cluster within 3s"), lines
    assert lines[1].startswith(f"strategy: worker 0 ({addresses[2]}) did not join the cluster within 3s"), lines
    assert all("\n" not in line for line in lines)
