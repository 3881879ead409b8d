"""A search space from Hydra's sweep syntax: its dimensions, and bad ones refused in one line.

Everything here runs in-process without TensorFlow or Optuna's sampling: the checks of
`composeloop.app.search_space` against the attrs schema, the overrides a sampled value
becomes, and how a job's summary becomes a trial's outcome.
"""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from composeloop.app import search, search_job
from composeloop.app.search_space import check_search_space, parse, search_space
from composeloop.errors import ConfigError

GROUPS = {"model": ["cnn", "mlp"], "optimizer": ["adam", "sgd"]}


def space(*lines: str):
    return search_space(
        OverridesParser.create().parse_overrides(list(lines)), group_options=lambda g: GROUPS.get(g, [])
    )


def test_dimensions_take_their_type_from_the_schema():
    found = space(
        "optimizer.learning_rate=tag(log,interval(1e-4,3e-2))",
        "model.width=interval(8,64)",  # an int field: an int dimension, whatever the literals
        "model.depth=range(1,4)",
        "gradient.clip_global_norm=choice(0.5,1.0,5.0)",
        "gradient.clip_norm=null,1.0",
        "model=choice(mlp,cnn)",
        "data.synthetic_shape=choice([8,8],[4,4])",
        "train.epochs=3",
        "hydra.sweeper.params.seed=interval(0,1)",  # Hydra's own settings are never searched
    )
    dims = {d.name: d for d in found.dimensions}
    assert (dims["optimizer.learning_rate"].kind, dims["optimizer.learning_rate"].log) == ("float", True)
    assert (dims["model.width"].kind, dims["model.width"].low, dims["model.width"].high) == ("int", 8, 64)
    assert (dims["model.depth"].low, dims["model.depth"].high, dims["model.depth"].step) == (1, 3, 1)
    assert dims["gradient.clip_norm"].choices == (None, 1.0)
    assert dims["data.synthetic_shape"].choices == ("[8,8]", "[4,4]")  # stored as the override text
    assert found.fixed == ("train.epochs=3", "hydra.sweeper.params.seed=interval(0,1)")
    params = {
        "optimizer.learning_rate": 0.00123,
        "model.width": 17,
        "model.depth": 2,
        "model": "cnn",
        "gradient.clip_global_norm": 5.0,
        "gradient.clip_norm": None,
        "data.synthetic_shape": "[4,4]",
    }
    assert found.overrides(params)[2:] == [
        "optimizer.learning_rate=0.00123", "model.width=17", "model.depth=2",
        "gradient.clip_global_norm=5.0", "gradient.clip_norm=null", "model=cnn", "data.synthetic_shape=[4,4]",
    ]  # fmt: skip
    # Each override parses back to the sampled value.
    parsed = OverridesParser.create().parse_overrides(found.overrides(params))
    assert [o.value() for o in parsed][2:7] == [0.00123, 17, 2, 5.0, None]
    assert found.examples()[2:4] == ["optimizer.learning_rate=0.0001", "model.width=8"]


def test_optuna_distributions_follow_the_dimensions():
    found = space("optimizer.learning_rate=tag(log,interval(1e-4,3e-2))", "model.width=range(8,65,8)", "seed=0,1")
    made = search.distributions(found)
    assert made["optimizer.learning_rate"].log and made["optimizer.learning_rate"].low == 1e-4
    assert (made["model.width"].low, made["model.width"].high, made["model.width"].step) == (8, 64, 8)
    assert made["seed"].choices == (0, 1)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("optimizer.learning_rate=interval(-1,0.1)", "optimizer.learning_rate: lower bound -1.0: must be > 0"),
        ("optimizer.learning_rate=interval(0.1,0.1)", "optimizer.learning_rate: interval(0.1, 0.1) is empty"),
        ("optimizer.learning_rate=interval(0.1,0.01)", "optimizer.learning_rate: interval(0.1, 0.01) is reversed"),
        ("optimizer.learning_rate=tag(log,interval(0,1))", "a log interval needs a lower bound > 0"),
        ("optimizer.learning_rate=tag(lg,interval(1e-4,1e-2))", "optimizer.learning_rate: unknown tag 'lg'"),
        ("model.dropout=interval(0,1)", "model.dropout: upper bound 1.0: must be in [0, 1)"),
        ("model.width=interval(8.5,64)", "model.width: lower bound 8.5: expected int"),
        ("model.width=choice(8,abc)", "model.width: choice 'abc': expected int"),
        ("gradient.clip_global_norm=choice(0.5,abc)", "gradient.clip_global_norm: choice 'abc': expected float"),
        ("optimizer.name=choice(adam,rmsprop)", "optimizer.name: choice 'rmsprop': expected one of adam, sgd"),
        ("data.synthetic_shape=choice([8,0])", "data.synthetic_shape: choice [8, 0]: must be a non-empty list"),
        ("model=choice(mlp,resnet)", "model: choice 'resnet': no such option (available: cnn, mlp)"),
        ("experiment=interval(0,1)", "experiment: interval(0.0, 1.0): an interval needs a number"),
        ("model.width=range(10,1)", "model.width: range(10, 1, 1) is empty"),
        ("seed=glob(*)", "seed: unknown distribution glob(...)"),
        ("~seed=1,2", "~seed: a deletion cannot be searched"),
    ],
)
def test_a_bad_dimension_is_one_line_naming_the_key(line, expected):
    with pytest.raises(ConfigError) as caught:
        space(line)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_unknown_distribution_and_a_zero_budget_are_refused():
    with pytest.raises(ConfigError, match=r"^optimizer.learning_rate: unknown distribution normal\(...\)"):
        parse(["optimizer.learning_rate=normal(0,1)"])
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.n_trials: must be >= 1, got 0$"):
        check_search_space([], n_trials=0)


