"""Shared test settings: Hypothesis profiles, quiet TensorFlow, tiny data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from composeloop.testing import configure_cpu_replicas, load_profile  # noqa: E402

# Two logical CPUs, so that MirroredStrategy runs with 2 replicas on a CPU-only machine. This
# must happen before TensorFlow touches a device, hence here, before any test module loads.
configure_cpu_replicas(2)

# ci: derandomized and bounded, so CI is deterministic and fast; dev: the default for
# people; thorough: many more examples, for a change to the invariants' code.
load_profile()
