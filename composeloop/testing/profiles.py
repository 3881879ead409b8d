"""Hypothesis settings profiles for step properties, chosen by an environment variable.

``ci``: derandomized (the same examples every run), no deadline (tracing a step takes
seconds), a bounded number of examples; ``dev``: random, a few more; ``thorough``: many, for
a change to the invariants' code. `load_profile` reads ``COMPOSELOOP_HYPOTHESIS``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

ENVIRONMENT_VARIABLE = "COMPOSELOOP_HYPOTHESIS"
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]


def register_profiles() -> None:
    """Registers the ``ci``, ``dev`` and ``thorough`` profiles with Hypothesis."""
    settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, suppress_health_check=_SLOW_OK)
    settings.register_profile("dev", deadline=None, max_examples=50, suppress_health_check=_SLOW_OK)
    settings.register_profile("thorough", deadline=None, max_examples=500, suppress_health_check=_SLOW_OK)


def load_profile(default: str | None = None) -> str:
    """Registers the profiles and loads the one named by ``$COMPOSELOOP_HYPOTHESIS``
    (else `default`, else ``ci`` when ``$CI`` is set and ``dev`` otherwise); returns its name.

    Example:
      >>> name = load_profile()  # in conftest.py; COMPOSELOOP_HYPOTHESIS=ci|dev|thorough picks one
      >>> name in ("ci", "dev", "thorough"), settings.default.deadline
      (True, None)
    """
    register_profiles()
    name = os.environ.get(ENVIRONMENT_VARIABLE) or default or ("ci" if os.environ.get("CI") else "dev")
    settings.load_profile(name)
    return name
