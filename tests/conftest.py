"""Shared test settings: Hypothesis profiles, quiet TensorFlow, tiny data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Two logical CPUs, so that MirroredStrategy runs with 2 replicas on a CPU-only machine. This
# must happen before TensorFlow touches a device, hence here, before any test module loads.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

# ci: derandomized and bounded, so CI is deterministic and fast; dev: the default for
# people; thorough: many more examples, for a change to the invariants' code.
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("COMPOSELOOP_HYPOTHESIS", "ci" if os.environ.get("CI") else "dev"))
