"""Small numerical rules every other module shares: the float dtype to compute in, softmax, log-softmax.

Each is written once here; attention, the model's loss, evaluation and sampling call them.
"""

import numpy as np

__all__ = ["float_dtype", "softmax_", "log_softmax"]


def float_dtype(*arrays):
    """Floating dtype to compute in: floats keep theirs, integers/bools become float64."""
    dtype = np.result_type(*arrays)
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def softmax_(s, axis=-1):
    """Stable softmax of the float array ``s`` in place along ``axis``; returns ``s``.

    The row maximum is subtracted first; a row that is all ``-inf`` gives zeros (not NaN);
    a NaN in a row makes the row NaN.
    """
    if s.shape[axis] == 0:
        return s
    m = s.max(axis=axis, keepdims=True)
    if np.isfinite(m).all():             # the usual case: every row has a finite maximum
        s -= m
        np.exp(s, out=s)
        s /= s.sum(axis=axis, keepdims=True)
        return s
    m[np.isneginf(m)] = 0.0              # a row with nothing allowed: exp(-inf - 0) = 0
    s -= m
    np.exp(s, out=s)
    total = s.sum(axis=axis, keepdims=True)
    np.divide(s, total, out=s, where=total != 0)   # all -inf rows stay 0; NaN stays NaN
    return s


def log_softmax(logits, axis=-1):
    """``log softmax(logits)``, stable: (..., V) -> (..., V)."""
    logits = np.asarray(logits)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
