"""Every example runs with --smoke, as a user would run it.

Each run is a separate process, mostly spent importing TensorFlow and tracing, so they run
two at a time (this suite's target machine has two cores) and each test reads its result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLES = sorted(p for p in (Path(__file__).parent.parent / "examples").glob("*.py") if not p.name.startswith("test_"))


def smoke(script: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.run(
            [sys.executable, str(script), "--smoke"], cwd=scratch, env=env, capture_output=True, text=True, timeout=600
        )


@pytest.fixture(scope="module")
def smoke_runs() -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip((e.name for e in EXAMPLES), pool.map(smoke, EXAMPLES), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", [e.name for e in EXAMPLES])
def test_example_runs_with_smoke(name, smoke_runs):
    done = smoke_runs[name]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