def test_the_objective_follows_the_one_higher_is_better_rule():
    assert search.objective("val_accuracy") == ("val_accuracy", "maximize")
    assert search.objective("digit_confidence") == ("digit_confidence", "maximize")
    assert search.objective("val_loss") == ("val_loss", "minimize")
    assert search.objective("val_loss", "maximize") == ("val_loss", "maximize")
    assert search.objective("val_mine", declared={"mine": True}) == ("val_mine", "maximize")  # the metric's own say
    with pytest.raises(ConfigError, match="^hydra.sweeper.direction: must be maximize, minimize or null"):
        search.objective("val_loss", "down")


def test_a_search_not_told_its_metric_takes_the_one_the_runs_name():
    gan = {"status": "completed", "main_metric": "digit_confidence", "directions": {"d_loss": "min"}}
    declared = {"main_metric": "val_mine", "directions": {"val_mine": "max"}}
    assert search.reported_objective([{"status": "failed"}, gan]) == ("digit_confidence", "maximize")
    assert search.reported_objective([declared]) == ("val_mine", "maximize")  # by its recorded direction
    assert search.reported_objective([ValueError("boom"), {"status": "failed"}]) is None


@pytest.mark.parametrize(
    ("summary", "state", "value"),
    [
        ({"status": "completed", "metrics": {"val_accuracy": 0.9}}, "complete", 0.9),
        ({"status": "stopped_early", "metrics": {"val_accuracy": 0.8}}, "complete", 0.8),
        ({"status": "completed", "metrics": {}, "digit_confidence": 0.7}, "complete", 0.7),  # a GAN's score
        ({"status": "pruned", "reason": "worse"}, "pruned", None),
        ({"status": "completed", "metrics": {"val_accuracy": "nan"}}, "fail", None),
        ({"status": "completed", "metrics": {"val_loss": 0.1}}, "fail", None),
        ({"status": "failed", "error": "data.path: no such file"}, "fail", None),
        ({"status": "stopped_nonfinite"}, "fail", None),
        (ValueError("boom"), "fail", None),
        (0.5, "fail", None),  # a bare number is not a summary
    ],
)
def test_a_summary_becomes_a_trial_outcome(summary, state, value):
    metric = "digit_confidence" if isinstance(summary, dict) and "digit_confidence" in summary else "val_accuracy"
    found = search.outcome(summary, metric)
    assert (found.state, found.value) == (state, value)


def test_the_trial_reference_survives_hydra_quoting():
    from omegaconf import OmegaConf

    storage = "sqlite:////tmp/it's a dir\\x/optuna.db"
    parsed = OverridesParser.create().parse_overrides(search_job.job_overrides(storage, "study ${x}"))
    env = OmegaConf.create({o.key_or_group.split(".")[-1]: o.value() for o in parsed} | {"hydra": {"job": {"num": 7}}})
    found = search_job.current_trial(
        {key: str(env[key]) for key in (search_job.ENV_STORAGE, search_job.ENV_STUDY, search_job.ENV_TRIAL)}
    )
    assert found == search_job.TrialRef(storage, "study ${x}", 7)
    assert search_job.current_trial({}) is None
