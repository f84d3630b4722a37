"""Exact attention by blocks: an online softmax over key blocks, spread over the cores.

Shape legend: T query length, S key length, D head dim, Dv value dim; t, s the rows
and columns of a block.

The refinement of the three lines of :func:`music_attn.core.attention._sdpa_full`
(``logits = q k^T * scale + bias, masked; w = softmax(logits); out = w v``) that
``scaled_dot_product_attention(..., block_size=...)`` runs, and by default for causal
or local attention beyond 256 x 256: memory O(T x block_size) instead of O(T x S),
key blocks a query block cannot see skipped, (head, query block) items shared out to
one thread per core.  ``tests/test_attention.py`` holds it equal to the readable path.
"""

import itertools
import math
import threading

import numpy as np

from music_attn._threads import cpu_count, single_threaded_blas, thread_pool
from music_attn.core.masking import _scores, _Spec

__all__ = []


def _run_parallel(fn, items):
    """``fn`` over ``items``, one thread per core each taking the next item in turn
    (the caller lists the biggest first); returns when all are done."""
    workers = min(len(items), cpu_count())
    if workers < 2:
        for item in items:
            fn(item)
        return
    counter = itertools.count()            # next() on it is atomic under the GIL

    def drain():
        for i in iter(lambda: next(counter), None):
            if i >= len(items):
                return
            fn(items[i])

    with single_threaded_blas():
        pool = thread_pool("attention", cpu_count())
        futures = [pool.submit(drain) for _ in range(workers - 1)]
        drain()
        for f in futures:
            f.result()


# ----------------------------------------------------------------------------- blocked SDPA
#
# Online softmax over key blocks. Each query row keeps a running shift m, a running sum
# l = sum_j exp(s_j - m) and an accumulator acc = sum_j exp(s_j - m) v_j; at the end
# out = acc / l. The classic version (``_Plan.online``) takes m as the running maximum
# and rescales l and acc whenever a key block raises it. The fast version
# (``_Plan.shifted``) fixes m in advance at the logit of the row's last visible key (its
# own, in self-attention): no max pass, no rescaling, and one matrix product of [q, -m]
# with [k, 1] gives the shifted logits directly. Any m works as long as exp(s - m) stays
# within float range: since m is one of the row's logits, the row sum is at least 1, and
# the largest term overflows only if some logit exceeds m by ~88 (float32), far beyond
# the spread of attention logits. Such a row (an infinite row sum), or one whose last key
# a mask or bias hides (a row sum that underflows), has its query block recomputed with
# the classic version.
#
# Work items are (head, query block) pairs, head by head, shared out to one thread per
# core. Each thread keeps its scratch (the (t, s) tile, [q, -m] of its item, [k, 1] and
# [v, 1] of its key block) from item to item and from call to call: on a virtual machine
# a fresh page costs more than the arithmetic done on it.

_LOOSE = 1e-16        # row sum below this (or infinite): the shift was off, redo exactly
_QUERY_BLOCK = 512    # at most this many query rows per work item
_STRIP = 64           # rows per strip where the causal diagonal cuts a block


def _key_blocks(spec, mask, i0, i1, S, bs):
    """Key blocks [j0, j1) of at most ``bs`` keys that queries [i0, i1) may see, the
    first one ending at the last visible key; under a plain causal rule it starts where
    the diagonal does, so that only it crosses the diagonal. Blocks the mask hides are
    skipped."""
    lo, hi = spec.key_range(i0, i1, S)
    cut = hi
    if spec.causal and spec.window is None:        # keys > cut: not seen by every row
        cut = min(hi, max(lo, i0 + spec.offset, hi - bs))
    blocks = [(cut, hi)] if cut < hi else []
    blocks += [(max(lo, j1 - bs), j1) for j1 in range(cut, lo, -bs)]
    if mask is not None:
        blocks = [(j0, j1) for j0, j1 in blocks if mask[i0:i1, j0:j1].any()]
    return blocks


def _block_tiles(spec, i0, i1, j0, j1):
    """Tiles (r0, r1, hi) of key block [j0, j1) for queries [i0, i1): rows [r0, r1)
    (relative to i0) against keys [j0, hi). A block the causal diagonal runs through is
    cut into strips of rows, each stopping at its own last key, so that little of the
    masked triangle is computed at all."""
    t = i1 - i0
    if not spec.causal or spec.window is not None or not spec.cuts(i0, i1, j0, j1):
        return [(0, t, j1)]
    tiles = []
    for r0 in range(0, t, _STRIP):
        r1 = min(r0 + _STRIP, t)
        hi = min(j1, i0 + r1 + spec.offset)                  # past the last key of row r1-1
        if hi > j0:
            tiles.append((r0, r1, hi))
    return tiles


