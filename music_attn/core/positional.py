"""Positional encodings: sinusoids, rotary embeddings and Music Transformer relative logits.

Shape legend: B batch, H heads, T query length (time), S key length, C model dim,
D head dim, L number of relative embeddings (distances 0 .. L-1).

* ``sinusoidal(T, C)`` -- the fixed table of "Attention Is All You Need".
* ``apply_rope(x, positions)`` -- rotary embeddings (Su et al. 2021): rotate each pair of
  features ``(x[2i], x[2i+1])`` by ``position * base**(-2i/D)``; the score between two
  rotated vectors then depends only on the difference of their positions.
* ``relative_logits(q, rel)`` -- relative attention of the Music Transformer (Huang et al.
  2018) with the memory-saving "skew": one ``(T, S)`` matrix product, then pad one column,
  reshape and drop, instead of gathering a ``(T, S, D)`` tensor of embeddings.
  ``skew_backward`` is the exact adjoint of ``skew`` (the backward pass of the trick).
  ``skew_view`` is the same skew as a strided view (no padding, no copy) -- the form
  ``relative_logits`` uses, tested equal to ``skew`` on the causal region --
  with ``skew_view_backward`` its adjoint; ``relative_logits_backward`` is the backward
  pass of the whole thing.
* ``relative_block(q, table, ...)`` -- the same logits for one block of queries and the
  keys it may see, as the model's causal attention computes them block by block: one
  ``(t, s + t - 1)`` product against the rows of the table the block's distances use,
  read through a skewed view (``skew_block``) that stays inside each row.  No
  ``(T, S)`` array at all; about half the work of the whole square for causal
  attention.  ``relative_block_backward`` is its adjoint.
"""

import numpy as np

from music_attn.core.ops import float_dtype

__all__ = [
    "sinusoidal",
    "rope_angles",
    "apply_rope",
    "skew",
    "skew_backward",
    "skew_view",
    "skew_view_backward",
    "relative_logits",
    "relative_logits_backward",
    "skew_block",
    "relative_table",
    "relative_rows",
    "relative_block",
    "relative_block_backward",
]


def sinusoidal(T, C, *, base=10000.0, dtype=np.float64):
    """Sinusoidal position table of "Attention Is All You Need".

    ``PE[t, 2i] = sin(t / base**(2i/C))`` and ``PE[t, 2i+1] = cos(t / base**(2i/C))``.

    Parameters
    ----------
    T : int
        Number of positions (0 .. T-1).
    C : int
        Model dimension; an odd ``C`` ends with a sine column (the cosine of the
        last pair is dropped).
    base : float
        Wavelength scale: wavelengths run from 2*pi to about ``2*pi*base``.
    dtype : numpy dtype
        Output dtype (float64 by default).

    Returns
    -------
    ndarray, shape (T, C)
    """
    if T < 0 or C < 1:
        raise ValueError(f"sinusoidal needs T >= 0 and C >= 1, got T={T}, C={C}")
    n_pairs = (C + 1) // 2
    inv_freq = base ** (-2.0 * np.arange(n_pairs) / C)             # (C/2,)
    angles = np.arange(T, dtype=np.float64)[:, None] * inv_freq    # (T, C/2)
    pe = np.empty((T, 2 * n_pairs))
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles)
    return pe[:, :C].astype(dtype, copy=False)


def rope_angles(positions, D, *, base=10000.0):
    """Rotation angles of rotary embeddings: ``positions[..., None] * base**(-2i/D)``.

    Parameters
    ----------
    positions : array_like, shape (..., T)
        Position of each token (need not be 0 .. T-1, e.g. with a KV cache).
    D : int
        Head dimension (even).

    Returns
    -------
    ndarray, shape (..., T, D/2), float64
    """
    if D % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got D={D}")
    inv_freq = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)         # (D/2,)
    return np.asarray(positions, dtype=np.float64)[..., None] * inv_freq  # (..., T, D/2)


