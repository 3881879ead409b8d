"""The strategy group, train.accumulate/precision keys and their bad input, through the CLI."""

from __future__ import annotations

import json

import pytest
from test_cli import assert_one_line_error, cli

from composeloop.cluster import local_tf_configs, parse_tf_config
from composeloop.errors import ConfigError


def composed(tmp_path, *args: str) -> str:
    result = cli(*args, "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_strategy_group_and_multi_gpu_experiment_compose(tmp_path):
    assert "name: default" in composed(tmp_path)
    multi_gpu = composed(tmp_path, "+experiment=multi_gpu")
    assert "name: mirrored" in multi_gpu and "experiment: classifier" in multi_gpu and "logical_cpus: 2" in multi_gpu
    assert "name: multi_worker" in composed(tmp_path, "+experiment=multi_gpu", "strategy=multi_worker")
    keys = composed(tmp_path, "train.accumulate=4", "train.precision=mixed_float16")
    assert "accumulate: 4" in keys and "precision: mixed_float16" in keys


slow = pytest.mark.slow  # the case loads TensorFlow before it can fail
BROKEN_JSON = '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": '
OUT_OF_RANGE = '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}'

BAD_INPUT = [
    pytest.param(["train.accumulate=0"], None, ["train.accumulate", "an integer in [1, "], id="accumulate-0"),
    pytest.param(["train.precision=float8"], None, ["train.precision"], id="unknown-precision"),
    pytest.param(["strategy=nope"], None, ["strategy/nope"], id="unknown-strategy"),
    pytest.param(["strategy=mirrored", "strategy.logical_cpus=0"], None, ["strategy.logical_cpus"], id="no-cpus"),
    pytest.param(["strategy=multi_worker"], BROKEN_JSON, ["TF_CONFIG", "JSON"], id="tf-config-not-json"),
    pytest.param(["strategy=multi_worker"], OUT_OF_RANGE, ["TF_CONFIG.task.index"], id="tf-config-index"),
    pytest.param(["strategy=multi_worker"], "", ["TF_CONFIG", "composeloop.launch"], id="tf-config-missing"),
    pytest.param(
        ["strategy=mirrored", "strategy.devices=[/gpu:7]"],
        None,
        ["strategy.devices", "/gpu:7", "does not exist"],
        id="mirrored-device-missing",
        marks=slow,
    ),
]


@pytest.mark.parametrize(("args", "tf_config", "expected"), BAD_INPUT)
def test_bad_input_is_one_line(tmp_path, monkeypatch, args, tf_config, expected):
    monkeypatch.setenv("TF_CONFIG", tf_config or "")
    result = cli("train.epochs=1", "data=synthetic", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, *expected)
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[]", "TF_CONFIG:"),
        ('{"task": {"type": "worker"}}', "TF_CONFIG.cluster"),
        ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker"}}', "TF_CONFIG.cluster.worker"),
        ('{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker"}}', "TF_CONFIG.cluster"),
        ('{"cluster": {"worker": ["h:1"]}}', "TF_CONFIG.task"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief"}}', "TF_CONFIG.task.type"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}', "TF_CONFIG.task.index"),
    ],
)
def test_malformed_tf_config_names_the_key(text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_tf_config(text)


def test_local_tf_configs_describe_one_cluster_with_worker_0_as_chief():
    configs = [parse_tf_config(text) for text in local_tf_configs([4001, 4002, 4003])]
    assert [task.index for task in configs] == [0, 1, 2]
    assert [task.is_chief for task in configs] == [True, False, False]
    assert {task.cluster["worker"] for task in configs} == {("127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003")}
    with_chief = {"cluster": {"chief": ["h:0"], "worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}
    assert not parse_tf_config(json.dumps(with_chief)).is_chief
    assert parse_tf_config(json.dumps(with_chief)).workers == 2
