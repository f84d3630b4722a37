"""Wall-clock timing shared by the benchmarks."""

import time

__all__ = ["best_of"]


def best_of(fn, repeats, settle=0.2):
    """Smallest wall time of ``repeats`` calls of ``fn`` (seconds), after a pause of ``settle``.

    BLAS and OpenMP worker threads spin for a while after their last call; the
    pause lets the previous contender's threads go idle so they do not steal the
    cores from this one.
    """
    time.sleep(settle)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