def apply_rope(x, positions=None, *, base=10000.0, inverse=False):
    """Rotate each feature pair ``(x[2i], x[2i+1])`` by ``positions * base**(-2i/D)``.

    Parameters
    ----------
    x : array_like, shape (..., T, D)
        Queries or keys, D even.
    positions : array_like, shape (T,) or broadcastable to (..., T), optional
        Position of each row; default ``0 .. T-1``.
    base : float
        Frequency base.
    inverse : bool
        Rotate by the negative angle. A rotation's inverse is its transpose, so this is
        also the backward pass: ``dx = apply_rope(dy, positions, inverse=True)``.

    Returns
    -------
    ndarray, shape (..., T, D), dtype of ``x`` (float64 for integer input)
    """
    x = np.asarray(x)
    x = x.astype(float_dtype(x), copy=False)
    if x.ndim < 2:
        raise ValueError(f"apply_rope expects x of shape (..., T, D), got {x.shape}")
    T, D = x.shape[-2:]
    positions = np.arange(T) if positions is None else np.asarray(positions)
    if positions.shape[-1:] != (T,):
        raise ValueError(f"positions of shape {positions.shape} do not match x of shape {x.shape}")
    angles = rope_angles(positions, D, base=base)                   # (..., T, D/2)
    cos = np.cos(angles).astype(x.dtype)
    sin = np.sin(angles).astype(x.dtype)
    if inverse:
        sin = -sin
    x0, x1 = x[..., 0::2], x[..., 1::2]                              # (..., T, D/2) each
    out = np.empty(np.broadcast_shapes(x.shape, angles.shape[:-1] + (D,)), dtype=x.dtype)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def skew(x):
    """The Music Transformer skew: pad one zero column on the left, reshape, drop.

    For a square ``x`` this is "pad, reshape to (T+1, T), drop the first row". In general
    (``T <= S``) the padded ``(T, S+1)`` matrix is flattened, its first ``T`` entries are
    dropped and the rest read as ``(T, S)``. If ``x[i, m]`` holds the logit of query ``i``
    against the relative embedding of distance ``S-1-m``, then on the causal region
    (``j <= i + S - T``) the result is ``out[i, j] = x[i, T-1-i+j]``: query ``i`` against
    the embedding of its distance ``i + S - T - j`` to key ``j``. Entries above that
    region are meaningless and must be masked.

    Parameters
    ----------
    x : ndarray, shape (..., T, S), T <= S

    Returns
    -------
    ndarray, shape (..., T, S)
    """
    *lead, T, S = x.shape
    if T > S:
        raise ValueError(f"skew needs T <= S, got x of shape {x.shape}")
    padded = np.zeros((*lead, T, S + 1), dtype=x.dtype)
    padded[..., 1:] = x                                              # (..., T, S+1)
    flat = padded.reshape(*lead, T * (S + 1))                        # (..., T*(S+1))
    return flat[..., T:].reshape(*lead, T, S)                        # (..., T, S)


def skew_backward(dout):
    """Exact adjoint of :func:`skew`: ``sum(skew(x) * g) == sum(x * skew_backward(g))``.

    The forward pads, reshapes and drops; the backward undoes each step in reverse:
    put zeros where entries were dropped, reshape back, drop the padding column.

    Parameters
    ----------
    dout : ndarray, shape (..., T, S)
        Gradient with respect to the output of ``skew``.

    Returns
    -------
    ndarray, shape (..., T, S)
        Gradient with respect to the input of ``skew``.
    """
    *lead, T, S = dout.shape
    if T > S:
        raise ValueError(f"skew_backward needs T <= S, got dout of shape {dout.shape}")
    flat = np.zeros((*lead, T * (S + 1)), dtype=dout.dtype)
    flat[..., T:] = dout.reshape(*lead, T * S)      # forward was: out = flat[T:].reshape(T, S)
    return flat.reshape(*lead, T, S + 1)[..., 1:]    # forward was: padded[..., 1:] = x


def skew_view(x):
    """:func:`skew` as a strided view: no padding, no copy.

    ``out[..., i, j] = x[..., i, j + T-1-i]`` for ``j <= i + S - T`` -- what :func:`skew`
    gives on the causal region; above it the view reads other entries of ``x`` (mask them).
    Row i starts T-1-i columns into row i of ``x``, so the view starts at ``x[0, T-1]`` and
    steps S-1 elements per row.

    x : (..., T, S) with T <= S -> (..., T, S) read-only view.
    """
    T, S = x.shape[-2:]
    if T > S:
        raise ValueError(f"skew_view needs T <= S, got x of shape {x.shape}")
    return _skewed(np.ascontiguousarray(x), S)


