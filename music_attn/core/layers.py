"""Layers of the decoder, each forward directly above its hand-written backward.

Every layer is a pair ``x_forward(...) -> (out, cache)`` and
``x_backward(dout, cache) -> grads``; the cache is a NamedTuple holding what the
backward needs.  The backward quotes the forward line it inverts.  The attention
layer keeps its softmax probabilities in the cache, so the attention maps the
inspector draws are the very arrays the model used.

Shape legend: B batch, T time (new tokens), S key length (cached + new),
C model dim, H heads, D head dim, F feed-forward dim, V vocab, L max length,
N = B*T rows.
"""

import math
from typing import NamedTuple, Optional

import numpy as np

from music_attn.core.attention import scaled_dot_product_attention
from music_attn.core.positional import apply_rope

__all__ = [
    "embedding_forward", "embedding_backward",
    "layernorm_forward", "layernorm_backward",
    "linear_forward", "linear_backward",
    "gelu_forward", "gelu_backward",
    "dropout_forward", "dropout_backward",
    "attention_forward", "attention_backward", "AttentionSpec", "LayerKV",
    "skew_view", "skew_view_backward",
    "cross_entropy_forward", "cross_entropy_backward",
]


# --------------------------------------------------------------------------- embedding

class EmbeddingCache(NamedTuple):
    ids: np.ndarray          # (B, T) int
    vocab_size: int


def embedding_forward(ids, weight):
    """Look up one row of ``weight`` per id.  (B, T) int, (V, C) -> (B, T, C)."""
    out = weight[ids]
    return out, EmbeddingCache(ids, weight.shape[0])


def embedding_backward(dout, cache):
    """Gradient of the table: rows of ``dout`` summed into the rows they came from."""
    # forward was: out = weight[ids]
    C = dout.shape[-1]
    dweight = np.zeros((cache.vocab_size, C), dtype=dout.dtype)
    np.add.at(dweight, cache.ids.ravel(), dout.reshape(-1, C))  # (B, T, C) -> (N, C)
    return dweight


# --------------------------------------------------------------------------- layer norm

class LayerNormCache(NamedTuple):
    xhat: np.ndarray         # (..., C) normalised input
    rstd: np.ndarray         # (..., 1) 1 / standard deviation
    gamma: np.ndarray        # (C,)


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """Normalise the last axis to zero mean, unit variance, then scale and shift."""
    inv_c = 1.0 / x.shape[-1]
    mean = np.add.reduce(x, axis=-1, keepdims=True)
    mean *= inv_c
    xc = x - mean
    var = np.add.reduce(xc * xc, axis=-1, keepdims=True)
    var *= inv_c
    var += eps
    rstd = 1.0 / np.sqrt(var, out=var)
    xhat = xc * rstd
    out = xhat * gamma + beta
    return out, LayerNormCache(xhat, rstd, gamma)


def layernorm_backward(dout, cache):
    """Returns (dx, dgamma, dbeta)."""
    xhat, rstd, gamma = cache
    axes = tuple(range(dout.ndim - 1))
    # forward was: out = xhat * gamma + beta
    dgamma = np.sum(dout * xhat, axis=axes)
    dbeta = np.sum(dout, axis=axes)
    dxhat = dout * gamma
    # forward was: xhat = (x - mean) * rstd   (mean and rstd depend on x too)
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True)
    dx *= rstd
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------- linear

class LinearCache(NamedTuple):
    x: np.ndarray            # (..., Cin)
    weight: np.ndarray       # (Cin, Cout)


def linear_forward(x, weight, bias):
    """Affine map of the last axis.  (..., Cin), (Cin, Cout), (Cout,) -> (..., Cout)."""
    cin, cout = weight.shape
    out = x.reshape(-1, cin) @ weight            # (..., Cin) -> (N, Cin): one big matrix product
    out += bias
    return out.reshape(*x.shape[:-1], cout), LinearCache(x, weight)


def linear_backward(dout, cache):
    """Returns (dx, dweight, dbias)."""
    x, weight = cache
    cin, cout = weight.shape
    dout2 = dout.reshape(-1, cout)                # (..., Cout) -> (N, Cout)
    # forward was: out = x @ weight + bias
    dx = (dout2 @ weight.T).reshape(x.shape)
    dweight = x.reshape(-1, cin).T @ dout2
    dbias = dout2.sum(axis=0)
    return dx, dweight, dbias


# --------------------------------------------------------------------------- GELU

_GELU_C = math.sqrt(2.0 / math.pi)


