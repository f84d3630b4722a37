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

import functools
import math
from typing import NamedTuple, Optional

import numpy as np

from music_attn.core.attention import (
    blocks_weights, causal_attention_blocks, causal_attention_blocks_backward, decode_attention,
    soft_align_branches,
)
from music_attn.core.ops import log_softmax
from music_attn.core.positional import (apply_rope, relative_block, relative_block_backward, relative_rows,
                                        relative_table)

__all__ = [
    "embedding_forward", "embedding_backward",
    "layernorm_forward", "layernorm_backward",
    "linear_forward", "linear_backward",
    "gelu_forward", "gelu_backward",
    "dropout_forward", "dropout_backward",
    "attention_forward", "attention_backward", "AttentionSpec", "LayerKV",
    "split_heads", "merge_heads", "branch_inputs",
    "DecodeBlock", "DecodeWork", "decode_block", "decode_work", "fold_layernorm",
    "layernorm_decode", "gelu_decode", "feedforward_decode", "attention_decode",
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


class ConditionCache(NamedTuple):
    ids: np.ndarray          # (B, T, K) int condition tokens
    vocab_size: int


def condition_forward(ids, table):
    """Sum over offsets k of ``table[k, ids[..., k]]``: (B, T, K) int, (K, V, C) -> (B, T, C).

    A learned embedding per offset of the condition tokens at each position (the
    harmonizer's: the soprano of the next K sixteenths), added to the input.
    """
    K, V, C = table.shape
    rows = table.reshape(K * V, C)[ids + np.arange(K) * V]          # (B, T, K, C)
    return rows.sum(axis=-2), ConditionCache(ids, V)


def condition_backward(dout, cache):
    """Gradient of the (K, V, C) table given d out (B, T, C)."""
    # forward was: out = sum_k table[k, ids[..., k]]
    K, V, C = cache.ids.shape[-1], cache.vocab_size, dout.shape[-1]
    dflat, ids = dout.reshape(-1, C), cache.ids.reshape(-1, K)       # (N, C), (N, K)
    dtable = np.empty((K, V, C), dtype=dout.dtype)
    for k in range(K):
        onehot = (ids[:, k, None] == np.arange(V)).astype(dout.dtype)   # (N, V)
        dtable[k] = onehot.T @ dflat                                     # (V, N) @ (N, C)
    return dtable


# --------------------------------------------------------------------------- layer norm

LN_EPS = 1e-5          # added to the variance of every layer norm


class LayerNormCache(NamedTuple):
    xhat: np.ndarray         # (..., C) normalised input
    std: np.ndarray          # (..., 1) standard deviation (with eps)
    gamma: np.ndarray        # (C,)


@functools.lru_cache(maxsize=16)
def _mean_weights(C, dtype):
    """(C, 1) read-only column of 1/C: ``x @ it`` is the mean of each row in one product."""
    w = np.full((C, 1), 1.0 / C, dtype=dtype)
    w.flags.writeable = False
    return w


def layernorm_forward(x, gamma, beta, eps=LN_EPS):
    """Normalise the last axis to zero mean, unit variance, then scale and shift.

    (..., C) -> (..., C); the row means are matrix-vector products (one call each).
    """
    w = _mean_weights(x.shape[-1], x.dtype)
    xc = x - x @ w                                 # (..., C) - (..., 1)
    std = (xc * xc) @ w                            # (..., 1) variance
    std += eps
    np.sqrt(std, out=std)
    xhat = xc / std
    out = xhat * gamma
    out += beta
    return out, LayerNormCache(xhat, std, gamma)


def layernorm_backward(dout, cache):
    """Returns (dx, dgamma, dbeta)."""
    xhat, std, gamma = cache
    axes = tuple(range(dout.ndim - 1))
    # forward was: out = xhat * gamma + beta
    dgamma = np.sum(dout * xhat, axis=axes)
    dbeta = np.sum(dout, axis=axes)
    dxhat = dout * gamma
    # forward was: xhat = (x - mean) / std   (mean and std depend on x too)
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True)
    dx /= std
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
    """Preallocated key/value buffers of one layer, each (B, H, L, D).

    The keys and values of one head so far are one contiguous block of S rows, so
    that a new token's keys and values are one contiguous write per head and a new
    query's ``q @ k^T`` and ``p @ v`` read one block per head.  ``k_rot`` holds the
    RoPE-rotated keys of soft-align's global branch (else None).
    """
    k: np.ndarray
    v: np.ndarray
    k_rot: Optional[np.ndarray] = None


