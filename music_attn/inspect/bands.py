"""Token attention as a band, summed up to notes: the arithmetic under :class:`AttentionMaps`.

Shape legend: L layers, H heads, T tokens, W band width (window), N notes.

A band ``band[h, t, j]`` is query ``t``'s weight on key ``t - back + j``;
:func:`band_to_notes` sums it over each key note's tokens and averages it over
each query note's tokens into CSR rows (:class:`NoteRows`), never N x N;
:func:`attention_rollout` multiplies attention through the layers (Abnar &
Zuidema 2020).  See :mod:`music_attn.inspect.inspector` for the rules.
"""

import contextlib
import gc
import math
from typing import NamedTuple

import numpy as np

from music_attn.errors import MusicAttnError

__all__ = ["NoteRows", "dense_to_band", "band_to_notes", "attention_rollout"]

# The dense views (`note_attention`, `token_attention`) refuse to allocate more than this.
_MAX_DENSE_BYTES = 256 * 2**20
# Query tokens aggregated at once when a band is summed up to notes (bounds the temporaries).
_CHUNK_TOKENS = 2048
# Largest (rows x key notes) block a chunk sums densely before falling back to sorting.
_DENSE_BLOCK = 4_000_000
# Internal key labels: -1 structure token, -2 a note that is not shown (the context of a passage).
_STRUCTURE, _CONTEXT = -1, -2


class NoteRows(NamedTuple):
    """Note attention of one head in CSR form: query note ``i`` -> key notes.

    ``keys[indptr[i]:indptr[i + 1]]`` are the key notes of row ``i`` (increasing)
    and ``weights[...]`` their attention; a row sums to
    ``1 - structure_share[i] - context_share[i]``.
    """
    indptr: np.ndarray      # (N + 1,) int64
    keys: np.ndarray        # (nnz,) int32
    weights: np.ndarray     # (nnz,) float32


class _Head(NamedTuple):
    rows: NoteRows
    structure: np.ndarray   # (N,) float64
    context: np.ndarray     # (N,) float64


def _check_dense(nbytes, what, instead):
    if nbytes > _MAX_DENSE_BYTES:
        raise MusicAttnError(f"{what} would take {nbytes / 2**20:.0f} MB dense; use {instead} for long pieces")


def _row_ids(indptr):
    """Row index of every CSR entry: (nnz,)."""
    return np.repeat(np.arange(indptr.size - 1), np.diff(indptr))


def _split(values, indptr):
    return [values[a:b] for a, b in zip(indptr[:-1].tolist(), indptr[1:].tolist())]


def _split_rows(values, indptr):
    """CSR ``values`` (nnz,) as one Python list per row, like ``_split(values.tolist(), indptr)``.

    Rows of at most a few entries (top-k rows) go through one padded (R, m) array and a
    single ``tolist``; only the rows shorter than m are cut afterwards.
    """
    values, indptr = np.asarray(values), np.asarray(indptr, dtype=np.int64)
    counts = np.diff(indptr)
    R = counts.size
    m = int(counts.max()) if R else 0
    if R == 0 or m == 0 or R * m > 2 * values.size + R:            # long or ragged rows: slice them
        return _split(values.tolist(), indptr)
    pos = np.arange(values.size) - np.repeat(indptr[:-1], counts)
    padded = np.zeros((R, m), dtype=values.dtype)
    padded[np.repeat(np.arange(R), counts), pos] = values
    out = padded.tolist()
    for i in np.flatnonzero(counts < m).tolist():
        out[i] = out[i][:counts[i]]
    return out


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection while a large output (millions of lists, dicts and numbers, none
    of them in a cycle) is built and serialised: its passes would walk all of them again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _split_floats(values, indptr, decimals):
    """CSR ``values`` rounded to ``decimals`` (NaN and inf as None), one Python list per row."""
    values = np.round(np.asarray(values, np.float64), decimals)
    rows = _split_rows(values, indptr)
    return rows if np.isfinite(values).all() else [[x if math.isfinite(x) else None for x in row] for row in rows]


def _top_k_entries(x, indptr, k):
    """The ``k`` first entries of every CSR row in the order ``np.argsort(row + x, kind="stable")``.

    That is ``order[rank < k]``, rank counted within rows: each row's entries by
    ``row + x`` (float64, as a caller sorting every entry would compute it), ties by
    position.  With x in [-0.25, 0.75) the rows stay apart and in order; then each
    row's k-th smallest key comes from a partition of the rows padded to their longest,
    the entries up to it are kept, and only those are sorted.  Rows with more than
    ``k`` of them (ties at the k-th key) are sorted whole; other x (or NaN), or rows of
    very different lengths, send every row through the full sort (the same result).
    """
    x, indptr = np.asarray(x), np.asarray(indptr, dtype=np.int64)
    counts = np.diff(indptr)
    R, E, k = counts.size, x.size, int(k)
    key = _row_ids(indptr) + x
    m = int(counts.max()) if R else 0
    if E == 0 or k <= 0 or k >= m or R * m > 4 * E + 4096 or not (x.min() >= -0.25 and x.max() < 0.75):
        return _top_k_sorted(key, indptr, k)                              # (NaN fails the test on x)
    padded = np.full((R, m), np.inf)
    padded[np.arange(m) < counts[:, None]] = key                          # row by row, as stored
    kth = np.partition(padded, k - 1, axis=1)[:, k - 1:k]                 # (R, 1) each row's k-th smallest
    at = np.flatnonzero(padded <= np.minimum(kth, np.finfo(np.float64).max))   # a short row: all of it
    row = at // m
    keep = indptr[row] + at % m                                           # by row, then position
    tied = np.bincount(row, minlength=R) > k                              # ties at the k-th key: sort those rows
    if tied.any():
        rows = np.flatnonzero(np.repeat(tied, counts))
        extra = rows[_top_k_sorted(key[rows], np.concatenate(([0], np.cumsum(counts[tied]))), k)]
        keep = np.sort(np.concatenate((keep[~tied[row]], extra)))
    return keep[np.argsort(key[keep], kind="stable")]


