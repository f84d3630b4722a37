"""Attention of any model (Hugging Face ``transformers`` and others) over the notes of a piece.

``attention_maps_from(attentions, tokens, ...)`` takes attention as Hugging
Face returns it with ``output_attentions=True`` -- a tuple with one
(B, H, T, T) tensor per layer, torch or numpy -- and the token sequence it was
computed on, and gives the same :class:`~music_attn.inspect.inspector.AttentionMaps`
as our own model (note maps, structure share, head roles, page, PNG, JSON).
The tokens say which note each token belongs to: a MidiTok ``TokSequence``
(with its tokenizer; aligned by :mod:`music_attn.interop.miditok`), one of our
:class:`~music_attn.music.tokenizers.TokenSequence`, or a ready
:class:`~music_attn.interop.miditok.MidiTokAlignment`.

Shape legend: L layers, B batch, H heads, T tokens, V vocab, N notes.
"""

from pathlib import Path

import numpy as np

from music_attn.inspect.inspector import AttentionMaps
from music_attn.runtime.windows import token_nll

__all__ = ["attention_maps_from", "stack_attentions"]


def _to_numpy(x):
    """A torch tensor (any device, with or without grad) or array-like -> float32 ndarray."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def stack_attentions(attentions, batch=0):
    """Per-layer attention of one sequence of the batch: tuple of L (B, H, T, T) -> (L, H, T, T).

    An array already shaped (L, B, H, T, T) or (L, H, T, T) is accepted too.  Layers that
    hold None -- a model loaded with SDPA (or flash) attention computes no weights -- are a
    ValueError saying to load it with ``attn_implementation="eager"``.
    """
    if attentions is None:
        raise ValueError("no attention given (None): call the model with output_attentions=True, and load it "
                         "with attn_implementation=\"eager\"")
    if isinstance(attentions, (list, tuple)):
        if not attentions:
            raise ValueError("no attention layers given (was the model called with output_attentions=True?)")
        if any(a is None for a in attentions):
            raise ValueError(f"the model returned no attention weights ({sum(a is None for a in attentions)} of "
                             f"{len(attentions)} layers are None): it runs SDPA or flash attention, which never "
                             f"forms them; load it with attn_implementation=\"eager\" (e.g. "
                             f"AutoModelForCausalLM.from_pretrained(name, attn_implementation=\"eager\"), or "
                             f"model.set_attn_implementation(\"eager\"))")
        layers = [_to_numpy(a) for a in attentions]
        shapes = {a.shape for a in layers}
        if len(shapes) != 1 or len(layers[0].shape) != 4:
            raise ValueError(f"expected one (B, H, T, T) array per layer, got shapes {sorted(shapes)}")
        att = np.stack([a[batch] for a in layers])                               # (L, H, T, T)
    else:
        att = _to_numpy(attentions)
        if att.ndim == 5:
            att = att[:, batch]
    if att.ndim != 4 or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"attention must be (L, H, T, T) per sequence, got {att.shape}")
    return att


def _alignment(tokens, tokenizer):
    """(token strings, ids, note_of_token, notes) of the sequence the attention was computed on."""
    if hasattr(tokens, "note_of_token") and hasattr(tokens, "notes"):      # ours, or an alignment
        return list(tokens.tokens), np.asarray(tokens.ids), tokens.note_of_token, tokens.notes
    if tokenizer is None:
        raise ValueError("a MidiTok TokSequence needs its tokenizer: attention_maps_from(..., tokenizer=tok)")
    from music_attn.interop.miditok import note_alignment
    a = note_alignment(tokenizer, tokens)
    return a.tokens, a.ids, a.note_of_token, a.notes


def attention_maps_from(attentions, tokens, *, tokenizer=None, midi=None, logits=None, batch=0,
                        name=None):
    """Note-level attention maps from an outside model's token attention.

    Parameters
    ----------
    attentions : tuple of L arrays (B, H, T, T) (``outputs.attentions``), torch or numpy;
        or one array (L, B, H, T, T) / (L, H, T, T).  Rows are queries.
    tokens : the T tokens the attention was computed on: a MidiTok ``TokSequence`` (or a
        list holding one), our ``TokenSequence``, or a ``MidiTokAlignment``.
    tokenizer : the MidiTok tokenizer, needed with a ``TokSequence``.
    midi : path of the MIDI file the tokens come from (names the maps).
    logits : optional (B, T, V) or (T, V) next-token logits of the same call: gives each
        token's NLL, so the notes get their surprise.
    batch : which sequence of the batch to read.
    name : a name for the maps (default: the file name of ``midi``).

    Returns
    -------
    AttentionMaps
    """
    att = stack_attentions(attentions, batch)
    toks, ids, labels, notes = _alignment(tokens, tokenizer)
    T = att.shape[-1]
    if len(toks) != T:
        raise ValueError(f"the attention covers {T} tokens but the sequence has {len(toks)}: pass "
                         f"the tokens the model read (slice off any added BOS/EOS, or add them)")
    nll = None if logits is None else _token_nll(logits, ids, batch)
    if name is None and midi is not None:
        name = Path(str(midi)).name
    return AttentionMaps.from_arrays(att, labels, notes, tokens=toks, ids=ids, token_nll=nll,
                                     name=name, window=T)


def _token_nll(logits, ids, batch):
    """NLL of each token given the logits at the position before it; NaN for the first."""
    x = _to_numpy(logits).astype(np.float64)
    x = x[batch] if x.ndim == 3 else x                                           # (T, V)
    if x.shape[0] != len(ids):
        raise ValueError(f"logits cover {x.shape[0]} positions, the sequence has {len(ids)}")
    nll = np.full(len(ids), np.nan)
    nll[1:] = token_nll(x[:-1], np.asarray(ids[1:], dtype=np.int64))
    return nll
