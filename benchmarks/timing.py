"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeat: int, sync: Callable[[], object] = lambda: None) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls after one warm-up call; ``sync`` waits for
    asynchronous device work (``torch.cuda.synchronize``) before each clock read."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