def _top_k_sorted(key, indptr, k):
    """`_top_k_entries` by sorting every entry."""
    order = np.argsort(key, kind="stable")
    rank = np.arange(order.size) - indptr[_row_ids(indptr)[order]]
    return order[rank < k]


def _earlier_entropy(rows, n_notes):
    """Mean over notes of the entropy of their renormalised attention to earlier notes."""
    r = _row_ids(rows.indptr)
    earlier = rows.keys < r
    r, w = r[earlier], rows.weights[earlier].astype(np.float64)
    mass = np.bincount(r, w, n_notes)                                  # (N,)
    p = w / np.maximum(mass[r], 1e-12)
    ent = np.bincount(r, -p * np.log(np.where(p > 0, p, 1.0)), n_notes)
    valid = mass > 1e-9
    return float((ent * valid).sum() / max(valid.sum(), 1))


# ------------------------------------------------------------ band -> notes
def _band_keys(T, W, back, before):
    """Query (T, 1), key (T, W) indices of a band, and which keys exist: keys may go ``before`` back."""
    t = np.arange(T)[:, None]
    s = t - back + np.arange(W)                                        # (T, W)
    return t, s, (s >= -before) & (s < T)


def dense_to_band(att):
    """Dense attention (L, H, T, T) -> ``(band, band_back)``: (L, H, T, W) with W = T, or 2T - 1 when
    any query attends to a later key (a bidirectional model)."""
    if att.ndim != 4 or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"token_attention must have shape (L, H, T, T), got {att.shape}")
    T = att.shape[-1]
    future = bool(np.triu(att.any(axis=(0, 1)), 1).any())
    back, W = T - 1, (2 * T - 1 if future else T)
    t, s, valid = _band_keys(T, max(W, 1), back, 0)
    band = np.where(valid, att[:, :, np.broadcast_to(t, s.shape), np.clip(s, 0, max(T - 1, 0))], 0)
    return band.astype(np.float32), back


def band_to_notes(band, back, key_labels, n_notes):
    """Bands (G, T, W) of G heads -> one `_Head` each (CSR rows, structure and context shares).

    The rule is in the module docstring.  ``key_labels`` (P + T,) labels the P
    context tokens before the first query and the T queries: note index, -1
    structure, -2 a note not shown.  Query tokens are summed note by note, in
    chunks of whole notes; the index work of a chunk is shared by the G heads,
    and temporaries stay O(chunk * W).  ``band`` may also be a list of such
    stacks of equal T and W (the heads and the rollout): their heads, in order,
    share the index work.
    """
    stacks = [band] if isinstance(band, np.ndarray) else list(band)
    heads = [(stack, i) for stack in stacks for i in range(stack.shape[0])]
    G, (_, T, W) = len(heads), stacks[0].shape
    P = key_labels.size - T
    qlab = key_labels[P:]
    counts = np.bincount(qlab[qlab >= 0], minlength=n_notes).astype(np.float64)
    order = np.flatnonzero(qlab >= 0)
    order = order[np.argsort(qlab[order], kind="stable")]              # query tokens, note by note
    structure, context = np.zeros((G, n_notes)), np.zeros((G, n_notes))
    parts = [[] for _ in range(G)]
    for a, b in _note_chunks(qlab[order]):
        q = order[a:b]
        s = q[:, None] + P - back + np.arange(W)                        # (n, W) into key_labels
        kl = np.where((s >= 0) & (s < key_labels.size), key_labels[np.clip(s, 0, key_labels.size - 1)], -3)
        r = np.broadcast_to(qlab[q][:, None], kl.shape)                 # (n, W) query note
        pairs = _Pairs(r[kl >= 0], kl[kl >= 0], n_notes)
        used, code = _compact(pairs.bins(r, kl, n_notes).ravel(), pairs.size + 2 * n_notes + 1)
        is_pair = used < pairs.size                                      # the rest: structure, context, outside
        pair_bins, other = used[is_pair], np.flatnonzero(~is_pair)
        shares = used[other] - pairs.size
        for g, (stack, i) in enumerate(heads):
            acc = np.bincount(code, stack[i, q].ravel(), used.size)      # (U,) one sum per bin in use
            extra = np.bincount(shares, acc[other], 2 * n_notes + 1)
            structure[g] += extra[:n_notes]
            context[g] += extra[n_notes:-1]
            parts[g].append(pairs.pick(acc[is_pair], counts, pair_bins))
    structure /= np.maximum(counts, 1)                                   # mean over the note's tokens
    context /= np.maximum(counts, 1)
    return [_Head(_csr(parts[g], n_notes), structure[g], context[g]) for g in range(G)]