class Branch(NamedTuple):
    """One softmax attention inside a layer (soft-align has two, mixed by ``weight``)."""
    weight: float
    rotated: bool            # q and k were rotated by RoPE
    q: np.ndarray            # (B, H, T, D) the queries scored
    k: np.ndarray            # (B, H, S, D) the keys scored
    blocks: tuple            # attention.Block per query block


class AttentionCache(NamedTuple):
    qkv: LinearCache         # the input projection
    proj: LinearCache        # the output projection
    q: np.ndarray            # (B, H, T, D) un-rotated queries
    v: np.ndarray            # (B, H, S, D)
    branches: tuple          # Branch per softmax
    relative: Optional["_RelativeBias"]  # the forward's relative logits (rel (H, L, D)) or None
    positions: np.ndarray    # (T,) absolute positions of the queries
    spec: AttentionSpec

    @property
    def probs(self):
        """(B, H, T, S): the probabilities that multiplied v (zero where a query may not look)."""
        T, S = self.q.shape[-2], self.v.shape[-2]
        probs = [blocks_weights(b.blocks, T, S, self.v.dtype) for b in self.branches]
        if len(probs) == 1:
            return probs[0]
        return sum(b.weight * p for b, p in zip(self.branches, probs))

    def write_probs(self, out):
        """`probs` written into ``out`` (B, H, T, S) (no temporary for a single softmax)."""
        if len(self.branches) == 1:
            blocks_weights(self.branches[0].blocks, *out.shape[-2:], out.dtype, out=out)
        else:
            out[...] = self.probs
        return out


def split_heads(qkv, n_heads):
    """(B, T, 3C) -> three arrays (B, H, T, D)."""
    B, T, C3 = qkv.shape
    D = C3 // (3 * n_heads)
    qkv = qkv.reshape(B, T, 3, n_heads, D).transpose(2, 0, 3, 1, 4)  # -> (3, B, H, T, D)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(y):
    """(B, H, T, D) -> (B, T, C)."""
    B, H, T, D = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def _append(buffer, new, start):
    """Write ``new`` (B, H, T, D) at ``start`` of a (B, H, L, D) buffer; all so far (B, H, S, D)."""
    if buffer is None:
        return new
    end = start + new.shape[-2]
    buffer[..., start:end, :] = new
    return buffer[..., :end, :]                               # a view, nothing copied


def rope_(spec, a, positions):
    """RoPE of the layer, in the dtype of ``a``."""
    return apply_rope(a, positions, base=spec.rope_base).astype(a.dtype, copy=False)


def branch_inputs(q, k, spec, positions):
    """(weight, rotated, q, new keys, window) of each softmax branch of the layer."""
    qb, kb = (rope_(spec, q, positions), rope_(spec, k, positions)) if spec.rope else (q, k)
    if spec.alpha is None:
        return [(1.0, spec.rope, qb, kb, spec.window)]
    rotated = (qb, kb) if spec.rope else None
    (wl, ql, kl, win), (wg, qg, kg, _) = soft_align_branches(
        qb, kb, alpha=spec.alpha, window=spec.align_window, q_positions=positions,
        k_positions=positions, base=spec.rope_base, rotated=rotated)
    return [(wl, spec.rope, ql, kl, win), (wg, True, qg, kg, None)]


