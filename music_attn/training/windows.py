"""Reading a sequence longer than the model's window: overlapping spans, and the NLL of every token.

The rule, used by training's validation, evaluation, the inspector and generation alike:
a sequence of ``n`` positions is read in windows of at most ``size`` tokens whose starts
advance by ``stride`` (default ``size // 2``). Every position's output (its attention row,
its next-token logits) is taken from exactly one window: the first that contains it. So
a position in the first window sees every token before it, and any later position sees at
least ``size - stride`` tokens of context.

Legend: T positions, V vocab.
"""

from typing import NamedTuple

import numpy as np

__all__ = ["Span", "spans", "log_softmax", "token_nll", "sequence_nll"]


class Span(NamedTuple):
    """One window: the model reads positions ``start:stop``; outputs ``keep:stop`` come from it."""
    start: int
    stop: int
    keep: int


def spans(n, size, stride=None):
    """The windows covering positions ``0..n-1`` (see the module docstring); a list of Span."""
    size = int(size)
    stride = max(1, size // 2) if stride is None else int(stride)
    if size < 1 or not 1 <= stride <= size:
        raise ValueError(f"need 1 <= stride <= size, got size={size}, stride={stride}")
    out, done, start = [], 0, 0
    while done < n:
        start = max(0, min(start, n - size))
        stop = min(start + size, n)
        out.append(Span(start, stop, done))
        done, start = stop, start + stride
    return out


def log_softmax(logits, axis=-1):
    """``log softmax(logits)``, stable: (..., V) -> (..., V)."""
    logits = np.asarray(logits)
    top = logits.max(axis=axis, keepdims=True)
    shifted = logits - top
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def token_nll(logits, targets):
    """``-log softmax(logits)[target]`` per row: (T, V), (T,) -> (T,) float64."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    return -log_softmax(logits)[np.arange(len(targets)), targets]


def sequence_nll(model, ids, *, window=None, stride=None):
    """NLL (nats) of every token after the first: ids (T,) -> (T-1,), each read once by :func:`spans`.

    Target ``t`` is predicted from the logits at position ``t - 1``, taken from the window
    that :func:`spans` assigns to that position.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    window = model.config.max_len if window is None else int(window)
    nll = np.empty(max(ids.size - 1, 0))
    for s in spans(ids.size - 1, window, stride):
        logits = model.forward(ids[None, s.start:s.stop])[0]                 # (W, V)
        nll[s.keep:s.stop] = token_nll(logits[s.keep - s.start:], ids[s.keep + 1:s.stop + 1])
    return nll
