"""The decoder-only transformer: config, parameters, forward (with a KV cache) and backward.

A model is token embedding (scaled by sqrt(C)) + positions, ``n_layers`` pre-norm
blocks ``x += attn(ln1(x)); x += ff(ln2(x))``, a final layer norm and an output
head.  Positions are ``"sinusoidal"`` (added to the embedding), ``"rope"``
(rotary, applied to queries and keys) or ``"relative"`` (Music Transformer
relative logits, one learned table per layer).  Attention is ``"full"`` causal,
``"local"`` (each token sees its ``window`` most recent tokens) or
``"soft_align"`` (SAMUeL-GEN: ``alpha`` x local attention over ``window`` tokens
+ ``1 - alpha`` x full attention with rotary positions).

``Model.forward`` serves inference and the attention inspector;
``Model.loss_and_grads`` runs the same forward and then the hand-written backward
of :mod:`music_attn.core.layers`.

Shape legend: B batch, T time (new tokens), S key length (cached + new),
C model dim, H heads, D head dim, F feed-forward dim, V vocab, L max length.
"""

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from music_attn.errors import brief
from music_attn.core.layers import (
    AttentionSpec, LayerKV,
    attention_backward, attention_decode, attention_forward, decode_block, decode_work,
    condition_backward, condition_forward,
    feedforward_decode, fold_layernorm, layernorm_decode,
    cross_entropy_backward, cross_entropy_forward,
    dropout_backward, dropout_forward,
    embedding_backward, embedding_forward,
    gelu_backward, gelu_forward,
    layernorm_backward, layernorm_forward,
    linear_backward, linear_forward,
)
from music_attn._threads import cpu_count, single_threaded_blas, sized_blas, thread_pool
from music_attn.core.positional import sinusoidal

__all__ = ["ModelConfig", "Model", "KVCache", "init_model", "POSITIONALS", "ATTENTIONS"]

POSITIONALS = ("sinusoidal", "rope", "relative")
ATTENTIONS = ("full", "local", "soft_align")