class _RelativeBias:
    """Music Transformer relative logits of scaled queries ``qs`` (B, H, T, D), block by block.

    Called with a block (i0, i1, lo, hi) it gives that block's logits
    (:func:`positional.relative_block`); its ``backward(block, dlogits)`` accumulates
    the gradients of ``qs`` and of ``rel`` (H, L, D), which ``gradients()`` returns
    (and forgets, so that another backward pass starts from zero).
    """

    def __init__(self, qs, rel, start, block):
        self.qs, self.rel, self.start = qs, rel, start
        self.table = relative_table(rel, block)
        self.dq = self.dtable = None

    def _rows(self, i0, i1, lo, hi):
        return relative_rows(self.rel.shape[-2], self.start, i0, i1, lo, hi)

    def __call__(self, i0, i1, lo, hi):
        return relative_block(self.qs[..., i0:i1, :], self.table, self._rows(i0, i1, lo, hi), hi - lo)

    def backward(self, block, dlogits):
        if self.dq is None:
            self.dq, self.dtable = np.zeros_like(self.qs), np.zeros(self.table.shape, self.qs.dtype)
        rows = self._rows(block.i0, block.i1, block.lo, block.hi)
        dq, drows = relative_block_backward(dlogits, self.qs[..., block.i0:block.i1, :], self.table, rows)
        self.dq[..., block.i0:block.i1, :] += dq
        self.dtable[..., rows, :] += drows.sum(axis=tuple(range(drows.ndim - self.table.ndim)))

    def gradients(self):
        """(d qs, d rel) summed over every block handed to ``backward``."""
        if self.dq is None:
            return np.zeros_like(self.qs), np.zeros_like(self.rel)
        dq, drel = self.dq, self.dtable[..., :self.rel.shape[-2], :]
        self.dq = self.dtable = None
        return dq, drel


def attention_forward(x, w_qkv, b_qkv, w_o, b_o, spec, *, rel=None, kv=None, start=0):
    """Causal multi-head self-attention with an output projection.

    ``softmax(q k^T / sqrt(D) + skew(q rel^T) / sqrt(D), causal [+ window]) v`` by
    blocks of queries (:func:`attention.causal_attention_blocks`, each block one call
    of ``scaled_dot_product_attention``); soft-align mixes its two branches.

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
    q, k, v = split_heads(qkv, spec.n_heads)                   # (B, H, T, D) each
    T, D = q.shape[-2:]
    positions = np.arange(start, start + T)
    v = _append(None if kv is None else kv.v, v, start)       # (B, H, S, D)
    scale = 1.0 / math.sqrt(D)
    bias = None if rel is None else _RelativeBias(q * q.dtype.type(scale), rel, start, spec.query_block)
    buffers = (None, None) if kv is None else (kv.k, kv.k_rot)
    branches, y = [], None
    for (weight, rotated, qb, kb, window), buffer in zip(branch_inputs(q, k, spec, positions), buffers):
        keys = _append(buffer, kb, start)                      # (B, H, S, D)
        blocks = causal_attention_blocks(qb, keys, v, start=start, window=window, bias=bias,
                                         scale=scale, size=spec.query_block)
        branches.append(Branch(weight, rotated, qb, keys, blocks))
        out = blocks[0].out if len(blocks) == 1 else np.concatenate([b.out for b in blocks], -2)
        if y is None:      # soft-align: y = alpha * local + (1 - alpha) * global
            y = out if weight == 1.0 else out * q.dtype.type(weight)
        else:
            y += out * q.dtype.type(weight)
    out, proj_cache = linear_forward(merge_heads(y), w_o, b_o)  # (B, H, T, D) -> (B, T, C)
    return out, AttentionCache(qkv_cache, proj_cache, q, v, tuple(branches), bias, positions, spec)


def attention_backward(dout, cache):
    """Returns (dx, dw_qkv, db_qkv, dw_o, db_o, drel) (drel None without relative).

    Only for a forward without a KV cache (S == T), as in training.
    """
    q, v, spec = cache.q, cache.v, cache.spec
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D)
    # forward was: out = merge_heads(y) @ w_o + b_o
    dy, dw_o, db_o = linear_backward(dout, cache.proj)
    dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)             # (B, T, C) -> (B, H, T, D)
    dqkv = np.zeros((3, B, H, T, D), dtype=dout.dtype)            # dq, dk, dv
    relative = cache.relative
    for branch in cache.branches:
        # forward was: y += weight * attention(q_b, k_b, v)
        dyb = dy if branch.weight == 1.0 else dy * dy.dtype.type(branch.weight)
        dq, dk, dv = causal_attention_blocks_backward(dyb, branch.q, branch.k, v, branch.blocks,
                                                      scale, None if relative is None else relative.backward)
        if branch.rotated:
            # forward was: q = apply_rope(q, positions); its adjoint is the inverse rotation
            dq = apply_rope(dq, cache.positions, base=spec.rope_base, inverse=True)
            dk = apply_rope(dk, cache.positions, base=spec.rope_base, inverse=True)
        dqkv[0] += dq
        dqkv[1] += dk
        dqkv[2] += dv
    drel = None
    if relative is not None:
        # forward was: bias = relative logits of (q * scale, rel), block by block
        dq_rel, drel = relative.gradients()
        dq_rel *= scale
        dqkv[0] += dq_rel
    dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * D)  # (3, B, H, T, D) -> (B, T, 3C)
    # forward was: q, k, v = split_heads(x @ w_qkv + b_qkv)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, cache.qkv)
    return dx, dw_qkv, db_qkv, dw_o, db_o, drel


# --------------------------------------------------------------------------- decode step
#
# The decode step runs the forward of one new token per sequence as few numpy calls
# as it can: each layer norm is folded into the linear map after it (so a norm is
# five calls and its affine part is free), the biases ride in the product as a row of
# the weight times a constant 1, GELU's one half is folded into the second
# feed-forward weight, and every result goes into a buffer allocated once per cache.
# The readable layers above are the reference it is tested against.


class DecodeBlock(NamedTuple):
    """One block's weights arranged for the decode step (see :func:`fold_layernorm`)."""
    qkv: np.ndarray              # (C+2, 3C): ln1 folded in, query columns times 1/sqrt(D)
    o: np.ndarray                # (C+1, C): w_o over b_o
    rel: Optional[np.ndarray]    # (H, D, L) relative embeddings transposed, or None
    ff1: np.ndarray              # (C+2, F): ln2 folded in
    ff2: np.ndarray              # (F+1, C): 0.5 w2 (GELU's half) over b2


