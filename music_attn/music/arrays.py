"""Small numpy helpers shared by the MIDI reader and the tokenizers."""

import numpy as np

__all__ = ["run_starts"]


def run_starts(x):
    """bool (n,): True where ``x`` differs from the element before, and at 0.

    ``x`` is any 1-D array; ``run_starts([3, 3, 5, 5, 3])`` is
    ``[True, False, True, False, True]``.
    """
    x = np.asarray(x)
    out = np.ones(len(x), dtype=bool)
    out[1:] = x[1:] != x[:-1]
    return out