def _note_chunks(sorted_labels):
    """[a, b) cuts of a sorted label array into chunks of about _CHUNK_TOKENS, never inside a note."""
    a, n = 0, sorted_labels.size
    while a < n:
        b = min(a + _CHUNK_TOKENS, n)
        b = int(np.searchsorted(sorted_labels, sorted_labels[b - 1], side="right"))
        yield a, b
        a = b


class _Pairs:
    """The distinct (query note, key note) pairs of a chunk, as bins of a `np.bincount`.

    Pairs are numbered over a dense block of the chunk's rows and key notes when it
    is small (the usual case: key notes lie within a window of the rows), else by
    sorting.  After the pairs come one bin per note for structure, one per note for
    context, and one for keys outside the sequence.
    """

    def __init__(self, rows, keys, n_notes):
        if rows.size == 0:
            self.size, self.dense, self.code = 0, True, rows
            self.K = self.r0 = self.k0 = 0
            return
        r0, k0 = int(rows.min()), int(keys.min())
        R, K = int(rows.max()) - r0 + 1, int(keys.max()) - k0 + 1
        self.dense = R * K <= _DENSE_BLOCK
        if self.dense:
            self.code, self.size, self.K, self.r0, self.k0 = (rows - r0) * K + (keys - k0), R * K, K, r0, k0
        else:
            uniq, self.code = np.unique(rows * n_notes + keys, return_inverse=True)   # by row, then key
            self.size, self.rows, self.keys = uniq.size, uniq // n_notes, (uniq % n_notes).astype(np.int32)

    def bins(self, r, kl, n_notes):
        """Bin of every (query token, key) entry: (n, W) int64."""
        out = np.full(kl.shape, self.size + 2 * n_notes, dtype=np.int64)
        out[kl >= 0] = self.code
        out[kl == _STRUCTURE] = self.size + r[kl == _STRUCTURE]
        out[kl == _CONTEXT] = self.size + n_notes + r[kl == _CONTEXT]
        return out

    def pick(self, acc, counts, bins):
        """(rows, keys, weights / token count of the row) of the pairs with a nonzero sum, by row then key.

        ``acc`` holds the sums of the pair ``bins`` (increasing) that occur in the chunk.
        """
        nonzero = acc != 0
        every = bool(nonzero.all())                     # the usual case: the same pairs for every head
        if every and getattr(self, "_every", (None,))[0] is bins:
            _, rows, keys, n = self._every
        else:
            idx, acc = (bins, acc) if every else (bins[nonzero], acc[nonzero])
            if self.dense:
                rows, keys = idx // max(self.K, 1) + self.r0, (idx % max(self.K, 1) + self.k0).astype(np.int32)
            else:
                rows, keys = self.rows[idx], self.keys[idx]
            n = counts[rows]
            if every:
                self._every = (bins, rows, keys, n)
        return rows, keys, (acc / n).astype(np.float32)


def _compact(code, size):
    """The bins of ``code`` (values in [0, size)) that occur, increasing, and ``code`` renumbered
    0.. over them: ``(used (U,), code (n,))``, so that sums over them need U bins, not ``size``."""
    seen = np.zeros(size, bool)
    seen[code] = True
    used = np.flatnonzero(seen)
    number = np.empty(size, np.int64)
    number[used] = np.arange(used.size)
    return used, number[code]


def _csr(parts, n_notes):
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    keys = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
    weights = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=n_notes)))).astype(np.int64)
    return NoteRows(indptr, keys, weights)


def attention_rollout(att, rows=None):
    """Attention rollout (Abnar & Zuidema 2020) of one window: (L, ..., H, T, T) -> (..., T, T) float64.

    Per layer ``A_l = 0.5 * mean over heads + 0.5 * I``, rows renormalised to sum
    to one; ``R = A_L @ ... @ A_2 @ A_1``: row t is how much each token flows into
    token t's output through the layers.  ``rows`` (index array) computes only
    those rows of R, ``(..., len(rows), T)``, from the left: ``A_L[rows] @ A_(L-1) @ ...``.
    Dims between L and H (a batch of windows) are carried through.
    """
    att = np.asarray(att)
    T = att.shape[-1]
    out = None
    for layer in att[::-1]:                                              # A_L first
        a = layer.mean(-3, dtype=np.float64)                              # (..., T, T)
        a *= 0.5
        a[..., np.arange(T), np.arange(T)] += 0.5
        a /= np.maximum(a.sum(-1, keepdims=True), 1e-30)
        out = (a if rows is None else a[..., rows, :]) if out is None else out @ a
    return np.broadcast_to(np.eye(T), att.shape[1:-3] + (T, T)).copy() if out is None else out
