"""One prediction from several keys: the harmonizer's transposition average.

The harmonizer learnt the chorales moved by -5..+5 semitones, so a melody a semitone
up or down is as familiar to it as the melody as written, and its errors in the
three keys are not the same errors.  With ``keys=3`` (the default of
:func:`~music_attn.harmonization_nll` and :func:`~music_attn.harmonize`) the model
reads the piece in the written key and a semitone either side, and the distribution
of each cell is the mean of the three, each moved back to the written key:

    p(x | context) = mean over live keys s of  p_s(x + s | context + s) / Z_s

where ``Z_s`` is the mass key s gives to the pitches the written key can hold (a
pitch moved out of the model's range has no token).  Every conditional is a mixture
of proper distributions, so the product over a piece is a proper distribution and
its NLL is a true NLL, computed exactly, not estimated.

A key is used for a piece only when the whole melody fits the model's range in it.
A key whose context holds a lower-voice note it cannot spell (a bass at the bottom
of the range moved down) drops out of the mean from that note on: it is *dead*.
The written key (shift 0) is always used and never dies.

Shape legend: K keys, R rows (sequences), V vocab, n tokens.
"""

import numpy as np

__all__ = ["KEYS", "key_shifts", "shift_table", "fitting_shifts", "mix", "dead_after"]

# Keys read by default: the written one and a semitone either side (docs/harmonize.md).
KEYS = 3


def key_shifts(keys):
    """The semitone shifts of ``keys`` keys around the written one: 1 -> (0,), 3 -> (0, -1, 1), ...

    keys : an odd integer in 1..11 (the harmonizer trained on shifts of -5..+5).
    The written key comes first.
    """
    if isinstance(keys, bool) or not isinstance(keys, (int, np.integer)) or not (1 <= keys <= 11 and keys % 2):
        raise ValueError(f"keys must be an odd integer in 1..11, got {keys!r}")
    half = int(keys) // 2
    return (0,) + tuple(s for d in range(1, half + 1) for s in (-d, d))


def shift_table(tokenizer, shift):
    """int (V,): the id in the key ``shift`` semitones away of each id of the written key.

    Pitch tokens move by ``shift``; a pitch that leaves the tokenizer's range maps to -1;
    every other token (rest, BOS, EOS, PAD) maps to itself.
    """
    V = tokenizer.vocab_size
    low, high = tokenizer.pitch_range
    pitches = np.arange(low, high + 1)
    ids = tokenizer.grid_ids(np.column_stack([pitches, np.full((len(pitches), 3), -1)]))[:, 0]
    table = np.arange(V, dtype=np.int64)
    moved = pitches + shift
    table[ids] = np.where((moved >= low) & (moved <= high), ids + shift, -1)
    return table


def fitting_shifts(keys, soprano, pitch_range):
    """The shifts of :func:`key_shifts` in which every sounding note of ``soprano`` stays in range."""
    sounding = np.asarray(soprano)[np.asarray(soprano) >= 0]
    low, high = pitch_range
    if not sounding.size:
        return key_shifts(keys)
    return tuple(s for s in key_shifts(keys) if sounding.min() + s >= low and sounding.max() + s <= high)


def dead_after(moved_ids):
    """bool (..., n): True from the first -1 of each row of ``moved_ids`` (..., n) on (a note
    that key cannot spell)."""
    return np.logical_or.accumulate(np.asarray(moved_ids) < 0, axis=-1)


def mix(probs, tables, live):
    """The mean of each row's distributions in K keys, moved back to the written key.

    probs : (R, K, V) each row's next-token distribution in each key (rows sum to 1).
    tables : int (K, V) :func:`shift_table` of each key.
    live : bool (R, K) the keys still read for each row (the written key's column is
        always True).

    Returns (R, V) float64: each key's distribution over the written key's tokens,
    renormalised over the tokens that key can spell, averaged over the live keys.
    """
    probs = np.asarray(probs, dtype=np.float64)
    K = tables.shape[0]
    back = probs[:, np.arange(K)[:, None], np.maximum(tables, 0)] * (tables >= 0)      # (R, K, V)
    back /= back.sum(axis=-1, keepdims=True)
    weight = np.asarray(live, dtype=np.float64)
    return np.einsum("rkv,rk->rv", back, weight) / weight.sum(axis=1, keepdims=True)