class GeluCache(NamedTuple):
    x: np.ndarray
    t: np.ndarray            # tanh(sqrt(2/pi) * (x + 0.044715 x^3))


def gelu_forward(x):
    """GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    t = x * x
    t *= _GELU_C * 0.044715
    t += _GELU_C
    t *= x                             # u = c (x + 0.044715 x^3)
    np.tanh(t, out=t)                  # t = tanh(u)
    out = t + 1.0
    out *= x
    out *= 0.5
    return out, GeluCache(x, t)


def gelu_backward(dout, cache):
    """Returns dx."""
    x, t = cache
    # forward was: out = 0.5 x (1 + t),  t = tanh(u),  u = c (x + 0.044715 x^3)
    dx = x * x
    dx *= _GELU_C * 3 * 0.044715
    dx += _GELU_C                      # du/dx
    sech2 = t * t
    np.subtract(1.0, sech2, out=sech2)  # dt/du = 1 - t^2
    dx *= sech2
    dx *= x
    dx += t
    dx += 1.0                          # 1 + t + x dt/dx
    dx *= dout
    dx *= 0.5
    return dx


# --------------------------------------------------------------------------- dropout

class DropoutCache(NamedTuple):
    mask: Optional[np.ndarray]   # 0 or 1/(1-p) per element; None when nothing was dropped


def dropout_forward(x, p, rng):
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p).

    x (...) -> out (...), same shape and dtype.  ``rng`` (np.random.Generator) draws the
    mask; ``p == 0`` or ``rng is None`` (inference) returns ``x`` itself.
    """
    if not p or rng is None:
        return x, DropoutCache(None)
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    mask = rng.random(x.shape, dtype=dtype) >= p                 # keep with probability 1 - p
    mask = mask.astype(x.dtype) * np.asarray(1.0 / (1.0 - p), dtype=x.dtype)
    return x * mask, DropoutCache(mask)


def dropout_backward(dout, cache):
    """Returns dx."""
    # forward was: out = x * mask
    return dout if cache.mask is None else dout * cache.mask


# --------------------------------------------------------------------------- attention

class AttentionSpec(NamedTuple):
    """How one attention layer attends (the same for every layer of a model).

    n_heads : number of heads H.
    rope : rotate queries and keys by their positions (RoPE).
    rope_base : the RoPE base frequency.
    window : local attention: each query sees only its ``window`` most recent keys.
    alpha : soft-align (SAMUeL-GEN) weight of the local branch, or None for plain
        attention.  Soft-align mixes ``alpha * local + (1 - alpha) * global``, where
        local attends over the ``align_window`` most recent keys and global is full
        causal attention with RoPE, exactly as ``attention.soft_align_attention``.
    align_window : the local window of soft-align.
    query_block : queries per block (blocks skip the keys a block cannot see).
    """
    n_heads: int
    rope: bool = False
    rope_base: float = 10000.0
    window: Optional[int] = None
    alpha: Optional[float] = None
    align_window: Optional[int] = None
    query_block: int = 64


class LayerKV(NamedTuple):
    """Preallocated key/value buffers of one layer, each stored transposed: (B, H, D, L).

    Transposed, the keys and values of one head are D rows of L, so that a new
    query's ``q @ k^T`` and ``p @ v`` stream along rows.  ``k_rot`` holds the
    RoPE-rotated keys of soft-align's global branch (else None).
    """
    k: np.ndarray
    v: np.ndarray
    k_rot: Optional[np.ndarray] = None


class Block(NamedTuple):
    """A block of query rows [i0, i1) and the keys [lo, hi) they may see (causal, windowed).

    Blocks skip the keys above the causal diagonal: with blocks of 64 rows a
    256-token window computes 62% of the full (T, S) score matrix.
    """
    i0: int
    i1: int
    lo: int
    hi: int
    probs: np.ndarray        # (B, H, i1-i0, hi-lo) softmax probabilities
    out: np.ndarray          # (B, H, i1-i0, D) probs @ v[lo:hi]


class Branch(NamedTuple):
    """One softmax attention inside a layer (soft-align has two, mixed by ``weight``)."""
    weight: float
    rotated: bool            # q and k were rotated by RoPE
    q: np.ndarray            # (B, H, T, D) the queries scored
    k: np.ndarray            # (B, H, S, D) the keys scored
    blocks: tuple            # Block per query block


