"""Values the config check refused only after the fuzz (`test_properties_config.py`) found them.

Each case failed on the code before it: accepted although its use cannot hold it (a float32
overflow, a positive rate float32 turns into 0, a synthetic set beyond memory), or refused
with a line that named no key (Hydra's and OmegaConf's own messages) or with Python's
ValueError/TypeError from inside Hydra. In process, through `load_config` and the command
line's one-line rendering (`cli.one_line`); the real command line prints that same line.
"""

from __future__ import annotations

import pytest

from composeloop.app import cli, load_config
from composeloop.errors import ConfigError


def refusal(*overrides: str) -> str:
    with pytest.raises(ConfigError) as refused:
        load_config(list(overrides))
    line = cli.one_line(refused.value)
    assert "\n" not in line
    return line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "optimizer.learning_rate=1e39",
            "optimizer.learning_rate: must be > 0 and at most 3.4e38 (float32), got 1e+39",
        ),
        ("model.l2=1e300", "model.l2: must be >= 0 and at most 3.4e38 (float32), got 1e+300"),
        ("early_stopping.min_delta=3.5e38", "early_stopping.min_delta: must be >= 0 and at most 3.4e38 (float32)"),
        (
            "optimizer.learning_rate=1e-39",
            "optimizer.learning_rate: must be > 0 in float32 (at least 1.2e-38), got 1e-39",
        ),
        ("gradient.clip_global_norm=5e-324", "gradient.clip_global_norm: must be > 0 in float32 (at least 1.2e-38)"),
        ("data.synthetic_shape=[65536,65536]", "data.synthetic_shape: must be a non-empty list of sizes in [1, 65536]"),
    ],
)
def test_numbers_beyond_what_their_use_holds_are_refused(override, expected):
    assert refusal(override).startswith(expected)


def test_a_synthetic_set_beyond_its_bound_is_refused_naming_the_key():
    line = refusal("data=synthetic", "data.synthetic_shape=[4096,4096]")
    assert line.startswith("data.synthetic_examples: 256 of shape [4096, 4096] hold 4294967296 values")
    line = refusal(
        "data=synthetic", "data.synthetic_shape=[4096,64]", "data.synthetic_examples=2", "data.synthetic_classes=2000"
    )
    assert line.startswith("data.synthetic_classes: 2000 of shape [4096, 64]")
    load_config(["data.synthetic_shape=[4096,4096]"])  # not synthetic: the shape is not used


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("data=null",), "data: a config group takes an option (digits, images, npz, synthetic, tfrecord), got null"),
        (
            ("experiment=false",),
            "experiment: a config group takes an option (classifier, gan, lr_find, multi_gpu, wgan_gp), got False",
        ),
        (("+experiment=gan", "experiment=[null]"), "experiment: a config group takes an option"),
        (("train.epochs=[1,",), "train.epochs=[1,: not a valid override (no viable alternative at input '[1,')"),
        (("mode=${oc.env:COMPOSELOOP_NEVER_SET}",), "mode: KeyError raised while resolving interpolation"),
        (("train.epochs=${no.such.key}",), "train.epochs: Interpolation key 'no.such.key' not found"),
    ],
)
def test_hydra_errors_that_named_no_key_now_name_it(overrides, expected):
    assert refusal(*overrides).startswith(expected)


def test_a_value_spelt_with_a_dollar_keeps_its_message():
    """`cli.one_line` dropped every line holding a "$" (meant for OmegaConf's '$VALUE' templates)."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as refused:
        load_config(["seed='$'"])
    assert cli.one_line(refused.value) == (
        "Error merging override seed='$': Value '$' of type 'str' could not be converted to Integer"
    )


@pytest.mark.slow
def test_showing_the_config_of_a_bad_override_is_one_line_too(tmp_path):
    """Fails on the old code: `--cfg` skipped the preflight and Hydra raised a ValueError traceback."""
    from test_cli import assert_one_line_error, cli

    assert_one_line_error(cli("experiment=null", "--cfg", "job", cwd=tmp_path), "experiment: a config group takes")
    assert cli("train.epochs=3", "--cfg", "job", cwd=tmp_path).returncode == 0
