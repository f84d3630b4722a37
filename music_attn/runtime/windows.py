"""Reading a sequence longer than the model's window: overlapping spans, and the NLL of every token.

The rule, used by training's validation, evaluation, the inspector and generation alike:
a sequence of ``n`` positions is read in windows of at most ``size`` tokens whose starts
advance by ``stride`` (default ``size // 2``). Every position's output (its attention row,
its next-token logits) is taken from exactly one window: the first that contains it. So
a position in the first window sees every token before it, and any later position sees at
least ``size - stride`` tokens of context.

When the whole sequence is known (:func:`spans`), the last window is moved back to end at
the last position, so that it is full; when the sequence grows one token at a time
(generation, :func:`window_start`), the windows stay on the grid of starts ``0, stride,
2 stride, ...``. The two agree on every position before the last window.

A model with a ``period`` (:class:`music_attn.core.model.ModelConfig`) counts positions
modulo that period from the start of its input, so its windows must start at multiples
of it: ``align`` (from :func:`alignment`) rounds the moved-back last window up to such a
start (that window may then be shorter than ``size``), and the stride must be a multiple.

Legend: T positions, V vocab, N rows of a batch.
"""

from typing import NamedTuple

import numpy as np

from music_attn.core.ops import log_softmax

__all__ = ["Span", "spans", "window_start", "alignment", "span_batches", "log_softmax", "token_nll",
           "sequence_nll", "corpus_nll"]


class Span(NamedTuple):
    """One window: the model reads positions ``start:stop``; outputs ``keep:stop`` come from it."""
    start: int
    stop: int
    keep: int


def alignment(model):
    """The multiple every window start of ``model`` must be: its ``config.period``, or 1."""
    config = getattr(model, "config", None)
    return max(1, int(getattr(config, "period", 0) or 0))


def _stride(size, stride, align=1):
    size, align = int(size), int(align)
    if stride is None:
        stride = max(align, size // 2 // align * align)
    stride = int(stride)
    if size < 1 or not 1 <= stride <= size:
        raise ValueError(f"need 1 <= stride <= size, got size={size}, stride={stride}")
    if align < 1 or stride % align:
        raise ValueError(f"the stride ({stride}) must be a multiple of the model's period ({align})")
    return size, stride


def spans(n, size, stride=None, *, align=1):
    """The windows covering positions ``0..n-1`` (see the module docstring); a list of Span.

    Every start is a multiple of ``align``, and of the stride but for the last window.
    """
    size, stride = _stride(size, stride, align)
    last = -(-max(n - size, 0) // align) * align        # the last full window, moved up to the grid
    out, done, start = [], 0, 0
    while done < n:
        start = max(0, min(start, last))
        stop = min(start + size, n)
        out.append(Span(start, stop, done))
        done, start = stop, start + stride
    return out


def window_start(position, size, stride=None, *, align=1):
    """Start of the window a growing sequence reads ``position``'s output from.

    The first window of the grid ``0, stride, 2 stride, ...`` that contains ``position``:
    generation restarts its cache there when the window is full, and that position
    then sees ``position - start >= size - stride`` tokens before it.
    """
    size, stride = _stride(size, stride, align)
    return max(0, -(-(position + 1 - size) // stride)) * stride


def token_nll(logits, targets):
    """``-log softmax(logits)[target]`` per row: (T, V), (T,) -> (T,) float64."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    return -log_softmax(logits)[np.arange(len(targets)), targets]


def _bounded(sequences, max_tokens):
    """The first sequences whose targets reach ``max_tokens`` (all of them when None)."""
    sequences = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
    if max_tokens is None:
        return sequences
    kept, total = [], 0
    for seq in sequences:
        if total >= max_tokens:
            break
        kept.append(seq)
        total += max(seq.size - 1, 0)
    return kept


def span_batches(sequences, window, *, stride=None, batch_size=16, max_tokens=None, align=1):
    """The spans of every sequence as model inputs, ``batch_size`` rows at a time.

    Yields (ids, targets, rows): ids (N, W) int64, each row one :class:`Span`'s tokens,
    padded with 0 at the end (causal models never see the padding from real positions);
    targets (N, W) int64, the next token at the positions the span keeps, -1 elsewhere;
    rows the (sequence index, Span) of each row. Any backend can score them.
    ``max_tokens`` keeps only the first sequences whose targets reach that many; ``align``
    is :func:`alignment` of the model that will read them.
    """
    sequences = _bounded(sequences, max_tokens)
    rows = [(i, s) for i, seq in enumerate(sequences)
            for s in spans(seq.size - 1, window, stride, align=align)]
    for b in range(0, len(rows), batch_size):
        part = rows[b:b + batch_size]
        width = max(s.stop - s.start for _, s in part)
        ids = np.zeros((len(part), width), dtype=np.int64)                 # (N, W)
        targets = np.full((len(part), width), -1, dtype=np.int64)          # (N, W)
        for r, (i, s) in enumerate(part):
            ids[r, :s.stop - s.start] = sequences[i][s.start:s.stop]
            targets[r, s.keep - s.start:s.stop - s.start] = sequences[i][s.keep + 1:s.stop + 1]
        yield ids, targets, part


def _nll_per_sequence(model, sequences, window, stride, batch_size, max_tokens=None):
    """NLL (nats) of every token after the first of each sequence: list of (T_i - 1,) arrays."""
    window = model.config.max_len if window is None else int(window)
    sequences = _bounded(sequences, max_tokens)
    out = [np.empty(max(s.size - 1, 0)) for s in sequences]
    for ids, targets, rows in span_batches(sequences, window, stride=stride, batch_size=batch_size,
                                           align=alignment(model)):
        logits = model.forward(ids)                                       # (N, W, V)
        for r, (i, s) in enumerate(rows):
            kept = slice(s.keep - s.start, s.stop - s.start)
            out[i][s.keep:s.stop] = token_nll(logits[r, kept], targets[r, kept])
    return out


def sequence_nll(model, ids, *, window=None, stride=None):
    """NLL (nats) of every token after the first: ids (T,) -> (T-1,), each read once by :func:`spans`.

    Target ``t`` is predicted from the logits at position ``t - 1``, taken from the window
    that :func:`spans` assigns to that position.
    """
    return _nll_per_sequence(model, [ids], window, stride, 1)[0]


def corpus_nll(model, sequences, *, window=None, stride=None, batch_size=16, max_tokens=None):
    """Mean NLL (nats/token) of every token after the first of each sequence; (nll, tokens).

    The windows of all sequences are run ``batch_size`` at a time. ``max_tokens`` stops
    adding sequences once that many tokens are scored (a bounded validation).
    """
    nll = _nll_per_sequence(model, sequences, window, stride, batch_size, max_tokens)
    flat = np.concatenate(nll) if nll else np.zeros(0)
    return (float(flat.mean()) if flat.size else float("nan")), int(flat.size)
