"""The model's architecture as a PyTorch ``nn.Module``, parameter for parameter.

:class:`TorchTransformer` holds the same parameters under the same names as
:class:`music_attn.core.model.Model` (``h0.attn.w_qkv`` ...; stored with ``.``
written ``__`` because torch forbids dots in parameter names) and computes the
same function: token embedding scaled by sqrt(C) (+ sinusoidal positions),
pre-norm blocks ``x += attn(ln1(x)); x += ff(ln2(x))`` with tanh GELU and layer
norm eps 1e-5, a final norm and the output head.  Attention is ``full``,
``local`` (each query sees its ``window`` most recent keys) or ``soft_align``
(``alpha`` x local + ``1 - alpha`` x full attention with rotary positions);
positions are sinusoidal, rotary (interleaved pairs, as
:func:`music_attn.core.positional.apply_rope`) or Music Transformer relative
logits ``skew(q E^T)`` added to both branches.

Shape legend: B batch, T time, C model dim, H heads, D head dim, V vocab, L max length.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from music_attn.core.model import ModelConfig, param_shapes
from music_attn.core.positional import rope_angles, sinusoidal

__all__ = ["TorchTransformer", "torch_name", "our_name"]


def torch_name(name):
    """Our parameter name -> the name torch stores it under (``h0.ln1.g`` -> ``h0__ln1__g``)."""
    return name.replace(".", "__")


def our_name(name):
    """Inverse of :func:`torch_name`."""
    return name.replace("__", ".")


class TorchTransformer(nn.Module):
    """The decoder-only transformer of :mod:`music_attn.core.model` in torch.

    Parameters
    ----------
    config : ModelConfig
    dtype : torch float dtype of the parameters (default float32).
    """

    def __init__(self, config, *, dtype=torch.float32):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.params = nn.ParameterDict({
            torch_name(name): nn.Parameter(torch.zeros(shape, dtype=dtype))
            for name, shape in param_shapes(config).items()})
        L, C, D = config.max_len, config.d_model, config.head_dim
        self.register_buffer("pe", torch.tensor(sinusoidal(L, C, dtype=np.float64), dtype=dtype),
                             persistent=False)                                    # (L, C)
        angles = rope_angles(np.arange(L), D, base=config.rope_base)              # (L, D/2)
        self.register_buffer("cos", torch.tensor(np.cos(angles), dtype=dtype), persistent=False)
        self.register_buffer("sin", torch.tensor(np.sin(angles), dtype=dtype), persistent=False)

    def p(self, name):
        """The parameter our code calls ``name``."""
        return self.params[torch_name(name)]

    def forward(self, ids, *, return_attention=False):
        """ids (B, T) int64 -> logits (B, T, V) [, attention (L, B, H, T, T)]."""
        c = self.config
        T = ids.shape[1]
        if T > c.max_len:
            raise ValueError(f"{T} tokens exceed max_len={c.max_len}")
        x = self.p("tok_emb")[ids] * math.sqrt(c.d_model)                        # (B, T, C)
        if c.positional == "sinusoidal":
            x = x + self.pe[:T]
        if c.period:
            x = x + self.p("period_emb")[torch.arange(T, device=ids.device) % c.period]
        probs = []
        for i in range(c.n_layers):
            x, p = self._block(x, f"h{i}.")
            probs.append(p)
        x = F.layer_norm(x, (c.d_model,), self.p("ln_f.g"), self.p("ln_f.b"), eps=1e-5)
        logits = x @ self.p("head.w") + self.p("head.b")                          # (B, T, V)
        return (logits, torch.stack(probs)) if return_attention else logits

    def _block(self, x, pre):
        c = self.config
        h = F.layer_norm(x, (c.d_model,), self.p(pre + "ln1.g"), self.p(pre + "ln1.b"), eps=1e-5)
        a, probs = self._attention(h, pre)
        x = x + a
        h = F.layer_norm(x, (c.d_model,), self.p(pre + "ln2.g"), self.p(pre + "ln2.b"), eps=1e-5)
        f = F.gelu(h @ self.p(pre + "ff.w1") + self.p(pre + "ff.b1"), approximate="tanh")
        return x + f @ self.p(pre + "ff.w2") + self.p(pre + "ff.b2"), probs

    def _attention(self, h, pre):
        """Causal multi-head attention of one layer: (B, T, C) -> (B, T, C), probs (B, H, T, T)."""
        c = self.config
        B, T, C = h.shape
        qkv = (h @ self.p(pre + "attn.w_qkv") + self.p(pre + "attn.b_qkv")).view(B, T, 3, c.n_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                       # (B, H, T, D) each
        scale = 1.0 / math.sqrt(c.head_dim)
        bias = 0.0
        if c.positional == "relative":
            bias = _relative_logits(q, self.p(pre + "attn.rel"), T) * scale       # (B, H, T, T)
        probs = 0.0
        for weight, qb, kb, window in self._branches(q, k):
            s = (qb @ kb.transpose(-1, -2)) * scale + bias                         # (B, H, T, T)
            s = s.masked_fill(~_band(T, window, h.device), float("-inf"))
            probs = probs + weight * torch.softmax(s, dim=-1)
        y = (probs @ v).transpose(1, 2).reshape(B, T, C)                           # (B, H, T, D) -> (B, T, C)
        return y @ self.p(pre + "attn.w_o") + self.p(pre + "attn.b_o"), probs

    def _branches(self, q, k):
        """(weight, queries, keys, window) of each softmax the layer mixes."""
        c = self.config
        rq, rk = (self._rope(q), self._rope(k)) if c.positional == "rope" else (q, k)
        if c.attention == "full":
            return [(1.0, rq, rk, None)]
        if c.attention == "local":
            return [(1.0, rq, rk, c.window)]
        gq, gk = (rq, rk) if c.positional == "rope" else (self._rope(q), self._rope(k))
        return [(c.alpha, rq, rk, c.window), (1.0 - c.alpha, gq, gk, None)]

    def _rope(self, x):
        """Rotate feature pairs (x[2i], x[2i+1]) of (B, H, T, D) by position * base^(-2i/D)."""
        T = x.shape[2]
        cos, sin = self.cos[:T], self.sin[:T]                                      # (T, D/2)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def _band(T, window, device):
    """(T, T) bool, True where query i may see key j: j <= i (and j > i - window)."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed


def _relative_logits(q, rel, T):
    """Music Transformer relative logits ``out[i, j] = q_i . E[L - 1 - (i - j)]`` by the skew.

    q (B, H, T, D), rel (H, L, D) -> (B, H, T, T); entries above the diagonal are
    meaningless (masked by the caller).
    """
    L = rel.shape[1]
    qe = q @ rel[:, L - T:].transpose(-1, -2)                                      # column m: distance T-1-m
    padded = F.pad(qe, (1, 0))                                                     # (B, H, T, T+1)
    return padded.reshape(*qe.shape[:2], T + 1, T)[:, :, 1:].reshape(qe.shape)     # pad, reshape, drop a row
