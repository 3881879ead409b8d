"""Benchmarks for composeloop: training-step speed against hand-written loops and `model.fit`.

Run from the repository root:

    python -m benchmarks.steps            # the full suite (about 4 minutes on 2 cores)
    python -m benchmarks.steps --quick    # about 1 minute
    python -m benchmarks.steps --json results.json

See `benchmarks/README.md` for what is measured, the targets, and a real run.
"""