class DecodeWork(NamedTuple):
    """Scratch rows of the decode step for a batch of B, allocated once per cache.

    ``norm`` and ``ff`` end in constant columns (sqrt(C eps), 1) and (1,) that carry
    the folded layer norm's epsilon and the biases through the matrix products.
    """
    x: np.ndarray                # (B, C) residual stream
    norm: np.ndarray             # (B, C+2) [normalised rows, sqrt(C eps), 1]
    mean: np.ndarray             # (B, 1) row means
    ss: np.ndarray               # (B, 1, 1) row norms
    qkv: np.ndarray              # (B, 3C)
    heads: np.ndarray            # (B, 3, H, D) view of qkv
    att: np.ndarray              # (B, C+1) [attention output, 1]
    y: np.ndarray                # (B, H, 1, D) view of att[:, :C]
    proj: np.ndarray             # (B, C) output of a block's branch
    ff: np.ndarray               # (B, F+1) [feed-forward hidden, 1]
    gelu: np.ndarray             # (B, F) GELU's tanh
    scores: np.ndarray           # (B*H*L,) flat: (B, H, 1, S) logits, viewed per step
    bias: np.ndarray             # (H*B*L,) flat: (H, B, S) relative logits
    stat: np.ndarray             # (B, H, 1, 1) row max, then row sum
    acc: np.ndarray              # (B, H, 1, D) unnormalised attention output
    mix: np.ndarray              # (B, H, 1, D) soft-align's second branch
    logits: np.ndarray           # (B, V)


def fold_layernorm(gamma, beta, weight, bias):
    """(C+2, out) weight of ``linear(layernorm(x))`` for rows from :func:`layernorm_decode`.

    With n = (x - mean) / sqrt(sum (x - mean)^2 + C eps) = xhat / sqrt(C), the map is
    [n, sqrt(C eps), 1] @ [sqrt(C) gamma w; 0; beta @ w + b].
    """
    C, N = weight.shape
    out = np.empty_like(weight, shape=(C + 2, N))
    np.multiply(weight, (gamma * weight.dtype.type(math.sqrt(C)))[:, None], out=out[:C])
    out[C] = 0.0
    np.add(beta @ weight, bias, out=out[C + 1])
    return out


def _stack_bias(weight, bias, scale=1.0):
    """(Cin+1, Cout) weight of ``x @ (scale * weight) + bias`` for rows ending in a 1."""
    out = np.empty_like(weight, shape=(weight.shape[0] + 1, weight.shape[1]))
    np.multiply(weight, weight.dtype.type(scale), out=out[:-1])
    out[-1] = bias
    return out


