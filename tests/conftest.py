"""Shared references for the tests (add to this file; do not replace what is here).

MIDI: the factories and the independent reference reader live in
``tests/midi_factory.py`` (``from midi_factory import track, note_events,
mido_reference, ...``): files are built with mido from absolute ticks and
read back message by message with mido, against which the project's byte
scanner, tokenizers and writer are checked.  This conftest puts ``tests/`` on
the import path and offers the ``midi_path`` fixture.

Attention: ``loop_note_attention``, the float64 loop reference of the token
-> note rule. Model: ``reference_logits64``, a float64 model written from the maths.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # midi_factory, wherever pytest is started

import midi_factory  # noqa: E402


@pytest.fixture
def midi_path(tmp_path):
    """Save a mido.MidiFile under tmp_path: ``midi_path(mid, "name.mid") -> Path``."""

    def save(mid, name="tune.mid"):
        return midi_factory.save(mid, tmp_path / name)

    return save


def loop_note_attention(att, labels, n_notes):
    """Float64 Python-loop reference of the token -> note rule.

    att (L, H, T, T) dense attention, labels (T,) note of each token (-1 none) ->
    note attention (L, H, N, N) and structure share (L, H, N): for note i, the mean over
    its tokens t of the summed weight on the tokens of note j (on tokens of no note).
    """
    att = np.asarray(att, dtype=np.float64)
    labels = list(np.asarray(labels).tolist())
    L, H, T, _ = att.shape
    notes = np.zeros((L, H, n_notes, n_notes))
    structure = np.zeros((L, H, n_notes))
    for layer in range(L):
        for head in range(H):
            for i in range(n_notes):
                q = [t for t in range(T) if labels[t] == i]
                for t in q:
                    for s in range(T):
                        if labels[s] >= 0:
                            notes[layer, head, i, labels[s]] += att[layer, head, t, s] / len(q)
                        else:
                            structure[layer, head, i] += att[layer, head, t, s] / len(q)
    return notes, structure


def reference_logits64(model, ids, condition=None):
    """Float64 logits (T, V) of a full-attention model on one sequence, written from the maths.

    Every step is a plain formula: embedding * sqrt(C) (+ the sinusoid table) (+ the
    period table's row ``t mod P`` at position t) (+ ``cond_emb[k, condition[t, k]]``
    summed over k, for a model that reads a condition), pre-norm
    blocks, per-head attention whose logits are ``q_i . k_j / sqrt(D)`` plus, for relative
    positions, ``q_i . E[L-1-(i-j)] / sqrt(D)`` gathered per pair (no skew); RoPE rotates
    pairs ``(2m, 2m+1)`` by ``pos * base**(-2m/D)``; tanh GELU; layer norm eps 1e-5.
    """
    c = model.config
    assert c.attention == "full", "the reference covers full attention"
    p = {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}
    ids = np.asarray(ids).reshape(-1)
    T, C, H, D = len(ids), c.d_model, c.n_heads, c.head_dim
    x = p["tok_emb"][ids] * math.sqrt(C)
    if c.positional == "sinusoidal":
        i = np.arange(C)
        angle = np.arange(T)[:, None] / 10000.0 ** (2 * (i // 2) / C)
        x = x + np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
    for t in range(T * bool(c.period)):                   # the learned row of position t mod P
        x[t] += p["period_emb"][t % c.period]
    for t in range(T * bool(c.condition)):                # one learned row per offset and token
        for k in range(c.condition):
            x[t] += p["cond_emb"][k, condition[t, k]]

    def norm(h, g, b):
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * g + b

    def rope(a):                                          # (T, D)
        m = np.arange(D // 2)
        angle = np.arange(T)[:, None] * c.rope_base ** (-2 * m / D)
        out = a.copy()
        out[:, 0::2] = a[:, 0::2] * np.cos(angle) - a[:, 1::2] * np.sin(angle)
        out[:, 1::2] = a[:, 0::2] * np.sin(angle) + a[:, 1::2] * np.cos(angle)
        return out

    for layer in range(c.n_layers):
        pre = f"h{layer}."
        h = norm(x, p[pre + "ln1.g"], p[pre + "ln1.b"])
        qkv = h @ p[pre + "attn.w_qkv"] + p[pre + "attn.b_qkv"]
        heads = []
        for hd in range(H):
            q, k, v = (qkv[:, part * C + hd * D: part * C + (hd + 1) * D] for part in range(3))
            if c.positional == "rope":
                q, k = rope(q), rope(k)
            logits = q @ k.T / math.sqrt(D)
            if c.positional == "relative":
                E = p[pre + "attn.rel"][hd]                 # (L, D), row L-1 = distance 0
                for i in range(T):
                    for j in range(i + 1):
                        logits[i, j] += q[i] @ E[c.max_len - 1 - (i - j)] / math.sqrt(D)
            logits[np.triu_indices(T, 1)] = -np.inf
            w = np.exp(logits - logits.max(-1, keepdims=True))
            heads.append((w / w.sum(-1, keepdims=True)) @ v)
        x = x + np.concatenate(heads, -1) @ p[pre + "attn.w_o"] + p[pre + "attn.b_o"]
        h = norm(x, p[pre + "ln2.g"], p[pre + "ln2.b"])
        f = h @ p[pre + "ff.w1"] + p[pre + "ff.b1"]
        f = 0.5 * f * (1 + np.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f ** 3)))
        x = x + f @ p[pre + "ff.w2"] + p[pre + "ff.b2"]
    x = norm(x, p["ln_f.g"], p["ln_f.b"])
    return x @ p["head.w"] + p["head.b"]


def formula_sdpa64(q, k, v, *, causal=False, window=None, mask=None, scale=None):
    """Float64 ``softmax(q k^T * scale, masked) v`` over the last two axes, written from the
    maths (the per-query loop of test_attention vectorized, for long sequences).

    Query i sits at position i + S - T; ``causal`` (or ``window``) allows keys j <= that
    position, ``window`` only the ``window`` most recent of them; ``mask`` True = may
    attend. A query that may attend to nothing gets zeros.
    """
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    T, S = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    pos = np.arange(T)[:, None] + S - T
    j = np.arange(S)[None, :]
    allowed = np.ones((T, S), bool)
    if causal or window:
        allowed &= j <= pos
    if window:
        allowed &= j > pos - window
    if mask is not None:
        allowed = allowed & np.asarray(mask, bool)
    logits = np.where(allowed, q @ np.swapaxes(k, -1, -2) * scale, -np.inf)
    top = logits.max(-1, keepdims=True)
    e = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0) @ v
