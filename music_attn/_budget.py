"""The memory one call may plan to use, and a clear refusal past it.

Work whose size the input decides (the attention kept for every token of a
piece, the samples generated at once) is checked against one budget before it
starts: ``MUSIC_ATTN_MEMORY_BUDGET`` in the environment, in bytes or with a
suffix K, M or G (``512M``, ``2G``); default :data:`DEFAULT_BUDGET` (1 GiB),
which keeps a command inside a 2 GiB container with room for the model and
Python itself.  Past the budget, work is either split into batches that fit
(sampling) or refused with :class:`~music_attn.errors.MusicAttnError` saying
how much it would need and how to ask for less (inspecting).
"""

import os
import re

from music_attn.errors import MusicAttnError

__all__ = ["DEFAULT_BUDGET", "ENV", "memory_budget", "check_memory", "format_bytes", "keep_freed_memory"]

DEFAULT_BUDGET = 2**30
ENV = "MUSIC_ATTN_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def memory_budget():
    """Bytes a call may plan to use: ``MUSIC_ATTN_MEMORY_BUDGET``, else DEFAULT_BUDGET."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text, flags=re.I)
    if not match or float(match.group(1)) <= 0:
        raise MusicAttnError(f"{ENV}={text[:40]!r} is not a size in bytes (e.g. 512M or 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_bytes(n):
    """'1.5 GiB', '300 MiB'."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_memory(needed, what, hint):
    """MusicAttnError when ``needed`` bytes exceed the budget: '<what> needs about X, more than ...; <hint>'."""
    budget = memory_budget()
    if needed > budget:
        raise MusicAttnError(f"{what} needs about {format_bytes(needed)}, more than the memory budget of "
                             f"{format_bytes(budget)} ({ENV}); {hint}")


def keep_freed_memory(block=64 * 2**20, keep=256 * 2**20):
    """Let this process reuse the memory it frees instead of handing it back to the system.

    A long inspect allocates and frees arrays of tens of MB per model call; glibc maps
    each one over 32 MB afresh (``mmap``) and unmaps it on free, so every call pays its
    page faults again (a quarter of a long piece's run, as system time).  Blocks up to
    ``block`` bytes then come from the heap (``M_MMAP_THRESHOLD``), and up to ``keep``
    freed bytes stay there for the next call (``M_TRIM_THRESHOLD``).  Only the command
    line calls this: it owns its process.  Returns True when the setting took (glibc).
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, int(block)) and mallopt(M_TRIM_THRESHOLD, int(keep)))
