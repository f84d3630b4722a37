"""keep_freed_memory: the process keeps the memory it frees (for the next model call) instead of
handing it back to the system at once."""

import subprocess
import sys

import pytest

CHILD = """
import os, sys
import numpy as np
from music_attn._budget import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base = resident()
arrays = [np.ones(40 * 2**20 // 8) for _ in range(5)]      # 5 x 40 MB, written through
held = resident() - base
del arrays
print(took, held, resident() - base)
"""


def _run(mode):
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    took, held, after = done.stdout.split()
    return took, int(held), int(after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc")
def test_a_freed_array_goes_back_to_the_system_unless_kept():
    _, held, after = _run("plain")
    assert held > 190 * 2**20 and after < 20 * 2**20          # handed back on free
    took, held, after = _run("keep")
    assert took == "True" and held > 190 * 2**20 and after > 190 * 2**20   # kept for the next call
