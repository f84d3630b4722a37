"""The attention core: softmax, masks, scaled dot-product attention and the interview API.

Shape legend: B batch, H heads, T query length (time), S key length, C model dim,
D head dim (queries and keys), Dv value dim.

Everything here is plain numpy and exact. ``scaled_dot_product_attention`` is the one
general routine (leading batch/head dims, boolean masks, causal masks aligned to the end,
sliding windows, additive bias); with ``block_size`` it runs as a blocked online softmax
over key blocks whose memory grows as T x block_size instead of T x S, skipping key blocks
a query block cannot see and spreading query blocks over the CPU cores
(:mod:`music_attn.core.attention_blocked`, tested equal to the readable ``_sdpa_full``;
the masking rule both apply is :mod:`music_attn.core.masking`).

The interview API (``compute_qkv``, ``self_attention``, ``multi_head_attention``) and
soft-alignment attention (SAMUeL-GEN) are thin layers over it.

Numerical rules: integer inputs are computed in float64; float32 stays float32; a query
with no key it may attend to gets zeros (output and weights), never NaN; NaN inputs are
not hidden.
"""

import math
from typing import NamedTuple

import numpy as np

from music_attn.core.attention_blocked import _sdpa_blocked
from music_attn.core.masking import _check_window, _outside_band, _scores, _Spec
from music_attn.core.ops import float_dtype, softmax_
from music_attn.core.positional import apply_rope

__all__ = [
    "softmax",
    "attention_mask",
    "scaled_dot_product_attention",
    "compute_qkv",
    "self_attention",
    "multi_head_attention",
    "soft_align_attention",
    "soft_align_branches",
    "sdpa_backward",
    "Block",
    "causal_attention_blocks",
    "causal_attention_blocks_backward",
    "blocks_weights",
    "decode_attention",
]


# ----------------------------------------------------------------------------- softmax


def softmax(x, axis=-1):
    """Numerically stable softmax.

    Subtracts the row maximum before exponentiating, so logits of 1e4 do not overflow.
    A row that is entirely ``-inf`` (nothing may be attended to) gives zeros, not NaN;
    a NaN anywhere in a row makes the whole row NaN.

    Parameters
    ----------
    x : array_like
        Logits; integers are computed in float64, float dtypes are kept.
    axis : int
        Axis to normalise over.

    Returns
    -------
    ndarray, same shape as ``x``
    """
    x = np.asarray(x)
    return softmax_(np.array(x, dtype=float_dtype(x), copy=True), axis)


# ----------------------------------------------------------------------------- masks



def attention_mask(T, S=None, *, causal=False, window=None):
    """The boolean mask (True = may attend) that ``causal`` and ``window`` stand for.

    Queries are aligned to the end of the keys (query ``i`` sits at position
    ``i + S - T``, as with a KV cache): ``causal`` allows keys ``j <= i + S - T``;
    ``window=w`` allows only the ``w`` most recent of those,
    ``i + S - T - w < j <= i + S - T`` (a window implies causality).

    Parameters
    ----------
    T, S : int
        Query and key lengths (``S`` defaults to ``T``).
    causal : bool
    window : int, optional

    Returns
    -------
    ndarray of bool, shape (T, S)
    """
    S = T if S is None else S
    _check_window(window)
    if not causal and window is None:
        return np.ones((T, S), dtype=bool)
    return ~_outside_band(T, S, S - T, window)


