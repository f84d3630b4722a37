"""Threads for numpy work: named thread pools and single-threaded BLAS while they run.

numpy releases the GIL inside matrix products and ufuncs, so splitting work
over one thread per core uses every core.  BLAS must then run one thread per
call: its own worker threads spinning beside ours slow everything down several
times on a shared machine.  ``single_threaded_blas`` limits BLAS with
threadpoolctl; it is reference-counted, so overlapping users from several
threads restore the original setting only when the last one leaves.

Each caller keeps its own pool (``thread_pool(name, workers)``): a task running
in one pool may wait on tasks of another without risk of deadlock.
"""

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

__all__ = ["cpu_count", "thread_pool", "single_threaded_blas"]

_POOLS = {}
_LOCK = threading.Lock()
_BLAS = {"controller": None, "users": 0, "limiter": None}


def cpu_count():
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def thread_pool(name, workers):
    """The process-wide pool called ``name`` with ``workers`` threads (created on first use)."""
    key = (name, int(workers))
    with _LOCK:
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(int(workers), thread_name_prefix=f"music_attn_{name}")
        return _POOLS[key]


@contextlib.contextmanager
def single_threaded_blas():
    """Run the body with BLAS limited to one thread per call."""
    with _LOCK:
        if _BLAS["controller"] is None:
            _BLAS["controller"] = ThreadpoolController().select(user_api="blas")
        if _BLAS["users"] == 0:
            _BLAS["limiter"] = _BLAS["controller"].limit(limits=1)
        _BLAS["users"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0:
                _BLAS["limiter"].restore_original_limits()
