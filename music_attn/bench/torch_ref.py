"""The model's architecture written again in torch, for benchmarks and cross-checks only.

It loads a :class:`music_attn.core.model.Model`'s weights and must give the same
logits (``check_logits`` asserts 1e-4).  Written independently of
:mod:`music_attn.core.layers`, from the maths: pre-norm blocks, ``x @ W`` linears,
tanh GELU, layer norm with eps 1e-5, token embedding scaled by sqrt(C), and
sinusoidal, rotary (interleaved pairs) or Music Transformer relative positions.
Only ``attention="full"`` is mirrored.  torch is never a runtime dependency.

Shape legend: B batch, T new tokens, S keys, C model dim, H heads, D head dim, V vocab.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from music_attn.core.positional import sinusoidal

__all__ = ["TorchModel", "check_logits"]


class TorchModel:
    """Eager torch forward (with an optional KV cache) over a copy of a numpy model's weights."""

    def __init__(self, model, *, requires_grad=False, dtype=torch.float32):
        if model.config.attention != "full":
            raise ValueError(f"the torch reference mirrors full attention only, not {model.config.attention!r}")
        self.config = c = model.config
        self.p = {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=requires_grad)
                  for k, v in model.params.items()}
        self.pe = torch.tensor(sinusoidal(c.max_len, c.d_model), dtype=dtype)
        D = c.head_dim
        inv = c.rope_base ** (-np.arange(0, D, 2) / D)
        angles = np.arange(c.max_len)[:, None] * inv[None, :]                 # (L, D/2)
        self.cos = torch.tensor(np.cos(angles), dtype=dtype)
        self.sin = torch.tensor(np.sin(angles), dtype=dtype)

    def parameters(self):
        return list(self.p.values())

    def new_cache(self):
        return {"len": 0, "k": [None] * self.config.n_layers, "v": [None] * self.config.n_layers}

    def forward(self, ids, cache=None):
        """ids (B, T) int64 tensor -> logits (B, T, V)."""
        c, p = self.config, self.p
        start = 0 if cache is None else cache["len"]
        T = ids.shape[1]
        x = p["tok_emb"][ids] * math.sqrt(c.d_model)                          # (B, T, C)
        if c.positional == "sinusoidal":
            x = x + self.pe[start:start + T]
        for i in range(c.n_layers):
            x = self._block(x, f"h{i}.", i, cache, start)
        x = F.layer_norm(x, (c.d_model,), p["ln_f.g"], p["ln_f.b"], eps=1e-5)
        if cache is not None:
            cache["len"] += T
        return x @ p["head.w"] + p["head.b"]

    def _block(self, x, pre, layer, cache, start):
        c, p = self.config, self.p
        h = F.layer_norm(x, (c.d_model,), p[pre + "ln1.g"], p[pre + "ln1.b"], eps=1e-5)
        x = x + self._attention(h, pre, layer, cache, start)
        h = F.layer_norm(x, (c.d_model,), p[pre + "ln2.g"], p[pre + "ln2.b"], eps=1e-5)
        f = F.gelu(h @ p[pre + "ff.w1"] + p[pre + "ff.b1"], approximate="tanh")
        return x + f @ p[pre + "ff.w2"] + p[pre + "ff.b2"]

    def _attention(self, h, pre, layer, cache, start):
        c, p = self.config, self.p
        B, T, C = h.shape
        H, D = c.n_heads, c.head_dim
        qkv = (h @ p[pre + "attn.w_qkv"] + p[pre + "attn.b_qkv"]).view(B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                   # (B, H, T, D) each
        if c.positional == "rope":
            q, k = self._rope(q, start), self._rope(k, start)
        if cache is not None:
            k, v = self._append(cache, layer, k, v)
        S = k.shape[2]
        bias = None
        if c.positional == "relative":
            bias = _relative(q, p[pre + "attn.rel"], S) / math.sqrt(D)       # (B, H, T, S)
        if bias is None and T == S:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            allowed = torch.ones(T, S, dtype=torch.bool).tril(S - T)
            mask = torch.zeros(T, S, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if bias is None else bias + mask)
        y = y.transpose(1, 2).reshape(B, T, C)                                 # (B, H, T, D) -> (B, T, C)
        return y @ p[pre + "attn.w_o"] + p[pre + "attn.b_o"]

    def _rope(self, x, start):
        T = x.shape[2]
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]       # (T, D/2)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)

    @staticmethod
    def _append(cache, layer, k, v):
        if cache["k"][layer] is not None:
            k = torch.cat([cache["k"][layer], k], dim=2)
            v = torch.cat([cache["v"][layer], v], dim=2)
        cache["k"][layer], cache["v"][layer] = k, v
        return k, v


def _relative(q, rel, S):
    """Music Transformer relative logits q . E[i - j] with the skew (queries aligned to the end)."""
    L, T = rel.shape[1], q.shape[2]
    qe = q @ rel[:, L - S:].transpose(-1, -2)                                  # (B, H, T, S)
    if T == 1:                       # the last query: no skew needed
        return qe
    if T != S:
        raise ValueError("the torch reference takes relative logits for T == S or one new token")
    padded = F.pad(qe, (1, 0))                                                 # (B, H, T, S+1)
    out = padded.reshape(*qe.shape[:2], S + 1, T)[:, :, 1:].reshape(qe.shape)  # pad, reshape, drop a row
    return out.tril()


def check_logits(model, torch_model, ids, atol=1e-4):
    """Assert our logits and torch's agree on ``ids`` (B, T); returns the largest difference."""
    ours = model.forward(ids)
    with torch.no_grad():
        theirs = torch_model.forward(torch.as_tensor(ids, dtype=torch.int64)).numpy()
    diff = float(np.abs(ours - theirs).max())
    if not diff <= atol:
        raise AssertionError(f"numpy and torch logits differ by {diff:.2e} (> {atol:g})")
    return diff