class AttentionCache(NamedTuple):
    qkv: LinearCache         # the input projection
    proj: LinearCache        # the output projection
    q: np.ndarray            # (B, H, T, D) un-rotated queries
    v: np.ndarray            # (B, H, S, D)
    branches: tuple          # Branch per softmax
    rel: Optional[np.ndarray]  # (H, L, D) relative embeddings or None
    positions: np.ndarray    # (T,) absolute positions of the queries
    spec: AttentionSpec

    @property
    def probs(self):
        """(B, H, T, S): the probabilities that multiplied v (zero where a query may not look)."""
        B, H, T, _ = self.q.shape
        probs = np.zeros((B, H, T, self.v.shape[-2]), dtype=self.v.dtype)
        for branch in self.branches:
            for b in branch.blocks:
                probs[..., b.i0:b.i1, b.lo:b.hi] += b.probs if len(self.branches) == 1 \
                    else branch.weight * b.probs
        return probs


def _split_heads(qkv, n_heads):
    """(B, T, 3C) -> three arrays (B, H, T, D)."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_heads)
    qkv = qkv.reshape(B, T, 3, n_heads, D).transpose(2, 0, 3, 1, 4)  # -> (3, B, H, T, D)
    return qkv[0], qkv[1], qkv[2]


def _merge_heads(y):
    """(B, H, T, D) -> (B, T, C)."""
    B, H, T, D = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def _append(buffer, new, start):
    """Write ``new`` (B, H, T, D) at ``start`` of a (B, H, D, L) buffer; all so far (B, H, S, D)."""
    if buffer is None:
        return new
    end = start + new.shape[-2]
    buffer[..., start:end] = new.swapaxes(-1, -2)
    return buffer[..., :end].swapaxes(-1, -2)                 # a view, nothing copied


def _branch_inputs(q, k, kv, spec, positions, start):
    """(weight, rotated, q, keys, window) of each softmax branch of the layer."""
    def rot(a):
        return apply_rope(a, positions, base=spec.rope_base).astype(a.dtype, copy=False)
    qb, kb = (rot(q), rot(k)) if spec.rope else (q, k)
    keys = _append(None if kv is None else kv.k, kb, start)
    if spec.alpha is None:
        return [(1.0, spec.rope, qb, keys, spec.window)]
    keys_rot = _append(None if kv is None else kv.k_rot, rot(k), start)
    return [(spec.alpha, spec.rope, qb, keys, spec.align_window),
            (1.0 - spec.alpha, True, rot(q), keys_rot, None)]


def _relative_bias(q, rel, S, scale):
    """Music Transformer relative logits times ``scale``: (B, H, T, S).

    Entries above the causal diagonal are meaningless (the attention masks them).
    """
    qe = q @ rel[:, rel.shape[-2] - S:].swapaxes(-1, -2)     # (B, H, T, S): column m is distance S-1-m
    qe *= scale
    return skew_view(qe)


def skew_view(x):
    """The Music Transformer skew as a strided view: no padding, no copy.

    ``out[..., i, j] = x[..., i, j + T-1-i]`` for ``j <= i + S - T`` -- what
    ``positional.skew`` gives on the causal region; above it the view reads
    other entries of ``x`` (mask them).  Row i starts T-1-i columns into row i
    of ``x``, so the view starts at ``x[0, T-1]`` and steps S-1 elements per row.

    x : (..., T, S) with T <= S -> (..., T, S) read-only view.
    """
    T, S = x.shape[-2:]
    x = np.ascontiguousarray(x)
    rows, cols = x.strides[-2:]
    return np.lib.stride_tricks.as_strided(x[..., T - 1:], shape=x.shape, writeable=False,
                                           strides=x.strides[:-2] + (rows - cols, cols))


def skew_view_backward(dout):
    """Adjoint of :func:`skew_view` for a ``dout`` that is zero above the causal diagonal.

    Each causal entry (i, j) came from its own entry ``x[i, j + T-1-i]``; the rest of
    ``dx`` (distances no query reached) is zero.
    """
    T, S = dout.shape[-2:]
    dx = np.zeros(dout.shape, dtype=dout.dtype)
    rows, cols = dx.strides[-2:]
    view = np.lib.stride_tricks.as_strided(dx[..., T - 1:], shape=dx.shape,
                                           strides=dx.strides[:-2] + (rows - cols, cols))
    causal = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)   # (T, S)
    np.copyto(view, dout, where=causal)       # causal entries land on distinct elements
    return dx


def _query_blocks(T, start, window, size):
    """(i0, i1, lo, hi) of blocks of ``size`` new queries and the keys they may see."""
    for i0 in range(0, T, size):
        i1 = min(T, i0 + size)
        lo = 0 if window is None else max(0, start + i0 - window + 1)
        yield i0, i1, lo, start + i1


def _attend(q, k, v, window, bias, scale, start, size):
    """``softmax(q k^T * scale + bias, causal [+ window])`` by query blocks: tuple of Block."""
    blocks = []
    for i0, i1, lo, hi in _query_blocks(q.shape[-2], start, window, size):
        qi, ki, vi = q[..., i0:i1, :], k[..., lo:hi, :], v[..., lo:hi, :]
        bi = None if bias is None else bias[..., i0:i1, lo:hi]
        if i1 - i0 == 1:
            out, p = _attend_one(qi, ki, vi, bi, scale)
        else:   # queries aligned to the end of [lo, hi): the causal/window rule of the block
            out, p = scaled_dot_product_attention(qi, ki, vi, causal=True, window=window, bias=bi,
                                                  scale=scale, return_weights=True)
        blocks.append(Block(i0, i1, lo, hi, p, out))
    return tuple(blocks)


def _attend_one(q, k, v, bias, scale):
    """One query that may see every key given (the KV-cache decode step): no mask to build."""
    s = q @ k.swapaxes(-1, -2)                                 # (B, H, 1, S)
    s *= scale
    if bias is not None:
        s += bias
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s @ v, s


def attention_forward(x, w_qkv, b_qkv, w_o, b_o, spec, *, rel=None, kv=None, start=0):
    """Causal multi-head self-attention with an output projection.

    ``softmax((q k^T + skew(q rel^T)) / sqrt(D), causal [+ window]) v``, by
    blocks of queries through ``attention.scaled_dot_product_attention`` (a
    one-token decode step, which needs no mask, takes a shorter path).

    Parameters
    ----------
    x : (B, T, C) input.
    w_qkv, b_qkv : (C, 3C), (3C,) query/key/value projection.
    w_o, b_o : (C, C), (C,) output projection.
    spec : AttentionSpec.
    rel : (H, L, D) Music Transformer relative embeddings, or None.
    kv : LayerKV buffers to write the new keys/values into (at ``start``) and
        to attend over, or None (attend over this chunk only).
    start : number of tokens already in ``kv`` (the position of x[:, 0]).

    Returns
    -------
    out : (B, T, C)
    cache : AttentionCache (cache.probs is (B, H, T, S), S = start + T)
    """
    qkv, qkv_cache = linear_forward(x, w_qkv, b_qkv)          # (B, T, 3C)
    q, k, v = _split_heads(qkv, spec.n_heads)                  # (B, H, T, D) each
    T, D = q.shape[-2:]
    positions = np.arange(start, start + T)
    v = _append(None if kv is None else kv.v, v, start)       # (B, H, S, D)
    scale = 1.0 / math.sqrt(D)
    bias = None if rel is None else _relative_bias(q, rel, start + T, scale)
    inputs = _branch_inputs(q, k, kv, spec, positions, start)
    branches, y = [], np.zeros_like(q) if len(inputs) > 1 or T > spec.query_block else None
    for weight, rotated, qb, kb, window in inputs:
        blocks = _attend(qb, kb, v, window, bias, scale, start, spec.query_block)
        branches.append(Branch(weight, rotated, qb, kb, blocks))
        if y is None:
            y = blocks[0].out
            continue
        for b in blocks:       # soft-align: y = alpha * local + (1 - alpha) * global
            y[..., b.i0:b.i1, :] += b.out if len(inputs) == 1 else weight * b.out
    out, proj_cache = linear_forward(_merge_heads(y), w_o, b_o)  # (B, H, T, D) -> (B, T, C)
    return out, AttentionCache(qkv_cache, proj_cache, q, v, tuple(branches), rel, positions, spec)


def attention_backward(dout, cache):
    """Returns (dx, dw_qkv, db_qkv, dw_o, db_o, drel) (drel None without relative).

    Only for a forward without a KV cache (S == T), as in training.
    """
    q, v = cache.q, cache.v
    B, H, T, D = q.shape
    # forward was: out = merge_heads(y) @ w_o + b_o
    dy, dw_o, db_o = linear_backward(dout, cache.proj)
    dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)             # (B, T, C) -> (B, H, T, D)
    dqkv = np.zeros((3, B, H, T, D), dtype=dout.dtype)            # dq, dk, dv
    dbias = None if cache.rel is None else np.zeros((B, H, T, T), dtype=dout.dtype)
    for branch in cache.branches:
        weight = branch.weight if len(cache.branches) > 1 else None
        dq, dk = _branch_backward(branch, weight, dy, v, dqkv[2], dbias)
        if branch.rotated:
            # forward was: q = apply_rope(q, positions); its adjoint is the inverse rotation
            base = cache.spec.rope_base
            dq = apply_rope(dq, cache.positions, base=base, inverse=True)
            dk = apply_rope(dk, cache.positions, base=base, inverse=True)
        dqkv[0] += dq
        dqkv[1] += dk
    drel = None
    if cache.rel is not None:
        dq_rel, drel = _relative_bias_backward(dbias, q, cache.rel, 1.0 / math.sqrt(D))
        dqkv[0] += dq_rel
    dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * D)  # (3, B, H, T, D) -> (B, T, 3C)
    # forward was: q, k, v = split_heads(x @ w_qkv + b_qkv)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, cache.qkv)
    return dx, dw_qkv, db_qkv, dw_o, db_o, drel


def _branch_backward(branch, weight, dy, v, dv, dbias):
    """d q, d k of one softmax branch, block by block; adds into ``dv`` and ``dbias``."""
    q, k = branch.q, branch.k
    dq, dk = np.zeros_like(q), np.zeros_like(k)
    for b in branch.blocks:
        dyi, vi = dy[..., b.i0:b.i1, :], v[..., b.lo:b.hi, :]
        p = b.probs if weight is None else weight * b.probs
        # forward was: out = p @ v[lo:hi]
        dv[..., b.lo:b.hi, :] += p.swapaxes(-1, -2) @ dyi
        dlogits = dyi @ vi.swapaxes(-1, -2)                    # d p (B, H, t, s)
        # forward was: p = softmax(logits); sum_j p_ij dp_ij = dy_i . out_i (out = p @ v)
        dlogits -= np.sum(dyi * b.out, axis=-1, keepdims=True)
        dlogits *= p                                           # masked entries: p = 0
        if dbias is not None:
            dbias[..., b.i0:b.i1, b.lo:b.hi] += dlogits
        # forward was: logits = q @ k^T * scale + bias
        dq[..., b.i0:b.i1, :] = dlogits @ k[..., b.lo:b.hi, :]
        dk[..., b.lo:b.hi, :] += dlogits.swapaxes(-1, -2) @ q[..., b.i0:b.i1, :]
    scale = 1.0 / math.sqrt(q.shape[-1])
    dq *= scale
    dk *= scale
    return dq, dk


def _relative_bias_backward(dbias, q, rel, scale):
    """Gradients of :func:`_relative_bias` (no cache, S == T) w.r.t. q and rel."""
    T, L = q.shape[-2], rel.shape[-2]
    # forward was: bias = skew_view(qe * scale)
    dqe = skew_view_backward(dbias)
    dqe *= scale
    # forward was: qe = q @ rel[:, L-T:]^T
    dq = dqe @ rel[:, L - T:]
    drel = np.zeros_like(rel)
    drel[:, L - T:] = np.sum(dqe.swapaxes(-1, -2) @ q, axis=0)    # (B, H, T, D) -> (H, T, D)
    return dq, drel


# --------------------------------------------------------------------------- loss

class CrossEntropyCache(NamedTuple):
    probs: np.ndarray        # (N, V)
    targets: np.ndarray      # (N,)
    valid: np.ndarray        # (N,) bool: targets >= 0
    count: int


def cross_entropy_forward(logits, targets, count=None):
    """Mean negative log-likelihood of ``targets`` (negative targets are ignored).

    logits (..., V), targets (...) int -> scalar loss (nats per counted token).
    ``count`` overrides the number of tokens to divide by (a part of a larger batch).
    """
    V = logits.shape[-1]
    logits = logits.reshape(-1, V)                              # (..., V) -> (N, V)
    targets = targets.reshape(-1)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logz = np.log(np.sum(np.exp(shifted), axis=-1))
    valid = targets >= 0
    count = max(int(valid.sum()), 1) if count is None else count
    rows = np.flatnonzero(valid)
    loss = float(np.sum(logz[rows] - shifted[rows, targets[rows]])) / count
    probs = np.exp(shifted - logz[:, None])
    return loss, CrossEntropyCache(probs, targets, valid, count)


def cross_entropy_backward(dloss, cache, shape=None):
    """d logits (N, V) (reshaped to ``shape`` when given)."""
    probs, targets, valid, count = cache
    # forward was: loss = mean(logz - shifted[target])  =>  d logits = probs - onehot(target)
    dlogits = probs * (dloss / count)
    rows = np.flatnonzero(valid)
    dlogits[rows, targets[rows]] -= dloss / count
    dlogits[~valid] = 0.0
    return dlogits if shape is None else dlogits.reshape(shape)
