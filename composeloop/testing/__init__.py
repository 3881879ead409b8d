"""composeloop.testing: Hypothesis strategies and invariant checkers for your own steps.

Each checker takes your stage, metric or step (or a function building it), runs it the way
the engine does, and raises `InvariantViolation` (an `AssertionError`) whose message names
the invariant, the variable or field, and the size of the violation:

- `check_global_norm_clip` (1), `check_aggregate_linearity` (2), `check_skip_nonfinite` (5);
- `check_replica_invariance` (3, 9), `check_accumulation` (4), `check_phase_isolation` (6);
- `check_ema_replica_invariance` (3, 9 for `ema`), `check_masked_untouched` (`masked`,
  `partition`, weight decay's ``exclude``);
- `check_batch_split_invariance` (7), `check_metric_range` and `check_reset_gives_empty` (8);
- `check_exact_resume` (10).

Compiled programs are cached per step builder (or step) for the process, so a property
traces once however many examples it draws (`cached_programs()` lists them, to assert it).
This module needs Hypothesis (the ``testing`` extra); ``import composeloop`` does not import it.
"""

try:
    import hypothesis  # noqa: F401
except ImportError as missing:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "composeloop.testing needs Hypothesis, which is not installed: pip install 'composeloop[testing]' "
        "(or pip install hypothesis)"
    ) from missing

from composeloop.testing import strategies
from composeloop.testing.gradients import check_aggregate_linearity, check_global_norm_clip, check_skip_nonfinite
from composeloop.testing.harness import (
    StepRunner,
    cached_programs,
    configure_cpu_replicas,
    context_for,
    mirrored_strategy,
    split_batch,
)
from composeloop.testing.masks import check_masked_untouched
from composeloop.testing.metrics import check_batch_split_invariance, check_metric_range, check_reset_gives_empty
from composeloop.testing.profiles import load_profile, register_profiles
from composeloop.testing.resume import check_exact_resume
from composeloop.testing.steps import (
    check_accumulation,
    check_ema_replica_invariance,
    check_phase_isolation,
    check_replica_invariance,
)
from composeloop.testing.violations import InvariantViolation

__all__ = [
    "InvariantViolation",
    "StepRunner",
    "cached_programs",
    "check_accumulation",
    "check_aggregate_linearity",
    "check_batch_split_invariance",
    "check_ema_replica_invariance",
    "check_exact_resume",
    "check_global_norm_clip",
    "check_masked_untouched",
    "check_metric_range",
    "check_phase_isolation",
    "check_replica_invariance",
    "check_reset_gives_empty",
    "check_skip_nonfinite",
    "configure_cpu_replicas",
    "context_for",
    "load_profile",
    "mirrored_strategy",
    "register_profiles",
    "split_batch",
    "strategies",
]
