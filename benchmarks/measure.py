"""Measurements that are not training steps: resident memory and the machine's matmul peak.

Memory is read from Linux's /proc: `peak_rss_mb` is the process's VmHWM (peak resident set
size), which `reset_peak()` sets back to the current RSS by writing "5" to
/proc/self/clear_refs, so that a peak can be taken over one variant's runs. Where that is
not possible, the whole-process `resource.getrusage` maxrss stands in.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

import tensorflow as tf


def current_rss_mb() -> float:
    """The process's resident memory now, in MiB."""
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> bool:
    """Sets the peak RSS (VmHWM) back to the current RSS; False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """The peak RSS since the last `reset_peak()` (VmHWM), in MiB; getrusage maxrss if
    /proc/self/status has no VmHWM."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_MATMULS: dict[int, tuple] = {}


def peak_matmul_gflops(size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Dense float32 ``size x size`` matmul throughput: median of `repeats` timed calls of
    one compiled matmul (after a warm-up), each counted as 2*size^3 FLOPs."""
    if size not in _MATMULS:
        a = tf.random.stateless_normal((size, size), seed=(1, 2))
        b = tf.random.stateless_normal((size, size), seed=(3, 4))
        _MATMULS[size] = (tf.function(tf.linalg.matmul), a, b)
    matmul, a, b = _MATMULS[size]
    matmul(a, b).numpy()  # warm-up (and the one trace, on the first call)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b).numpy()
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {
        "matmul_size": size,
        "matmul_ms": median * 1e3,
        "peak_gflops": 2.0 * size**3 / median / 1e9,
        "best_gflops": 2.0 * size**3 / min(seconds) / 1e9,
    }