@dataclass(frozen=True)
class ModelConfig:
    """Every hyper-parameter of a model; saved with its weights.

    Attributes
    ----------
    vocab_size : V, the tokenizer's vocabulary size.
    d_model, n_layers, n_heads, d_ff : C, number of blocks, H, F.
    max_len : L, the longest sequence (and KV cache) the model takes.
    positional : "sinusoidal" | "rope" | "relative".
    attention : "full" | "local" | "soft_align".
    window : local attention window (also the local half of soft-align).
    alpha : soft-align weight of the local attention (0 = full, 1 = local).
    rope_base : rotary frequency base.
    dropout : probability of dropping each element of the attention and
        feed-forward outputs before they join the residual stream, in training
        only (``loss_and_grads`` with an ``rng``); 0 = off.
    period : 0 (off), or P: a learned embedding of each position modulo P is
        added to the input (the 4 voices x 4 sixteenths of a beat of the
        four-voice grid, for P = 16).  The position is counted from the start
        of the model's input, so windows of a longer sequence must start at
        multiples of P (:mod:`music_attn.runtime.windows` does so).
    condition : 0 (off), or K: the model also reads K condition tokens at each
        position (the harmonizer: the soprano of the next K sixteenths), each added
        to the input through a learned embedding per offset (``cond_emb``, (K, V, C));
        ``forward``, ``loss``, ``loss_and_grads`` and ``decode`` then need
        ``condition``, int token ids (B, T, K) ((B, K) for ``decode``).
    """
    vocab_size: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    max_len: int = 256
    positional: str = "relative"
    attention: str = "full"
    window: int = 32
    alpha: float = 0.5
    rope_base: float = 10000.0
    dropout: float = 0.0
    period: int = 0
    condition: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {brief(value)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.positional not in POSITIONALS:
            raise ValueError(f"positional must be one of {POSITIONALS}, got {self.positional!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if (self.positional == "rope" or self.attention == "soft_align") and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {self.head_dim}")
        if isinstance(self.period, bool) or not isinstance(self.period, (int, np.integer)) \
                or not 0 <= self.period <= self.max_len:
            raise ValueError(f"ModelConfig.period must be an integer in [0, max_len], got {self.period!r}")
        if isinstance(self.condition, bool) or not isinstance(self.condition, (int, np.integer)) \
                or not 0 <= self.condition <= 4096:
            raise ValueError(f"ModelConfig.condition must be an integer in [0, 4096], got {self.condition!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")

    @property
    def head_dim(self):
        return self.d_model // self.n_heads

    def to_dict(self):
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        return cls(**d)


def param_shapes(config):
    """Name -> shape of every parameter of a model with this config (in a fixed order)."""
    C, F, V, H = config.d_model, config.d_ff, config.vocab_size, config.n_heads
    shapes = {"tok_emb": (V, C)}
    if config.period:
        shapes["period_emb"] = (config.period, C)
    if config.condition:
        shapes["cond_emb"] = (config.condition, V, C)
    for i in range(config.n_layers):
        p = f"h{i}."
        shapes.update({
            p + "ln1.g": (C,), p + "ln1.b": (C,),
            p + "attn.w_qkv": (C, 3 * C), p + "attn.b_qkv": (3 * C,),
            p + "attn.w_o": (C, C), p + "attn.b_o": (C,),
        })
        if config.positional == "relative":
            shapes[p + "attn.rel"] = (H, config.max_len, config.head_dim)
        shapes.update({
            p + "ln2.g": (C,), p + "ln2.b": (C,),
            p + "ff.w1": (C, F), p + "ff.b1": (F,),
            p + "ff.w2": (F, C), p + "ff.b2": (C,),
        })
    shapes.update({"ln_f.g": (C,), "ln_f.b": (C,), "head.w": (C, V), "head.b": (V,)})
    return shapes


def init_model(config, rng, *, dtype=np.float32, tokenizer=None):
    """A freshly initialised model.

    Weights ~ N(0, 0.02) (GPT-2), residual projections scaled by 1/sqrt(2 n_layers),
    embedding ~ N(0, 1/C) (scaled by sqrt(C) in the forward), biases 0, norms 1.

    Parameters
    ----------
    config : ModelConfig
    rng : np.random.Generator
    dtype : float dtype of the parameters (float32; float64 for gradient checks).
    tokenizer : optional tokenizer to attach.
    """
    residual_std = 0.02 / np.sqrt(2 * config.n_layers)
    params = {}
    for name, shape in param_shapes(config).items():
        if name == "tok_emb":
            value = rng.normal(0.0, config.d_model ** -0.5, shape)
        elif name.endswith((".g",)):
            value = np.ones(shape)
        elif name.endswith(("attn.w_o", "ff.w2")):
            value = rng.normal(0.0, residual_std, shape)
        elif name.endswith((".w_qkv", ".w1", ".w", ".rel", "period_emb", "cond_emb")):
            value = rng.normal(0.0, 0.02, shape)
        else:
            value = np.zeros(shape)
        params[name] = value.astype(dtype)
    return Model(config, params, tokenizer=tokenizer)


class KVCache:
    """Preallocated keys and values of every layer.

    ``model.forward(ids, cache=c)`` writes the new keys/values at positions
    ``len(c) .. len(c)+T-1`` and advances ``len(c)``; nothing is ever concatenated.
    Like the keys and values it holds, a cache belongs to the weights that filled
    it: ``Model.decode`` keeps its rearranged copy of them in ``work``, so weights
    changed in place afterwards need a new cache.
    """

    def __init__(self, config, batch, dtype):
        shape = (batch, config.n_heads, config.max_len, config.head_dim)   # (B, H, L, D)
        rot = config.attention == "soft_align"      # soft-align also keeps RoPE-rotated keys
        self.layers = [LayerKV(np.zeros(shape, dtype), np.zeros(shape, dtype),
                               np.zeros(shape, dtype) if rot else None)
                       for _ in range(config.n_layers)]
        self.batch = batch
        self.length = 0
        self.work = {}             # Model.decode's weights and scratch buffers, made at its first step

    def __len__(self):
        return self.length

    def reset(self):
        """Forget everything (the buffers are reused)."""
        self.length = 0

    def repeat(self, batch):
        """A new cache of ``batch`` sequences, each a copy of this cache's single sequence."""
        if self.batch != 1:
            raise ValueError(f"only a cache of one sequence can be repeated, this one holds {self.batch}")
        out = copy.copy(self)
        out.layers = [LayerKV(*(None if a is None else self._repeated(a, batch) for a in kv))
                      for kv in self.layers]                   # (1, H, L, D) -> (batch, H, L, D)
        out.batch, out.work = batch, {}
        return out

    def _repeated(self, a, batch):
        """(1, H, L, D) -> (batch, H, L, D): only the filled positions are copied; the rest
        are fresh zero pages, never touched until written."""
        out = np.zeros((batch,) + a.shape[1:], a.dtype)
        out[:, :, :self.length] = a[:, :, :self.length]
        return out


class DecodeWeights(NamedTuple):
    """The weights as the decode step reads them (:meth:`Model.decode`)."""
    emb: np.ndarray          # (V, C) token embedding times sqrt(C)
    blocks: list             # layers.DecodeBlock per block
    head: np.ndarray         # (C+2, V) ln_f folded into the output head


class BlockCache(NamedTuple):
    ln1: tuple
    attn: tuple
    drop1: tuple
    ln2: tuple
    ff1: tuple
    gelu: tuple
    ff2: tuple
    drop2: tuple


class ForwardCache(NamedTuple):
    emb: tuple
    period: tuple            # EmbeddingCache of the position-modulo-period lookup, or None
    condition: tuple         # ConditionCache of the condition tokens, or None
    blocks: list
    ln_f: tuple
    head: tuple


class Model:
    """A decoder-only transformer over token ids.

    Parameters
    ----------
    config : ModelConfig
    params : dict name -> ndarray, shapes as :func:`param_shapes` (checked).
    tokenizer : the tokenizer the model was trained with, or None.
    """

    def __init__(self, config, params, tokenizer=None):
        check_params(config, params)
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.dtype = params["tok_emb"].dtype
        self._spec = AttentionSpec(
            n_heads=config.n_heads,
            rope=config.positional == "rope",
            rope_base=config.rope_base,
            window=config.window if config.attention == "local" else None,
            alpha=config.alpha if config.attention == "soft_align" else None,
            align_window=config.window if config.attention == "soft_align" else None,
        )
        self._pe = (sinusoidal(config.max_len, config.d_model, dtype=self.dtype)
                    if config.positional == "sinusoidal" else None)

    def __repr__(self):
        c = self.config
        return (f"Model(d_model={c.d_model}, n_layers={c.n_layers}, n_heads={c.n_heads}, "
                f"positional={c.positional!r}, attention={c.attention!r}, params={self.n_params:,})")

    @property
    def n_params(self):
        return int(sum(p.size for p in self.params.values()))

    def astype(self, dtype):
        """A copy of the model with parameters of another float dtype."""
        params = {k: v.astype(dtype) for k, v in self.params.items()}
        return Model(self.config, params, tokenizer=self.tokenizer)

    def forward_flops(self, batch, tokens, start=0):
        """FLOP of a forward pass over ``batch`` x ``tokens`` new tokens after ``start`` cached:
        the matrix products (layers, output head, attention scores, relative logits and
        the weighted sum of the values); norms, softmax and GELU are left out."""
        c = self.config
        n = batch * tokens
        linear = n * (4 * c.d_model ** 2 + 2 * c.d_model * c.d_ff)      # qkv, out, two feed-forward
        keys = batch * sum(min(start + t + 1, c.max_len) for t in range(tokens))   # causal pairs
        attention = keys * c.d_model * (3 if c.positional == "relative" else 2)
        return 2 * (c.n_layers * (linear + attention) + n * c.d_model * c.vocab_size)

    def new_cache(self, batch=1):
        """An empty KVCache for ``batch`` sequences."""
        return KVCache(self.config, batch, self.dtype)

    def forward(self, ids, *, cache=None, return_attention=False, condition=None):
        """Next-token logits for every position.

        Parameters
        ----------
        ids : (B, T) int token ids.
        condition : (B, T, K) int condition tokens, for a model with ``config.condition``.
        cache : KVCache or None.  With a cache, ``ids`` continue the sequences
            already in it (positions ``len(cache)..``) and are appended to it.
        return_attention : also return the attention probabilities.

        Returns
        -------
        logits : (B, T, V) in the model's dtype (float32).
        attention : (L, B, H, T, S) float32, only with ``return_attention``:
            the softmax probabilities each layer used (S = cached + T).
        """
        shape, start = np.shape(ids), 0 if cache is None else len(cache)
        with sized_blas(self.forward_flops(*shape, start) if len(shape) == 2 else 0):
            logits, fwd = self._forward(ids, cache, condition=condition)
        if not return_attention:
            return logits
        B, T = np.shape(ids)
        S = T + (0 if cache is None else len(cache) - T)
        attention = np.empty((len(fwd.blocks), B, self.config.n_heads, T, S), np.float32)
        for layer, block in zip(attention, fwd.blocks):
            block.attn.write_probs(layer)                            # (B, H, T, S)
        return logits, attention

    def decode(self, tokens, cache, condition=None):
        """Next-token logits (B, V) after one more token per sequence: the decode step.

        Equal to ``forward(tokens[:, None], cache=cache)[:, -1]`` (tested), by the
        single-query path of :mod:`layers` (``*_decode``): one row per sequence, the
        weights rearranged once per cache (layer norms folded into the products
        after them), scratch buffers reused from step to step, attention by
        :func:`attention.decode_attention`. The logits are returned in a buffer the
        next call overwrites.

        tokens : (B,) int, one token per sequence of ``cache``.
        condition : (B, K) int condition tokens, for a model with ``config.condition``.
        """
        tokens = np.asarray(tokens).reshape(-1)
        _, start = self._check_ids(tokens[:, None], cache)
        weights, work = self._decode_state(cache)
        x = np.take(weights.emb, tokens, axis=0, out=work.x)        # (B, C)
        if self.config.condition:
            x += self._condition(None if condition is None else np.asarray(condition)[:, None],
                                 tokens[:, None].shape)[0][:, 0]
        if self._pe is not None:
            x += self._pe[start]
        if self.config.period:
            x += self.params["period_emb"][start % self.config.period]
        for block, kv in zip(weights.blocks, cache.layers):
            h = layernorm_decode(x, work)                           # (B, C+2)
            x += attention_decode(h, block, self._spec, kv, start, work)
            h = layernorm_decode(x, work)
            x += feedforward_decode(h, block, work)                 # (B, C)
        h = layernorm_decode(x, work)
        cache.length += 1
        return np.matmul(h, weights.head, out=work.logits)          # (B, C+2) @ (C+2, V)

    def _decode_state(self, cache):
        """(DecodeWeights, DecodeWork) of this model for ``cache``, made at its first decode step."""
        state = cache.work.get("decode")
        if state is None or state[0] is not self.params:
            c, p = self.config, self.params
            weights = DecodeWeights(
                emb=p["tok_emb"] * self.dtype.type(math.sqrt(c.d_model)),     # as forward scales it
                blocks=[decode_block(p, f"h{i}.", self._spec) for i in range(c.n_layers)],
                head=fold_layernorm(p["ln_f.g"], p["ln_f.b"], p["head.w"], p["head.b"]))
            work = decode_work(p["tok_emb"], cache.batch, c.d_model, c.d_ff, c.n_heads, c.max_len,
                               c.vocab_size)
            state = cache.work["decode"] = (self.params, weights, work)
        return state[1], state[2]

    def loss_and_grads(self, ids, targets, *, workers=None, rng=None, condition=None, soft=None):
        """Mean cross-entropy of ``targets`` given ``ids`` and its gradient.

        Parameters
        ----------
        ids : (B, T) int inputs.
        targets : (B, T) int next tokens; negative targets are not counted.
        workers : split the batch over this many threads (each calling BLAS
            single-threaded) and sum their gradients in a fixed order: the same
            ``workers`` always gives the same bits.  Default: one per CPU core.
        rng : np.random.Generator drawing the dropout masks (one seed per
            batch part); None, or ``config.dropout == 0``, trains without dropout.
        condition : (B, T, K) int condition tokens, for a model with ``config.condition``.
        soft : (B, T, V) a target distribution per position (distillation), in place of
            the one-hot of ``targets``, which then only marks the positions counted.

        Returns
        -------
        loss : float, nats per counted token.
        grads : dict name -> ndarray, the same keys and shapes as ``params``.
        """
        ids, targets = np.asarray(ids), np.asarray(targets)
        count = max(int(np.sum(targets >= 0)), 1)
        parts = _row_parts(len(ids), workers)
        rngs = _part_rngs(rng if self.config.dropout else None, len(parts))
        cond, dist = _rows_of(condition), _rows_of(soft)
        results = parallel_map(lambda k: self._loss_and_grads(ids[parts[k]], targets[parts[k]], count, rngs[k],
                                                               cond(parts[k]), dist(parts[k])),
                               range(len(parts)), workers)
        loss, grads = results[0]
        for part_loss, part_grads in results[1:]:
            loss += part_loss
            for name, g in part_grads.items():
                grads[name] += g
        return loss, grads

    def _loss_and_grads(self, ids, targets, count, rng=None, condition=None, soft=None):
        """Summed cross-entropy / ``count`` of these rows and its gradient (dropout drawn from ``rng``)."""
        logits, fwd = self._forward(ids, None, rng, condition)
        loss, ce = cross_entropy_forward(logits, targets, count, soft)
        dlogits = cross_entropy_backward(1.0, ce, logits.shape)
        return loss, self._backward(dlogits, fwd)

    def loss(self, ids, targets, *, workers=None, condition=None):
        """Mean cross-entropy (nats per counted token) without gradients."""
        ids, targets = np.asarray(ids), np.asarray(targets)
        count = max(int(np.sum(targets >= 0)), 1)
        cond = _rows_of(condition)

        def part(rows):
            return cross_entropy_forward(self._forward(ids[rows], None, condition=cond(rows))[0],
                                         targets[rows], count)[0]
        return float(sum(parallel_map(part, _row_parts(len(ids), workers), workers)))

    # ------------------------------------------------------------------ forward

    def _check_ids(self, ids, cache):
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be an integer array of shape (B, T), got {ids.dtype} {ids.shape}")
        start = 0 if cache is None else cache.length
        if start + ids.shape[1] > self.config.max_len:
            raise ValueError(f"{start} cached + {ids.shape[1]} new tokens exceed "
                             f"max_len={self.config.max_len}")
        if cache is not None and cache.batch != ids.shape[0]:
            raise ValueError(f"ids have batch {ids.shape[0]} but the cache holds {cache.batch}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), "
                             f"got {ids.min()}..{ids.max()}")
        return ids, start

    def _condition(self, condition, shape):
        """(x (B, T, C), ConditionCache) of the condition tokens (B, T, K); ValueError if unfit."""
        K, V = self.config.condition, self.config.vocab_size
        if condition is None:
            raise ValueError(f"this model reads {K} condition tokens at each position: pass condition=")
        condition = np.asarray(condition)
        if condition.shape != (*shape, K) or not np.issubdtype(condition.dtype, np.integer):
            raise ValueError(f"condition must be integer ids of shape {(*shape, K)}, got "
                             f"{condition.dtype} {condition.shape}")
        if condition.size and (condition.min() < 0 or condition.max() >= V):
            raise ValueError(f"condition ids must lie in [0, {V})")
        return condition_forward(condition, self.params["cond_emb"])

    def _forward(self, ids, cache, rng=None, condition=None):
        """Logits (B, T, V) and the ForwardCache the backward needs (dropout only with ``rng``)."""
        ids, start = self._check_ids(ids, cache)
        p, T = self.params, ids.shape[1]
        x, emb = embedding_forward(ids, p["tok_emb"])            # (B, T, C)
        x *= math.sqrt(self.config.d_model)
        if self._pe is not None:
            x += self._pe[start:start + T]
        period = None
        if self.config.period:
            phase = np.broadcast_to((start + np.arange(T)) % self.config.period, ids.shape)   # (B, T)
            step, period = embedding_forward(phase, p["period_emb"])
            x += step
        cond = None
        if self.config.condition:                                  # x += sum_k cond_emb[k, condition[..., k]]
            extra, cond = self._condition(condition, ids.shape)
            x += extra
        blocks = []
        for i in range(self.config.n_layers):
            kv = None if cache is None else cache.layers[i]
            x, block = self._block_forward(x, f"h{i}.", kv, start, rng)
            blocks.append(block)
        h, ln_f = layernorm_forward(x, p["ln_f.g"], p["ln_f.b"])
        logits, head = linear_forward(h, p["head.w"], p["head.b"])  # (B, T, V)
        if cache is not None:
            cache.length += T
        return logits, ForwardCache(emb, period, cond, blocks, ln_f, head)

    def _block_forward(self, x, pre, kv, start, rng=None):
        """One pre-norm block: x += drop(attn(ln1(x))); x += drop(ff(ln2(x)))."""
        p, rate = self.params, self.config.dropout
        h, ln1 = layernorm_forward(x, p[pre + "ln1.g"], p[pre + "ln1.b"])
        a, attn = attention_forward(h, p[pre + "attn.w_qkv"], p[pre + "attn.b_qkv"],
                                    p[pre + "attn.w_o"], p[pre + "attn.b_o"], self._spec,
                                    rel=p.get(pre + "attn.rel"), kv=kv, start=start)
        a, drop1 = dropout_forward(a, rate, rng)
        x = x + a
        h, ln2 = layernorm_forward(x, p[pre + "ln2.g"], p[pre + "ln2.b"])
        f, ff1 = linear_forward(h, p[pre + "ff.w1"], p[pre + "ff.b1"])   # (B, T, F)
        g, gelu = gelu_forward(f)
        m, ff2 = linear_forward(g, p[pre + "ff.w2"], p[pre + "ff.b2"])   # (B, T, C)
        m, drop2 = dropout_forward(m, rate, rng)
        x += m
        return x, BlockCache(ln1, attn, drop1, ln2, ff1, gelu, ff2, drop2)

    # ------------------------------------------------------------------ backward

    def _backward(self, dlogits, fwd):
        """Gradients of every parameter given d logits (B, T, V)."""
        grads = {}
        # forward was: logits = ln_f(x) @ head.w + head.b
        dh, grads["head.w"], grads["head.b"] = linear_backward(dlogits, fwd.head)
        dx, grads["ln_f.g"], grads["ln_f.b"] = layernorm_backward(dh, fwd.ln_f)
        for i in reversed(range(self.config.n_layers)):
            dx = self._block_backward(dx, fwd.blocks[i], f"h{i}.", grads)
        # forward was: x = tok_emb[ids] * sqrt(C) (+ pe) (+ period_emb[position % P])
        if fwd.period is not None:
            grads["period_emb"] = embedding_backward(dx, fwd.period)
        if fwd.condition is not None:
            grads["cond_emb"] = condition_backward(dx, fwd.condition)
        dx *= math.sqrt(self.config.d_model)
        grads["tok_emb"] = embedding_backward(dx, fwd.emb)
        return {name: grads[name] for name in self.params}

    def _block_backward(self, dx, block, pre, grads):
        """Backward of one block; fills ``grads`` and returns d x (B, T, C)."""
        # forward was: x += drop(ff.w2 @ gelu(ff.w1 @ ln2(x)))
        dm = dropout_backward(dx, block.drop2)
        dg, grads[pre + "ff.w2"], grads[pre + "ff.b2"] = linear_backward(dm, block.ff2)
        df = gelu_backward(dg, block.gelu)
        dh, grads[pre + "ff.w1"], grads[pre + "ff.b1"] = linear_backward(df, block.ff1)
        dln, grads[pre + "ln2.g"], grads[pre + "ln2.b"] = layernorm_backward(dh, block.ln2)
        dx = dx + dln
        # forward was: x = x + drop(attn(ln1(x)))
        dh, *dattn = attention_backward(dropout_backward(dx, block.drop1), block.attn)
        (grads[pre + "attn.w_qkv"], grads[pre + "attn.b_qkv"],
         grads[pre + "attn.w_o"], grads[pre + "attn.b_o"], drel) = dattn
        if drel is not None:
            grads[pre + "attn.rel"] = drel
        dln, grads[pre + "ln1.g"], grads[pre + "ln1.b"] = layernorm_backward(dh, block.ln1)
        dx += dln
        return dx


def _rows_of(condition):
    """rows -> the condition (or any per-row array) of those batch rows (None stays None)."""
    if condition is None:
        return lambda rows: None
    condition = np.asarray(condition)
    return lambda rows: condition[rows]


def _n_workers(workers, batch):
    """Threads to split a batch over: ``workers`` (default one per core), at most one per row."""
    workers = cpu_count() if workers is None else int(workers)
    return max(1, min(workers, batch))


def _row_parts(batch, workers):
    """Row indices of the batch, split into one part per worker."""
    return np.array_split(np.arange(batch), _n_workers(workers, batch))


def _part_rngs(rng, n):
    """One Generator per batch part, seeded from ``rng`` (None: n times None, no dropout)."""
    if rng is None:
        return [None] * n
    return [np.random.default_rng(seed) for seed in rng.integers(0, 2**63, size=n)]


def parallel_map(fn, items, workers=None):
    """``list(map(fn, items))`` on the model's thread pool, BLAS single-threaded meanwhile.

    For work that releases the GIL (large numpy operations); results in order.
    Two threads that each run half a batch on one core beat one thread with a
    two-thread BLAS, whose workers spin-wait badly when the cores are shared.
    """
    items = list(items)
    n = _n_workers(workers, len(items))
    if n == 1:
        with sized_blas():
            return [fn(item) for item in items]
    with single_threaded_blas():
        return list(thread_pool("model", n).map(fn, items))


def check_params(config, params):
    """Raise ValueError naming the first parameter missing or of the wrong shape."""
    shapes = param_shapes(config)
    missing = [name for name in shapes if name not in params]
    extra = [name for name in params if name not in shapes]
    if missing or extra:
        raise ValueError(f"parameters do not match the config: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in shapes.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, config needs {shape}")
    dtypes = {np.asarray(p).dtype for p in params.values()}
    if len(dtypes) != 1 or not np.issubdtype(next(iter(dtypes)), np.floating):
        raise ValueError(f"parameters must share one float dtype, got {sorted(map(str, dtypes))}")