def _online_update(s, vb, state):
    """Fold one key block into the running (max, sum, accumulator) of the classic version.

    ``s`` (t, s) masked logits, consumed in place; ``vb`` (s, Dv).
    """
    m_blk = s.max(axis=-1)                                        # (t,)
    m = m_blk if state is None else np.maximum(state[0], m_blk)
    m_safe = np.where(np.isneginf(m), 0.0, m).astype(s.dtype)    # rows with nothing yet
    s -= m_safe[:, None]
    np.exp(s, out=s)                                              # s is now p (unnormalised)
    if state is None:
        return m, s.sum(axis=-1), s @ vb
    _, l, acc = state
    corr = np.exp(state[0] - m_safe)                              # rescale the old running sums
    l = l * corr + s.sum(axis=-1)
    acc *= corr[:, None]
    acc += s @ vb                                                 # (t, s) @ (s, Dv)
    return m, l, acc


def _append_column(x, last=None, out=None):
    """[x, last] along the feature axis (``last`` defaults to ones): (..., n, D+1)."""
    out = np.empty(x.shape[:-1] + (x.shape[-1] + 1,), dtype=x.dtype) if out is None else out
    out[..., :-1] = x
    out[..., -1] = 1 if last is None else last
    return out


_SCRATCH = threading.local()     # per-thread buffers of the blocked path, kept between calls
_SCRATCH_KEEP = 8 << 20          # bytes: larger buffers are not kept


def _scratch(name, shape, dtype):
    """A buffer of ``shape`` for this thread, reused from call to call (on a machine where
    fresh pages cost more than the arithmetic done on them); its contents are undefined."""
    n = math.prod(shape)
    buf = _SCRATCH.__dict__.get((name, dtype))
    if buf is None or buf.size < n:
        buf = np.empty(n, dtype)
        if buf.nbytes <= _SCRATCH_KEEP:
            _SCRATCH.__dict__[(name, dtype)] = buf
    return buf[:n].reshape(shape)


