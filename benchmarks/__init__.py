"""Benchmarks for composeloop against hand-written loops and `model.fit`: step time, a GAN,
whole epochs through the CLI's input path, scaling with batch size and phases, start-up,
and the elements all-reduced per step.

Run from the repository root:

    python -m benchmarks.steps            # the full suite (about 15 minutes on 2 idle cores)
    python -m benchmarks.steps --quick    # smaller, no whole-process timing: under 2 minutes idle
    python -m benchmarks.steps --json results.json

See `benchmarks/README.md` for what is measured, the targets, and a real run.
"""