def _as_bool_mask(mask):
    """Accept a boolean mask (or 0/1 integers); refuse additive float masks."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.number) and np.isin(mask, (0, 1)).all():
        return mask.astype(bool)
    raise ValueError(
        f"mask must be boolean (True = may attend), got dtype {mask.dtype}; "
        "pass additive masks as bias=")


def _as_trailing_2d(a, T, S, what):
    """View ``a`` broadcast to shape (..., T, S) (its own leading dims), without copying."""
    a = np.asarray(a)
    a = a.reshape((1,) * max(0, 2 - a.ndim) + a.shape)
    try:
        return np.broadcast_to(a, a.shape[:-2] + (T, S))
    except ValueError:
        raise ValueError(f"{what} of shape {a.shape} does not broadcast to "
                         f"(..., {T}, {S})") from None


# ----------------------------------------------------------------------------- SDPA


def _check_qkv(q, k, v):
    """Shapes must be q (..., T, D), k (..., S, D), v (..., S, Dv) with broadcastable lead."""
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"attention needs arrays of shape (..., T, D); got q {q.shape}, "
                         f"k {k.shape}, v {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention shape mismatch: q {q.shape} (..., T, D), k {k.shape} "
                         f"(..., S, D), v {v.shape} (..., S, Dv)")
    try:
        return np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"leading dims of q {q.shape}, k {k.shape}, v {v.shape} "
                         "do not broadcast") from None


def scaled_dot_product_attention(q, k, v, *, mask=None, causal=False, window=None, bias=None,
                                 scale=None, return_weights=False, block_size=None):
    """``softmax(q k^T * scale + bias, masked) v`` over the last two axes.

    Parameters
    ----------
    q : array_like, shape (..., T, D)
    k : array_like, shape (..., S, D)
    v : array_like, shape (..., S, Dv)
        Leading dims broadcast (e.g. k, v shared by all heads).
    mask : array_like of bool, broadcastable to (..., T, S), optional
        True = may attend (torch's ``scaled_dot_product_attention`` convention).
    causal : bool
        Query ``i`` sees keys ``j <= i + S - T`` (aligned to the end, as a KV cache needs).
    window : int, optional
        Local attention: query ``i`` sees only keys ``i+S-T-window < j <= i+S-T``.
    bias : array_like, broadcastable to (..., T, S), optional
        Additive logits (relative positions, ALiBi); ``-inf`` entries act as a mask.
    scale : float, optional
        Logit scale, default ``1/sqrt(D)``.
    return_weights : bool
        Also return the attention probabilities (..., T, S).
    block_size : int, optional
        Compute exactly by blocks of queries and keys (online softmax), with memory
        O(T x block_size) instead of O(T x S); key blocks a query block cannot see are
        skipped. Returned weights, if asked for, still take (..., T, S). Default: chosen
        from the shapes -- causal or local attention with T x S > 256 x 256 runs by
        blocks of 512 queries and 512 keys spread over the cores, anything smaller (or
        wanting the weights, or neither causal nor local) as one matrix.

    Returns
    -------
    out : ndarray, shape (..., T, Dv)
    weights : ndarray, shape (..., T, S), only with ``return_weights``
        A query with no allowed key gets a zero output row and zero weights.
    """
    q, k, v = (np.asarray(a) for a in (q, k, v))
    _check_qkv(q, k, v)
    _check_window(window)
    dtype = float_dtype(q, k, v)
    q, k, v = (a.astype(dtype, copy=False) for a in (q, k, v))
    T, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    mask = None if mask is None else _as_trailing_2d(_as_bool_mask(mask), T, S, "mask")
    bias = None if bias is None else _as_trailing_2d(np.asarray(bias).astype(dtype, copy=False),
                                                     T, S, "bias")
    spec = _Spec(scale, mask, bias, causal, window, S - T)
    if block_size is None:
        block_size = _default_block_size(T, S, causal or window is not None, return_weights)
    if block_size is None:
        return _sdpa_full(q, k, v, spec, return_weights)
    if int(block_size) != block_size or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return _sdpa_blocked(q, k, v, spec, int(block_size), return_weights)


_BLOCKED_ABOVE = 256 * 256   # T x S beyond which causal attention runs blocked by default
_DEFAULT_BLOCK = 512         # keys per block (and queries per work item) by default


def _default_block_size(T, S, banded, return_weights):
    """The exact path the shapes call for when the caller names none: None (the whole
    (T, S) matrix at once) for short sequences, for non-causal attention and when the
    weights are wanted anyway; blocks of 512 for causal or local attention beyond 256 x 256,
    which then skips the hidden keys, keeps its scratch in cache and uses every core.
    (A (512, 512) float32 tile is the size of a core's L2 cache; smaller and larger blocks
    measure alike, and at 256 x 256 one matrix took 4.3 ms against 5.7 ms by blocks on
    the quiet machine, ``music-attn bench attention``.)"""
    if return_weights or not banded or T * S <= _BLOCKED_ABOVE:
        return None
    return _DEFAULT_BLOCK


def _sdpa_full(q, k, v, spec, return_weights):
    """The formula as written, the whole (..., T, S) weight matrix at once:

        logits = q @ k^T * scale + bias, -inf where the mask or the causal/window rule forbids
        w = softmax(logits)
        out = w @ v

    Every other path (the blocked online softmax below, the model's query blocks, the
    decode step) is a refinement of these three lines, tested equal to them.
    """
    T, S = q.shape[-2], k.shape[-2]
    w = softmax_(_scores(q, np.swapaxes(k, -1, -2), spec, 0, T, 0, S))   # (..., T, S)
    out = w @ v                                                    # (..., T, S) @ (..., S, Dv)
    return (out, w) if return_weights else out


def sdpa_backward(dout, q, k, v, w, out, scale):
    """Backward of ``out = softmax(q k^T * scale + bias, masked) @ v`` given its weights ``w``.

    dout, q, out (..., T, D); k, v (..., S, D); w (..., T, S) (zero where masked).
    Returns (dq, dk, dv, dlogits); dlogits (..., T, S) is also the gradient of the bias.
    """
    # forward was: out = w @ v
    dv = np.swapaxes(w, -1, -2) @ dout                          # (..., S, T) @ (..., T, D)
    dw = dout @ np.swapaxes(v, -1, -2)                          # (..., T, S)
    # forward was: w = softmax(logits); sum_j w_ij dw_ij = dout_i . out_i (as out = w @ v)
    dw -= np.sum(dout * out, axis=-1, keepdims=True)
    dw *= w                                                     # masked entries: w = 0
    # forward was: logits = q @ k^T * scale + bias
    dq = dw @ k
    dq *= scale
    dk = np.swapaxes(dw, -1, -2) @ q
    dk *= scale
    return dq, dk, dv, dw


class Block(NamedTuple):
    """Query rows [i0, i1) of causal attention and the keys [lo, hi) they may see.

    Blocks skip the keys above the causal diagonal (and outside the window): with blocks
    of 64 rows a 256-token sequence computes 62% of the full (T, S) score matrix.
    """
    i0: int
    i1: int
    lo: int
    hi: int
    weights: np.ndarray      # (..., i1-i0, hi-lo) softmax probabilities
    out: np.ndarray          # (..., i1-i0, Dv) weights @ v[lo:hi]


def _query_blocks(T, start, window, size):
    """(i0, i1, lo, hi) of blocks of ``size`` queries (the first at position ``start``)."""
    for i0 in range(0, T, size):
        i1 = min(T, i0 + size)
        lo = 0 if window is None else max(0, start + i0 - window + 1)
        yield i0, i1, lo, start + i1


def causal_attention_blocks(q, k, v, *, start=0, window=None, bias=None, scale=None, size=64):
    """Causal attention by blocks of queries, keeping the weights (for a backward pass).

    q (..., T, D) at positions ``start .. start+T-1``; k, v (..., S, D), S = start + T;
    bias broadcastable to (..., T, S), or a function of (i0, i1, lo, hi) giving the
    bias of queries [i0, i1) against keys [lo, hi) (computed block by block, never
    whole). Each block is :func:`scaled_dot_product_attention` of its queries against
    the keys they may see. Returns a tuple of :class:`Block`.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    blocks = []
    for i0, i1, lo, hi in _query_blocks(q.shape[-2], start, window, size):
        bi = None if bias is None else bias(i0, i1, lo, hi) if callable(bias) else bias[..., i0:i1, lo:hi]
        out, w = scaled_dot_product_attention(q[..., i0:i1, :], k[..., lo:hi, :], v[..., lo:hi, :],
                                              causal=True, window=window, bias=bi, scale=scale,
                                              return_weights=True)
        blocks.append(Block(i0, i1, lo, hi, w, out))
    return tuple(blocks)


def causal_attention_blocks_backward(dout, q, k, v, blocks, scale=None, dbias=None):
    """Backward of :func:`causal_attention_blocks` (start 0): (dq, dk, dv).

    The gradient of the bias (the logits' gradient, zero where a query may not look)
    is added into ``dbias`` (..., T, S), or handed block by block to ``dbias(block,
    dlogits)`` when it is a function.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for b in blocks:
        dqb, dkb, dvb, dw = sdpa_backward(dout[..., b.i0:b.i1, :], q[..., b.i0:b.i1, :],
                                          k[..., b.lo:b.hi, :], v[..., b.lo:b.hi, :],
                                          b.weights, b.out, scale)
        dq[..., b.i0:b.i1, :] += dqb
        dk[..., b.lo:b.hi, :] += dkb
        dv[..., b.lo:b.hi, :] += dvb
        if callable(dbias):
            dbias(b, dw)
        elif dbias is not None:
            dbias[..., b.i0:b.i1, b.lo:b.hi] += dw
    return dq, dk, dv


def blocks_weights(blocks, T, S, dtype, out=None):
    """The (..., T, S) weight matrix the blocks stand for (zero where a query may not look),
    written into ``out`` when given."""
    lead = blocks[0].weights.shape[:-2]
    if out is None:
        w = np.zeros(lead + (T, S), dtype=dtype)
    else:
        w = out
        w[...] = 0
    for b in blocks:
        w[..., b.i0:b.i1, b.lo:b.hi] = b.weights
    return w


def decode_attention(q, k, v, *, bias=None, scale=None, scores, stat, acc, out):
    """One new query per head against all its keys: the decode step of a KV cache.

    The single-query case of :func:`scaled_dot_product_attention` with causal keys
    (a decode step sees every key so far, so there is no mask to build), in
    preallocated buffers, with the softmax's division moved after the value product
    (D divisions instead of S). q (..., 1, D); k, v (..., S, D); bias (..., 1, S) or
    None; ``scale`` None when q is already scaled. Buffers: scores (..., 1, S), stat
    (..., 1, 1), acc (..., 1, D) and ``out`` (..., 1, D, any strides), which receives
    the output and is returned.
    """
    s = np.matmul(q, k.swapaxes(-1, -2), out=scores)           # (..., 1, D) @ (..., D, S)
    if scale is not None:
        s *= scale
    if bias is not None:
        s += bias
    s -= np.maximum.reduce(s, axis=-1, keepdims=True, out=stat)  # exp(s) <= 1: no overflow
    np.exp(s, out=s)
    total = np.add.reduce(s, axis=-1, keepdims=True, out=stat)  # (..., 1, 1), >= 1
    np.matmul(s, v, out=acc)                                    # (..., 1, S) @ (..., S, D)
    return np.divide(acc, total, out=out)



# ----------------------------------------------------------------------------- interview API


def _as_float_arrays(*arrays):
    arrays = [np.asarray(a) for a in arrays]
    dtype = float_dtype(*arrays)
    return [a.astype(dtype, copy=False) for a in arrays]


def compute_qkv(X, W_q, W_k, W_v):
    """Project the inputs to queries, keys and values: ``Q = X W_q``, ``K = X W_k``, ``V = X W_v``.

    Parameters
    ----------
    X : array_like, shape (..., T, C)
        One row per token.
    W_q, W_k, W_v : array_like, shapes (C, Dq), (C, Dk), (C, Dv)

    Returns
    -------
    Q, K, V : ndarrays, shapes (..., T, Dq), (..., T, Dk), (..., T, Dv)
    """
    X, W_q, W_k, W_v = _as_float_arrays(X, W_q, W_k, W_v)
    for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v)):
        if X.ndim < 1 or W.ndim != 2 or W.shape[0] != X.shape[-1]:
            raise ValueError(f"compute_qkv: X of shape {X.shape} cannot be multiplied by "
                             f"{name} of shape {W.shape} (need X (..., T, C), W (C, D))")
    return X @ W_q, X @ W_k, X @ W_v      # (..., T, C) @ (C, D) -> (..., T, D)


def self_attention(Q, K, V, *, mask=None):
    """Scaled dot-product attention ``softmax(Q K^T / sqrt(d_k)) V`` of one head.

    Parameters
    ----------
    Q : array_like, shape (T, d_k)
    K : array_like, shape (S, d_k)
    V : array_like, shape (S, d_v)
    mask : array_like of bool, shape (T, S), optional
        True where query ``i`` may attend to key ``j``.

    Returns
    -------
    ndarray, shape (T, d_v)
    """
    return scaled_dot_product_attention(Q, K, V, mask=mask)


def _split_heads(X, n_heads, name):
    """(..., T, C) -> (..., H, T, C/H): the FEATURE axis is cut into heads."""
    *lead, T, C = X.shape
    if C % n_heads:
        raise ValueError(f"n_heads={n_heads} does not divide the model dim of {name} "
                         f"with shape {X.shape}")
    X = X.reshape(*lead, T, n_heads, C // n_heads)        # (..., T, C) -> (..., T, H, D)
    return np.swapaxes(X, -3, -2)                          # (..., T, H, D) -> (..., H, T, D)


def multi_head_attention(Q, K, V, n_heads, *, mask=None):
    """Multi-head attention of already projected Q, K, V (no output projection).

    The feature axis of Q, K and V is split into ``n_heads`` heads of ``C / n_heads``
    features; each head attends with its own scale ``1/sqrt(C / n_heads)``; the head
    outputs are concatenated back along the feature axis.

    Parameters
    ----------
    Q : array_like, shape (T, C)
    K : array_like, shape (S, C)
    V : array_like, shape (S, Cv)
    n_heads : int
        Must divide C and Cv.
    mask : array_like of bool, shape (T, S), optional
        True = may attend; shared by all heads.

    Returns
    -------
    ndarray, shape (T, Cv)
    """
    Q, K, V = _as_float_arrays(Q, K, V)
    if int(n_heads) != n_heads or n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
    if Q.ndim < 2 or K.ndim < 2 or V.ndim < 2:
        raise ValueError(f"multi_head_attention needs Q (T, C), K (S, C), V (S, Cv); got "
                         f"Q {Q.shape}, K {K.shape}, V {V.shape}")
    _check_qkv(Q, K, V)
    heads = [_split_heads(X, int(n_heads), name) for X, name in ((Q, "Q"), (K, "K"), (V, "V"))]
    if mask is not None:
        mask = _as_bool_mask(mask)
        mask = mask.reshape((1,) * max(0, 2 - mask.ndim) + mask.shape)[..., None, :, :]
    out = scaled_dot_product_attention(*heads, mask=mask)           # (..., H, T, Dv)
    out = np.swapaxes(out, -3, -2)                                   # (..., T, H, Dv)
    return out.reshape(*out.shape[:-2], V.shape[-1])                 # (..., T, Cv)


# ----------------------------------------------------------------------------- soft alignment


def _local_mask(T, S, window, causal):
    """Local-attention mask: the causal window, or a symmetric band when not causal."""
    if causal:
        return attention_mask(T, S, window=window)
    i = np.arange(T)[:, None] + (S - T)
    return np.abs(np.arange(S)[None, :] - i) < window                # (T, S)


def soft_align_attention(q, k, v, *, alpha=0.5, window=16, positions=None, base=10000.0,
                         causal=True, mask=None, scale=None, return_weights=False,
                         block_size=None):
    """Soft-alignment attention (SAMUeL-GEN): ``alpha * local + (1 - alpha) * global``.

    ``local`` is sliding-window attention over the ``window`` most recent keys (a band of
    half-width ``window`` when ``causal=False``); ``global`` is full attention with rotary
    embeddings applied to queries and keys. Both use the same q, k, v and scale.

    Parameters
    ----------
    q : array_like, shape (..., T, D)
    k : array_like, shape (..., S, D), D even (for RoPE)
    v : array_like, shape (..., S, Dv)
    alpha : float or array_like broadcastable to (..., T, 1)
        Weight of the local branch.
    window : int
        Local window size.
    positions : array_like, shape (S,), optional
        Positions of the keys for RoPE (default ``0 .. S-1``); queries take the last T.
    base : float
        RoPE frequency base.
    causal : bool
        Decoder (causal) attention in both branches.
    mask, scale, block_size
        As in :func:`scaled_dot_product_attention`, for both branches.
    return_weights : bool
        Also return the mixed probabilities ``alpha * W_local + (1 - alpha) * W_global``
        (..., T, S), which is exactly what multiplies ``v``.

    Returns
    -------
    out : ndarray, shape (..., T, Dv) [, weights (..., T, S)]
    """
    q, k, v = _as_float_arrays(q, k, v)
    T, S = q.shape[-2], k.shape[-2]
    _check_window(window)
    if window is None:
        raise ValueError("soft_align_attention needs a window for its local branch")
    pos = np.arange(S) if positions is None else np.asarray(positions)
    if pos.shape[-1:] != (S,):
        raise ValueError(f"positions of shape {pos.shape} do not match keys of shape {k.shape}")
    alpha = np.asarray(alpha, dtype=q.dtype) if np.ndim(alpha) else q.dtype.type(alpha)
    mask = None if mask is None else _as_bool_mask(mask)
    common = dict(scale=scale, return_weights=return_weights, block_size=block_size)
    results = []
    for weight, qb, kb, win in soft_align_branches(q, k, alpha=alpha, window=window,
                                                   q_positions=pos[..., S - T:], k_positions=pos,
                                                   base=base):
        if causal or win is None:
            res = scaled_dot_product_attention(qb, kb, v, mask=mask, causal=causal, window=win,
                                               **common)
        else:                                      # not causal: a symmetric band of half-width win
            band = _local_mask(T, S, win, causal)
            res = scaled_dot_product_attention(qb, kb, v, mask=band if mask is None else band & mask,
                                               **common)
        results.append((weight, res))
    if not return_weights:
        return sum(weight * res for weight, res in results)
    return tuple(sum(weight * res[i] for weight, res in results) for i in range(2))


def soft_align_branches(q, k, *, alpha, window, q_positions, k_positions, base=10000.0,
                        rotated=None):
    """The two softmax branches of soft-align attention, as (weight, q, k, window):
    ``alpha`` x local attention of q and k over the ``window`` most recent keys, and
    ``1 - alpha`` x full attention of the RoPE-rotated q and k.

    q (..., T, D), k (..., S, D) at the given positions; ``rotated`` = (rope(q), rope(k))
    when the caller has them already.
    """
    if rotated is None:
        rotated = (apply_rope(q, q_positions, base=base).astype(q.dtype, copy=False),
                   apply_rope(k, k_positions, base=base).astype(k.dtype, copy=False))
    return [(alpha, q, k, window), (1 - alpha, rotated[0], rotated[1], None)]