class _Plan:
    """Blocked attention of one call, as views broadcast to the common leading shape.

    The fast path multiplies ``qa`` = [q * scale, -m] by ``kb`` = [k, 1] (one extra
    feature), which gives the logits shifted by m in one product, then the probabilities
    by ``vb`` = [v, 1], which gives the accumulator and the row sum together. ``qa`` is
    built per work item, ``kb`` and ``vb`` per key block, in the thread's scratch.
    """

    def __init__(self, q, k, v, spec, bs):
        T, S = q.shape[-2], k.shape[-2]
        self.lead = spec.lead(np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
                              + (T, S))[:-2]
        self.spec, self.bs, self.dtype, self.S = spec, bs, q.dtype, S
        self.q, self.k, self.kT, self.v, self.mask, self.bias = (
            self._broadcast(a, 2)
            for a in (q, k, np.swapaxes(k, -1, -2), v, spec.mask, spec.bias))
        self.shift = self._last_logits(q, k)                                # (..., T)

    def _broadcast(self, a, tail):
        """View of ``a`` with the common leading shape and its own last ``tail`` dims."""
        return None if a is None else np.broadcast_to(a, self.lead + a.shape[a.ndim - tail:])

    def _last_logits(self, q, k):
        """(..., T) logit of each query's last visible key (its own, in self-attention), 0
        where that is not finite: the shift of the fast path."""
        sp, T, S = self.spec, q.shape[-2], k.shape[-2]
        last = np.arange(T) + sp.offset
        last = np.clip(last, 0, S - 1) if sp.causal or sp.window is not None else np.full(T, S - 1)
        if last[0] + T - 1 == last[-1]:                  # a run of keys: a view, no copy
            k_last = k[..., last[0]:last[0] + T, :]
        elif last[0] == last[-1]:
            k_last = k[..., last[0]:last[0] + 1, :]
        else:
            k_last = np.take(k, last, axis=-2)
        m = np.einsum("...td,...td->...t", q, k_last) * self.dtype.type(sp.scale)
        m = self._broadcast(m, 1)
        if self.bias is not None:
            m = m + self.bias[..., np.arange(T), last]
        return np.where(np.isfinite(m), m, 0.0).astype(self.dtype, copy=False)

    def head_queries(self, idx, i0, i1):
        """qa = [q * scale, -m] (t, D+1) of queries [i0, i1) of head ``idx`` in scratch."""
        q = self.q[idx][i0:i1]                                             # (t, D)
        qa = _scratch("qa", (i1 - i0, q.shape[-1] + 1), self.dtype)
        np.multiply(q, self.dtype.type(self.spec.scale), out=qa[:, :-1])
        np.negative(self.shift[idx][i0:i1], out=qa[:, -1])
        return qa

    def head_spec(self, idx, scale):
        """The 2-D spec of head ``idx`` (mask and bias sliced), with the given scale."""
        sp = self.spec
        return _Spec(scale, None if self.mask is None else self.mask[idx],
                     None if self.bias is None else self.bias[idx],
                     sp.causal, sp.window, sp.offset)

    def shifted(self, idx, i0, i1, blocks):
        """(acc, shift, sum) of queries [i0, i1) of head ``idx``, the shift of each row fixed
        in advance at the logit of its last visible key; views of the thread's scratch,
        valid until its next item."""
        spec2 = self.head_spec(idx, 1.0)
        qa = self.head_queries(idx, i0, i1)                            # (t, D+1)
        k, v = self.k[idx], self.v[idx]                                # (S, D), (S, Dv)
        acc = _scratch("acc", (i1 - i0, v.shape[-1] + 1), self.dtype)  # (t, Dv+1)
        acc[:] = 0
        tmp = _scratch("tmp", acc.shape, self.dtype)
        buf = _scratch("tile", (min(self.bs, self.S) * (i1 - i0),), self.dtype)
        with np.errstate(over="ignore", invalid="ignore"):    # overflow: redone by the caller
            for j0, j1 in blocks:
                kb, vb = (_append_column(x[j0:j1], out=_scratch(name, (j1 - j0, x.shape[-1] + 1),
                                                                self.dtype))
                          for name, x in (("kb", k), ("vb", v)))  # [k, 1], [v, 1] (s, D+1)
                for r0, r1, hi in _block_tiles(self.spec, i0, i1, j0, j1):
                    p = buf[:(r1 - r0) * (hi - j0)].reshape(r1 - r0, hi - j0)
                    np.matmul(qa[r0:r1], kb[:hi - j0].T, out=p)                # q.k scale - m
                    spec2.logits_(p, i0 + r0, i0 + r1, j0, hi)
                    np.exp(p, out=p)
                    acc[r0:r1] += np.matmul(p, vb[:hi - j0], out=tmp[r0:r1])  # (t, s) @ (s, Dv+1)
        return acc[:, :-1], -qa[:, -1], acc[:, -1]

    def online(self, idx, i0, i1, blocks):
        """(acc, shift, sum) of queries [i0, i1) of head ``idx`` by the classic version."""
        spec, q, kT, v = (self.head_spec(idx, self.spec.scale), self.q[idx], self.kT[idx],
                          self.v[idx])
        state = None
        for j0, j1 in blocks:
            state = _online_update(_scores(q[i0:i1], kT, spec, i0, i1, j0, j1), v[j0:j1], state)
        m, l, acc = state
        return acc, np.where(np.isneginf(m), 0.0, m).astype(self.dtype), l

    def blocks(self, idx, i0, i1):
        return _key_blocks(self.spec, None if self.mask is None else self.mask[idx],
                           i0, i1, self.S, self.bs)

    def item(self, idx, i0, i1):
        """(acc, shift, sum) of queries [i0, i1) of head ``idx``, or None if they see no key."""
        blocks = self.blocks(idx, i0, i1)
        if not blocks:
            return None
        res = self.shifted(idx, i0, i1, blocks)
        loose = ~(res[2] >= _LOOSE) | np.isinf(res[2])   # shift off, a masked row, or NaN
        if self.spec.causal or self.spec.window is not None:
            loose &= np.arange(i0, i1) + self.spec.offset >= 0    # rows before any key
        if loose.any():
            res = self.online(idx, i0, i1, blocks)
        return res

    def weights(self, idx, i0, i1, shift, l, w):
        """Write the normalised weights of queries [i0, i1) of head ``idx`` into ``w``."""
        spec, q, kT = self.head_spec(idx, self.spec.scale), self.q[idx], self.kT[idx]
        for j0, j1 in self.blocks(idx, i0, i1):
            p = _scores(q[i0:i1], kT, spec, i0, i1, j0, j1)
            p -= shift[:, None]
            np.exp(p, out=p)
            np.divide(p, l[:, None], out=p, where=l[:, None] != 0)
            w[i0:i1, j0:j1] = p


def _sdpa_blocked(q, k, v, spec, bs, return_weights):
    """Exact attention by (head, block of queries) items shared out to the cores."""
    T, S = q.shape[-2], k.shape[-2]
    plan = _Plan(q, k, v, spec, bs)
    bq, heads, workers = min(bs, _QUERY_BLOCK), math.prod(plan.lead), cpu_count()
    while workers > 1 and bq > _STRIP and heads * -(-T // bq) < 4 * workers:
        bq //= 2                      # few heads: smaller items, shared out evenly
    out = np.zeros(plan.lead + (T, v.shape[-1]), dtype=q.dtype)       # (..., T, Dv)
    w = np.zeros(plan.lead + (T, S), dtype=q.dtype) if return_weights else None

    def work(item):
        idx, i0, i1 = item
        res = plan.item(idx, i0, i1)
        if res is None:                                               # no key visible at all
            return
        acc, shift, l = res
        if l.all():
            np.divide(acc, l[:, None], out=out[idx][i0:i1])
        else:                                                         # l == 0: no key seen
            np.divide(acc, l[:, None], out=out[idx][i0:i1], where=l[:, None] != 0)
        if return_weights:
            plan.weights(idx, i0, i1, shift, l, w[idx])

    items = [(idx, i0, min(i0 + bq, T)) for idx in np.ndindex(plan.lead)  # head by head,
             for i0 in range(0, T, bq)[::-1]]                              # causal: big first
    _run_parallel(work, items)
    return (out, w) if return_weights else out