def skew_view_backward(dout):
    """Adjoint of :func:`skew_view` on the causal region: (..., T, S) -> (..., T, S).

    Each causal entry (i, j) came from its own entry ``x[i, j + T-1-i]``; entries of
    ``dout`` above the causal region are ignored, and the rest of ``dx`` (distances no
    query reached) is zero.
    """
    T, S = dout.shape[-2:]
    dx = np.zeros(dout.shape, dtype=dout.dtype)
    # causal entries land on distinct elements of dx
    np.copyto(_skewed(dx, S, writeable=True), dout, where=_causal_rel(T, S))
    return dx


def _skewed(x, n, writeable=False):
    """(..., t, n) view of x (..., t, w) whose row r starts t-1-r columns into row r of x
    and steps on by one column: ``out[..., r, j] = x[..., r, j + t-1-r]`` (the skew read
    in place; :func:`skew_view` and :func:`skew_block`, and their adjoints writing through it)."""
    t = x.shape[-2]
    rows, cols = x.strides[-2:]
    return np.lib.stride_tricks.as_strided(x[..., t - 1:], shape=x.shape[:-1] + (n,), writeable=writeable,
                                           strides=x.strides[:-2] + (rows - cols, cols))


def _causal_rel(T, S):
    """Boolean (T, S): key j is at distance >= 0 from query i (queries aligned to the end)."""
    return np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)


def _check_rel(q, rel, S):
    T, D = q.shape[-2:]
    if rel.ndim < 2 or rel.shape[-1] != D or rel.shape[-2] < S or S < T:
        raise ValueError(
            f"relative_logits needs q (..., T, D) and rel (..., L, D) with L >= S >= T; "
            f"got q {q.shape}, rel {rel.shape}, S={S}")


def relative_logits(q, rel, *, key_len=None, masked=True):
    """Relative-position logits ``q . E[distance]`` via the skew, never a (T, S, D) tensor.

    Parameters
    ----------
    q : array_like, shape (..., T, D)
        Queries (the last T of ``S`` positions when ``key_len`` is given).
    rel : array_like, shape (..., L, D)
        Learned relative embeddings: row ``L-1`` is distance 0, row ``L-1-r`` distance
        ``r`` (the key ``r`` steps back). Needs ``L >= S``.
    key_len : int, optional
        Number of keys ``S`` (default ``T``); queries are aligned to the end, so query ``i``
        is at position ``i + S - T``.
    masked : bool
        Zero the entries above the causal region (default). ``False`` returns the skew as
        a read-only view with those entries unspecified, for callers that mask them anyway
        (the model's causal attention): no copy of the (T, S) logits.

    Returns
    -------
    ndarray, shape (..., T, S)
        ``out[..., i, j] = q[i] . rel[L-1-(i+S-T-j)]`` for ``j <= i+S-T``, 0 above
        (future keys; mask them anyway).
    """
    q, rel = np.asarray(q), np.asarray(rel)
    dtype = float_dtype(q, rel)
    q, rel = q.astype(dtype, copy=False), rel.astype(dtype, copy=False)
    T, L = q.shape[-2], rel.shape[-2]
    S = T if key_len is None else int(key_len)
    _check_rel(q, rel, S)
    qe = q @ np.swapaxes(rel[..., L - S:, :], -1, -2)   # (..., T, D) @ (..., D, S) -> (..., T, S)
    if not masked:
        return skew_view(qe)
    return np.where(_causal_rel(T, S), skew_view(qe), qe.dtype.type(0))


