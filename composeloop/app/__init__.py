"""The application: a validated config turned into a finished run, for any composition.

This package owns the command line, the runner (run directory, resume, loop services,
summary), experiments and modes, sweeps and search, and tracking. It is the only layer
that knows both the configs (`composeloop.config`) and the engine (`composeloop.engine`),
and the public entry point for a user's own project.
"""
