"""Hydra's flags through composeloop's preflight, as Hydra users spell them.

A config directory of the user's adds experiments, models, data and sweeps; the preflight
must compose with it exactly as Hydra will, for `--config-dir/-cd`, `--config-path/-cp`,
`--config-name/-cn` and `-m/--multirun`, in the `--flag value` and `--flag=value`
spellings. Each case plants a bad value in the user's config: the one-line error naming
it proves the preflight read that config (and these stay fast: no TensorFlow).
"""

from __future__ import annotations

import pytest
import yaml
from test_cli import assert_one_line_error, cli


def write(path, content: dict, package_global: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("# @package _global_\n" if package_global else "") + yaml.safe_dump(content))


@pytest.fixture
def user_conf(tmp_path):
    conf = tmp_path / "myconf"
    write(conf / "experiment" / "mine.yaml", {"experiment": "mine", "train": {"epochs": -7}}, package_global=True)
    write(conf / "model" / "tiny.yaml", {"_target_": "no_such_package.tiny_model"})
    write(conf / "data" / "mine.yaml", {"source": "synthetic", "batch_size": 0})
    write(
        conf / "sweep" / "my_seeds.yaml", {"hydra": {"mode": "MULTIRUN", "sweeper": {"params": {"seed": "0,-2"}}}}, True
    )
    write(conf / "train.yaml", {"defaults": ["config", "_self_"], "train": {"steps_per_execution": 0}})
    return conf


@pytest.mark.parametrize("spelling", ["--config-dir {}", "--config-dir={}", "-cd {}"])
def test_a_users_config_dir_adds_an_experiment(tmp_path, user_conf, spelling):
    flag = spelling.format(user_conf).split(" ")
    assert_one_line_error(cli(*flag, "+experiment=mine", cwd=tmp_path), "train.epochs", "-7")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=tiny", "model._target_: cannot import 'no_such_package.tiny_model'"),
        ("data=mine", "data.batch_size"),
        ("+sweep=my_seeds", "seed"),
    ],
)
def test_a_users_config_dir_adds_models_data_and_sweeps(tmp_path, user_conf, override, expected):
    result = cli("-cd", str(user_conf), override, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert_one_line_error(result, expected)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("spelling", [("--config-name", "train"), ("--config-name=train",), ("-cn", "train")])
def test_config_name_picks_the_users_primary_config(tmp_path, user_conf, spelling):
    assert_one_line_error(cli("-cd", str(user_conf), *spelling, cwd=tmp_path), "train.steps_per_execution")


@pytest.mark.parametrize("spelling", [("--config-path", "{}"), ("--config-path={}",), ("-cp", "{}")])
def test_config_path_replaces_the_primary_directory(tmp_path, user_conf, spelling):
    flags = [part.format(user_conf) for part in spelling]
    assert_one_line_error(cli(*flags, "-cn", "train", cwd=tmp_path), "train.steps_per_execution")


@pytest.mark.parametrize("flag", ["-m", "--multirun"])
def test_multirun_validates_every_job(tmp_path, flag):
    result = cli(flag, "optimizer.learning_rate=1e-3,-1", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert_one_line_error(result, "optimizer.learning_rate")
    assert not (tmp_path / "sweep").exists()


def test_cfg_and_info_print_without_running(tmp_path, user_conf):
    shown = cli("-cd", str(user_conf), "+experiment=mine", "--cfg", "job", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["experiment"] == "mine"
    info = cli("--info", "searchpath", "-cd", str(user_conf), cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert str(user_conf) in info.stdout
    assert not (tmp_path / "outputs").exists()