def relative_logits_backward(dout, q, rel, *, key_len=None):
    """Backward pass of :func:`relative_logits`.

    Parameters
    ----------
    dout : ndarray, shape (..., T, S)
        Gradient with respect to the logits.
    q, rel, key_len
        As given to the forward pass.

    Returns
    -------
    dq : ndarray, shape of ``q``
    drel : ndarray, shape of ``rel`` (rows ``< L-S`` get zero; broadcast dims summed)
    """
    q, rel = np.asarray(q), np.asarray(rel)
    T, L = q.shape[-2], rel.shape[-2]
    S = T if key_len is None else int(key_len)
    _check_rel(q, rel, S)
    dqe = skew_view_backward(dout)                     # forward was: out = skew(qe) * causal
    dq = dqe @ rel[..., L - S:, :]                     # forward was: qe = q @ rel[L-S:].T
    drel_used = np.swapaxes(dqe, -1, -2) @ q           # (..., S, T) @ (..., T, D) -> (..., S, D)
    drel = np.zeros(np.broadcast_shapes(drel_used.shape[:-2], rel.shape[:-2]) + rel.shape[-2:],
                    dtype=drel_used.dtype)
    drel[..., L - S:, :] = drel_used
    return _sum_to_shape(dq, q.shape), _sum_to_shape(drel, rel.shape)


def _sum_to_shape(g, shape):
    """Sum a broadcast gradient back down to ``shape``."""
    extra = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(extra))) if extra > 0 else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


# --------------------------------------------------------------------------- by blocks

def skew_block(x, s):
    """The skew of one block of queries as a strided view: (..., t, s + t - 1) -> (..., t, s).

    ``out[..., r, j] = x[..., r, j + t-1-r]``: row r starts t-1-r columns in and every
    read stays inside row r, so distinct entries of ``out`` are distinct entries of
    ``x`` (the adjoint is a plain assignment, :func:`relative_block_backward`).
    """
    t, w = x.shape[-2:]
    if w != s + t - 1:
        raise ValueError(f"skew_block needs x of shape (..., t, s + t - 1), got {x.shape} for s={s}")
    return _skewed(x, s)


def relative_table(rel, extra):
    """``rel`` (..., L, D) with ``extra`` zero rows below it, for negative distances.

    Row ``L-1-d`` holds distance ``d``; the added rows stand for distances -1 .. -extra,
    which a block of up to ``extra + 1`` queries reads above its diagonal (masked there).
    """
    rel = np.asarray(rel)
    pad = np.zeros(rel.shape[:-2] + (extra, rel.shape[-1]), dtype=rel.dtype)
    return np.concatenate([rel, pad], axis=-2)


def relative_rows(L, start, i0, i1, lo, hi):
    """The rows of :func:`relative_table` that block [i0, i1) x [lo, hi) reads.

    Queries at positions ``start + i`` (i in [i0, i1)), keys at ``j`` in [lo, hi), L
    relative embeddings: column c of the block's product is distance
    ``start + i1 - 1 - lo - c``, row ``L - start - i1 + lo + c`` of the table.
    """
    r0 = L - start - i1 + lo
    if r0 < 0:
        raise ValueError(f"distances up to {start + i1 - 1 - lo} need more than L={L} relative embeddings")
    return slice(r0, r0 + (hi - lo) + (i1 - i0) - 1)


def relative_block(q, table, rows, s):
    """Relative logits of a block: q (..., t, D) -> (..., t, s), read-only view.

    ``out[..., r, j] = q[r] . rel[L-1-d]`` with ``d`` the distance from query r to key j
    (``rows`` from :func:`relative_rows`, ``table`` from :func:`relative_table`);
    entries above the causal diagonal read the zero rows or other distances: mask them.
    """
    x = q @ np.swapaxes(table[..., rows, :], -1, -2)     # (..., t, D) @ (..., D, s+t-1)
    return skew_block(x, s)


def relative_block_backward(dout, q, table, rows):
    """Adjoint of :func:`relative_block`: (dq (..., t, D), dtable_rows (..., s+t-1, D)).

    ``dout`` (..., t, s); the gradient of the rows ``table[..., rows, :]`` comes back with
    q's leading dims (sum it over those ``table`` broadcast); that of the zero rows is
    to be dropped.
    """
    t, s = dout.shape[-2:]
    dx = np.zeros(dout.shape[:-1] + (s + t - 1,), dtype=dout.dtype)
    _skewed(dx, s, writeable=True)[...] = dout   # forward was: out = skew_block(x): distinct entries
    used = table[..., rows, :]
    dq = dx @ used                               # forward was: x = q @ used.T
    dused = np.swapaxes(dx, -1, -2) @ q
    return dq, dused