def decode_block(params, pre, spec):
    """The DecodeBlock of block ``pre`` ("h0.") of a parameter dict."""
    p = {k[len(pre):]: v for k, v in params.items() if k.startswith(pre)}
    C = p["ln1.g"].shape[0]
    qkv = fold_layernorm(p["ln1.g"], p["ln1.b"], p["attn.w_qkv"], p["attn.b_qkv"])
    qkv[:, :C] *= qkv.dtype.type(1.0 / math.sqrt(C // spec.n_heads))    # the query columns
    rel = None if "attn.rel" not in p else np.ascontiguousarray(p["attn.rel"].swapaxes(-1, -2))
    return DecodeBlock(qkv=qkv, o=_stack_bias(p["attn.w_o"], p["attn.b_o"]), rel=rel,
                       ff1=fold_layernorm(p["ln2.g"], p["ln2.b"], p["ff.w1"], p["ff.b1"]),
                       ff2=_stack_bias(p["ff.w2"], p["ff.b2"], 0.5))


def decode_work(like, B, C, F, H, L, V):
    """Fresh DecodeWork for a batch of B (arrays of the type and dtype of ``like``)."""
    def new(*shape):
        return np.zeros_like(like, shape=shape)
    D = C // H
    qkv, att = new(B, 3 * C), new(B, C + 1)
    work = DecodeWork(x=new(B, C), norm=new(B, C + 2), mean=new(B, 1), ss=new(B, 1, 1),
                      qkv=qkv, heads=qkv.reshape(B, 3, H, D), att=att,
                      y=att[:, :C].reshape(B, H, 1, D), proj=new(B, C), ff=new(B, F + 1),
                      gelu=new(B, F), scores=new(B * H * L), bias=new(H * B * L),
                      stat=new(B, H, 1, 1), acc=new(B, H, 1, D), mix=new(B, H, 1, D),
                      logits=new(B, V))
    work.norm[:, C] = math.sqrt(C * LN_EPS)
    work.norm[:, C + 1] = work.att[:, C] = work.ff[:, F] = 1.0
    return work


def layernorm_decode(x, work):
    """Rows of x (B, C) into ``work.norm[:, :C]`` as (x - mean) / sqrt(sum (x - mean)^2 + C eps).

    ``work.norm @ fold_layernorm(gamma, beta, w, b)`` is then
    ``linear_forward(layernorm_forward(x, gamma, beta), w, b)``; five numpy calls.
    """
    C = x.shape[1]
    n = work.norm[:, :C]
    np.subtract(x, np.matmul(x, _mean_weights(C, x.dtype), out=work.mean), out=n)
    sq = work.norm[:, None, :C + 1]                            # (B, 1, C+1): [x - mean, sqrt(C eps)]
    np.sqrt(np.matmul(sq, sq.swapaxes(-1, -2), out=work.ss), out=work.ss)
    np.divide(n, work.ss[:, 0], out=n)
    return work.norm


def gelu_decode(f, t):
    """f (B, F) -> 2 gelu(f) in place, ``t`` (B, F) scratch; the 1/2 is folded into ff2."""
    np.multiply(f, f, out=t)
    t *= _GELU_C * 0.044715
    t += _GELU_C
    t *= f                             # u = c (f + 0.044715 f^3)
    np.tanh(t, out=t)
    t += 1.0
    f *= t
    return f


def feedforward_decode(h, block, work):
    """The feed-forward branch of one block: ``work.norm`` (B, C+2) -> (B, C) in ``work.proj``."""
    F = block.ff1.shape[1]
    f = np.matmul(h, block.ff1, out=work.ff[:, :F])            # (B, C+2) @ (C+2, F)
    gelu_decode(f, work.gelu)
    return np.matmul(work.ff, block.ff2, out=work.proj)        # (B, F+1) @ (F+1, C)


def attention_decode(h, block, spec, kv, start, work):
    """:func:`attention_forward` of one new token per sequence, into the KV cache ``kv``.

    The decode step of generation: h (B, C+2) the normalised rows of
    :func:`layernorm_decode` at position ``start``; the new key and value are written
    into ``kv`` and the query attends over keys ``0..start`` by
    :func:`attention.decode_attention` (no mask, no weights kept). Returns (B, C) in
    ``work.proj``.
    """
    B, _, H, _ = work.heads.shape
    S = start + 1
    np.matmul(h, block.qkv, out=work.qkv)                                # q already scaled
    qkv = work.heads                                                     # (B, 3, H, D)
    q = qkv[:, 0, :, None, :]                                            # (B, H, 1, D)
    kv.v[:, :, start] = qkv[:, 2]
    if spec.rope or spec.alpha is not None:
        branches = branch_inputs(q, qkv[:, 1, :, None, :], spec, np.array([start]))
    else:
        branches = [(1.0, False, q, qkv[:, 1, :, None, :], spec.window)]
    bias = None
    if block.rel is not None:          # relative_logits of one query: no skew, distances S-1 .. 0
        L = block.rel.shape[-1]        # one product per head for the whole batch:
        bias = np.matmul(qkv[:, 0].swapaxes(0, 1), block.rel[..., L - S:],   # (H, B, D) @ (H, D, S)
                         out=work.bias[:H * B * S].reshape(H, B, S))
        bias = bias.swapaxes(0, 1)[:, :, None, :]                          # (H, B, S) -> (B, H, 1, S)
    y = work.y
    for i, ((weight, _, qb, kb, window), keys) in enumerate(zip(branches, (kv.k, kv.k_rot))):
        keys[:, :, start] = kb[..., 0, :]
        lo = 0 if window is None else max(0, S - window)
        out = (y, work.mix)[i]
        decode_attention(qb, keys[:, :, lo:S], kv.v[:, :, lo:S], bias=None if bias is None else bias[..., lo:],
                         scores=work.scores[:B * H * (S - lo)].reshape(B, H, 1, S - lo),
                         stat=work.stat, acc=work.acc, out=out)
        if weight != 1.0:              # soft-align: y = alpha * local + (1 - alpha) * global
            out *= out.dtype.type(weight)
    if len(branches) > 1:
        y += work.mix
    return np.matmul(work.att, block.o, out=work.proj)                  # (B, C+1) @ (C+1, C)


# --------------------------------------------------------------------------- loss

class CrossEntropyCache(NamedTuple):
    probs: np.ndarray        # (N, V)
    targets: np.ndarray      # (N,)
    valid: np.ndarray        # (N,) bool: targets >= 0
    count: int
    soft: np.ndarray = None  # (N, V) target distributions, or None: one-hot targets


def cross_entropy_forward(logits, targets, count=None, soft=None):
    """Mean negative log-likelihood of ``targets`` (negative targets are ignored).

    logits (..., V), targets (...) int -> scalar loss (nats per counted token).
    ``count`` overrides the number of tokens to divide by (a part of a larger batch).
    ``soft`` (..., V): a target distribution per position instead of the one-hot of
    ``targets`` (which then only marks the positions counted): ``-sum_v soft_v log p_v``.
    """
    V = logits.shape[-1]
    logits = logits.reshape(-1, V)                              # (..., V) -> (N, V)
    targets = targets.reshape(-1)
    logp = log_softmax(logits)                                  # (N, V)
    valid = targets >= 0
    count = max(int(valid.sum()), 1) if count is None else count
    rows = np.flatnonzero(valid)
    if soft is not None:
        soft = np.asarray(soft, dtype=logp.dtype).reshape(-1, V)
        loss = -float(np.sum(soft[rows] * logp[rows])) / count
    else:
        loss = -float(np.sum(logp[rows, targets[rows]])) / count
    probs = np.exp(logp, out=logp)
    return loss, CrossEntropyCache(probs, targets, valid, count, soft)


def cross_entropy_backward(dloss, cache, shape=None):
    """d logits (N, V) (reshaped to ``shape`` when given)."""
    probs, targets, valid, count, soft = cache
    # forward was: loss = -mean(log_softmax(logits)[target])  =>  d logits = probs - onehot(target)
    dlogits = probs * (dloss / count)
    rows = np.flatnonzero(valid)
    if soft is not None:                                        # d logits = probs - soft
        dlogits[rows] -= soft[rows] * (dloss / count)
    else:
        dlogits[rows, targets[rows]] -= dloss / count
    dlogits[~valid] = 0.0
    return dlogits if shape is None else dlogits.reshape(shape)
