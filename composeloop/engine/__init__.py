"""The engine: a `Step` made into compiled programs, and the loop that runs them."""

from composeloop.engine.compile import Program, RetraceWarning, compile_step
from composeloop.engine.loop import fit, run_epoch

__all__ = ["Program", "RetraceWarning", "compile_step", "fit", "run_epoch"]
