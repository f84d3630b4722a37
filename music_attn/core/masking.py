"""The logit rule of attention: causal and sliding-window bands, masks and bias, per block.

Shape legend: T query length, S key length, D head dim; t, s the rows and columns of a block.

:class:`_Spec` says which keys each query may see (an explicit boolean mask, the
causal rule aligned to the end, a window) and what is added to the logits (scale,
bias); :func:`_scores` turns a block of ``q k^T`` into masked logits under it.
The readable path (:func:`music_attn.core.attention._sdpa_full`) applies it to the
whole (T, S) matrix at once, the blocked one
(:mod:`music_attn.core.attention_blocked`) to one tile at a time.
"""

import functools

import numpy as np

__all__ = []


def _check_window(window):
    if window is not None and (int(window) != window or window < 1):
        raise ValueError(f"window must be a positive integer, got {window!r}")


def _outside_band(t, s, delta, window):
    """Boolean (t, s), True where the causal/window rule forbids: key column ``c`` of
    query row ``r`` is allowed when ``r + delta - window < c <= r + delta``."""
    r = np.arange(t)[:, None]
    c = np.arange(s)[None, :]
    out = c > r + delta
    if window is not None:
        out |= c <= r + delta - window
    return out


@functools.lru_cache(maxsize=64)
def _outside_band_cached(t, s, delta, window):
    """:func:`_outside_band` of a block, cached (blocks of one shape repeat along the
    diagonal) and read-only."""
    out = _outside_band(t, s, delta, window)
    out.flags.writeable = False
    return out


class _Spec:
    """What decides the logits of a block: scale, explicit mask, bias, causal/window rule."""

    def __init__(self, scale, mask, bias, causal, window, offset):
        self.scale, self.mask, self.bias = scale, mask, bias
        self.causal, self.window, self.offset = causal, window, offset

    def key_range(self, i0, i1, S):
        """Keys [lo, hi) that queries [i0, i1) may see under the causal/window rule."""
        lo, hi = 0, S
        if self.causal or self.window is not None:
            hi = min(S, i1 - 1 + self.offset + 1)
        if self.window is not None:
            lo = max(0, i0 + self.offset - self.window + 1)
        return lo, max(lo, hi)

    def cuts(self, i0, i1, j0, j1):
        """Does the causal/window rule cut through block [i0:i1, j0:j1]?"""
        if not self.causal and self.window is None:
            return False
        inside = j1 - 1 <= i0 + self.offset
        if self.window is not None:
            inside = inside and j0 > i1 - 1 + self.offset - self.window
        return not inside

    def logits_(self, s, i0, i1, j0, j1):
        """Turn raw scores ``q k^T`` of block [i0:i1, j0:j1] into masked logits, in place."""
        if self.scale != 1.0:
            s *= self.scale
        if self.bias is not None:
            s += self.bias[..., i0:i1, j0:j1]
        if self.cuts(i0, i1, j0, j1):      # only the columns some row may not see
            c0 = 0 if self.window is not None else max(0, i0 + self.offset + 1 - j0)
            t, w, delta = i1 - i0, j1 - j0 - c0, i0 + self.offset - j0 - c0
            band = _outside_band_cached if t * w <= 1 << 20 else _outside_band
            bad = band(t, w, delta, self.window)
            np.copyto(s[..., c0:], -np.inf, where=bad)
        if self.mask is not None:
            np.copyto(s, -np.inf, where=~self.mask[..., i0:i1, j0:j1])
        return s

    def lead(self, s_shape):
        """Shape of the logits once the mask and bias leading dims are broadcast in."""
        if self.mask is None and self.bias is None:
            return s_shape
        return np.broadcast_shapes(s_shape, *(a.shape[:-2] + s_shape[-2:]
                                              for a in (self.mask, self.bias) if a is not None))


def _scores(qb, kT, spec, i0, i1, j0, j1, out=None):
    """Masked logits of the query block ``qb`` = queries [i0, i1) against keys [j0, j1).

    ``qb`` (..., t, D), ``kT`` (..., D, S) the keys transposed -> (..., t, s); written
    into ``out`` (of that shape) when given.
    """
    kt = kT[..., j0:j1]                                                # (..., D, s)
    s = qb @ kt if out is None else np.matmul(qb, kt, out=out)
    shape = spec.lead(s.shape)
    if shape != s.shape:
        s = np.array(np.broadcast_to(s, shape))
    return spec.logits_(s, i0, i1, j0, j1)
