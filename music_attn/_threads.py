"""Threads for numpy work: named thread pools and single-threaded BLAS while they run.

numpy releases the GIL inside matrix products and ufuncs, so splitting work
over one thread per core uses every core.  BLAS must then run one thread per
call: its own worker threads spinning beside ours slow everything down several
times on a shared machine.  ``single_threaded_blas`` limits BLAS with
threadpoolctl; it is reference-counted, so overlapping users from several
threads restore the original setting only when the last one leaves.

Each caller keeps its own pool (``thread_pool(name, workers)``): a task running
in one pool may wait on tasks of another without risk of deadlock.

Work that is not split over our own threads sizes BLAS to itself
(``sized_blas(flops)``): a product too small to share (``SPIN_FLOPS``) runs on
one thread, and so does any product while the other cores are busy
(``os.getloadavg``), since BLAS workers waiting for a core spin instead of
sleeping.  Our own threads never spin (they block on the GIL or a queue), so a
pool keeps one thread per core even on a busy machine: it then shares the cores
fairly with the other processes instead of waiting on its own spinning workers.
"""

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

__all__ = ["cpu_count", "thread_pool", "single_threaded_blas", "blas_threads", "sized_blas", "SPIN_FLOPS"]

# A product below this many FLOP runs on one BLAS thread: waking workers costs more than
# it saves (a 256-row product of the shipped model's layers is ~60 MFLOP).
SPIN_FLOPS = 200e6

_POOLS = {}
_LOCK = threading.Lock()
_BLAS = {"controller": None, "users": 0, "limiter": None, "modules": 0}


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
        if _BLAS["controller"] is None or _BLAS["modules"] != len(sys.modules):
            # an import since the last look may have loaded another BLAS (torch brings its own)
            _BLAS["controller"] = ThreadpoolController().select(user_api="blas")
            _BLAS["modules"] = len(sys.modules)
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


def free_cores():
    """Cores not busy with other work: ``cpu_count()`` minus the 1-minute load average
    (counting this process as one of the running tasks), at least 1."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cpu_count()
    return max(1, min(cpu_count(), int(cpu_count() - load + 1 + 0.5)))


def blas_threads(flops=None):
    """BLAS threads a product of ``flops`` FLOP deserves now: 1 below ``SPIN_FLOPS``,
    else the free cores (`free_cores`).  ``flops=None``: judged by the load alone."""
    if flops is not None and flops < SPIN_FLOPS:
        return 1
    return free_cores()


def sized_blas(flops=None):
    """Context manager: BLAS single-threaded for the body when `blas_threads` says 1,
    else left as it is (one thread per core)."""
    return single_threaded_blas() if blas_threads(flops) == 1 else contextlib.nullcontext()
