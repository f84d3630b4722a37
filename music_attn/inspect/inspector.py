"""Attention over the notes of a melody: token maps, note maps, structure share and surprise.

`attention_maps` runs one forward pass of a model over a tokenized melody and
keeps what it saw: the softmax probabilities of every layer and head over the
tokens, the same attention summed up to the notes the tokens belong to, the
share of attention each note pays to structure tokens (Bar, Position, specials:
tokens that belong to no note) and the model's surprise at every note (the
negative log-likelihood of its tokens, from the logits of the same pass).

Shape legend: L layers, H heads, T tokens (queries), S tokens (keys, S == T
here), N notes, V vocab.
"""

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from music_attn.errors import MidiError, MusicAttnError

__all__ = ["AttentionMaps", "attention_maps", "note_name"]

# Dense token maps cost 4 * L * H * T * T bytes; longer files are cut to stay under this.
_MAX_TOKEN_MAP_BYTES = 384 * 2**20

_PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

# Field names that different note containers use for the same column.
_NOTE_FIELDS = {
    "pitch": ("pitch",),
    "start": ("start", "start_sec", "start_time", "onset"),
    "end": ("end", "end_sec", "end_time", "offset"),
    "velocity": ("velocity",),
}


def note_name(pitch):
    """Scientific pitch name of a MIDI pitch: 60 -> ``"C4"``, 61 -> ``"C#4"``, 21 -> ``"A0"``."""
    pitch = int(pitch)
    return f"{_PITCH_CLASSES[pitch % 12]}{pitch // 12 - 1}"


@dataclass(eq=False)
class AttentionMaps:
    """What a model attends to while it reads a melody, over tokens and over notes.

    Aggregation rule (token -> note).  With ``Q_i`` the query tokens of note
    ``i`` (tokens whose ``note_of_token`` is ``i``) and ``K_j`` the key tokens of
    note ``j``::

        note_attention[l, h, i, j] = mean over t in Q_i of ( sum over s in K_j of A[l, h, t, s] )
        structure_share[l, h, i]   = mean over t in Q_i of ( sum over s with note_of_token[s] == -1 of A[l, h, t, s] )

    i.e. the average, over the tokens of note ``i``, of the total probability
    they give to the tokens of note ``j``.  Because every attention row sums to
    one, ``note_attention[l, h, i].sum() + structure_share[l, h, i] == 1``.
    Tokens that belong to no note (structure tokens) are never queries here.

    Attributes
    ----------
    tokens : list of str, length T
    ids : ndarray of int, shape (T,)
    note_of_token : ndarray of int, shape (T,)
        Index of the note each token belongs to, -1 for structure tokens.
    token_attention : ndarray of float32, shape (L, H, T, T)
        Softmax probabilities the model used; row t is query token t.
    note_attention : ndarray of float64, shape (L, H, N, N)
    structure_share : ndarray of float64, shape (L, H, N)
    token_nll : ndarray of float64, shape (T,)
        ``-log p(token t | tokens before it)`` in nats; NaN for the first token.
    surprise : ndarray of float64, shape (N,)
        Sum of ``token_nll`` over the tokens of each note (nats): the NLL of the note.
    pitch, start, end, velocity : ndarray, shape (N,)
        The notes (times in seconds).
    note_names : list of str, length N
    name : str or None
        File name of the melody, when known.
    texts : dict
        Text found in the MIDI file (``"tracks"``: track names, ``"lyrics"``).
    window : int or None
        How many tokens the model sees at once (its ``max_len`` unless asked for less).
    n_tokens_in_file : int
        Token count of the whole melody (more than T when it was cut).
    notice : str
        How a melody longer than the window was handled ("" when it fit).
    """

    tokens: list
    ids: np.ndarray
    note_of_token: np.ndarray
    token_attention: np.ndarray
    note_attention: np.ndarray
    structure_share: np.ndarray
    token_nll: np.ndarray
    surprise: np.ndarray
    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    velocity: np.ndarray
    note_names: list
    name: str = None
    texts: dict = field(default_factory=dict)
    window: int = None
    n_tokens_in_file: int = 0
    notice: str = ""

    @classmethod
    def from_arrays(cls, token_attention, note_of_token, notes, *, tokens=None, ids=None,
                    token_nll=None, name=None, texts=None, window=None, n_tokens_in_file=None,
                    notice=""):
        """Build the maps from token attention and the token -> note alignment.

        Parameters
        ----------
        token_attention : array_like, shape (L, H, T, T)
            Attention probabilities (rows: queries).
        note_of_token : array_like of int, shape (T,)
            Note index of each token, -1 for tokens that belong to no note.
        notes : mapping, structured array or sequence of note objects
            Columns ``pitch``, ``start``, ``end`` (seconds) and optionally
            ``velocity``; N rows, N > max(note_of_token).
        tokens, ids : sequence, length T, optional
        token_nll : array_like, shape (T,), optional
            Per-token NLL; the note surprise is its sum over each note's tokens.
        name, texts, window, n_tokens_in_file, notice
            Stored as given (see the class attributes).
        """
        att = np.asarray(token_attention, dtype=np.float32)
        labels = np.asarray(note_of_token, dtype=np.int64)
        cols = _note_columns(notes)
        _check_shapes(att, labels, len(cols["pitch"]))
        T = labels.size
        nll = np.full(T, np.nan) if token_nll is None else np.asarray(token_nll, dtype=np.float64)
        if nll.shape != (T,):
            raise ValueError(f"token_nll has shape {nll.shape}, expected ({T},)")
        note_att, structure = aggregate_to_notes(att, labels, len(cols["pitch"]))
        return cls(
            tokens=list(tokens) if tokens is not None else [str(i) for i in range(T)],
            ids=np.asarray(ids if ids is not None else np.zeros(T), dtype=np.int64),
            note_of_token=labels, token_attention=att, note_attention=note_att,
            structure_share=structure, token_nll=nll,
            surprise=_sum_by_label(np.nan_to_num(nll)[None], labels, len(cols["pitch"]))[0],
            note_names=[note_name(p) for p in cols["pitch"]], name=name, texts=dict(texts or {}),
            window=window, n_tokens_in_file=int(n_tokens_in_file or T), notice=notice, **cols)

    # ----------------------------------------------------------------- sizes
    @property
    def n_layers(self):
        return self.token_attention.shape[0]

    @property
    def n_heads(self):
        return self.token_attention.shape[1]

    @property
    def n_tokens(self):
        return self.token_attention.shape[-1]

    @property
    def n_notes(self):
        return len(self.pitch)

    # --------------------------------------------------------------- queries
    def head_entropy(self):
        """How spread each head's attention over earlier notes is: mean entropy (nats), shape (L, H).

        For every note, its attention to the notes before it is renormalised to
        sum to one (itself and structure tokens left out) and its entropy taken;
        notes with no attention to earlier notes are skipped.  Low = focused.
        """
        N = self.n_notes
        rows = self.note_attention * np.tri(N, N, -1)                    # (L, H, N, N) earlier notes only
        mass = rows.sum(-1)                                              # (L, H, N)
        p = rows / np.maximum(mass, 1e-12)[..., None]
        ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)            # (L, H, N)
        valid = mass > 1e-9
        return (ent * valid).sum(-1) / np.maximum(valid.sum(-1), 1)

    def most_focused_head(self):
        """``(layer, head)`` whose note attention has the lowest mean entropy."""
        ent = self.head_entropy()
        layer, head = np.unravel_index(int(np.argmin(ent)), ent.shape)
        return int(layer), int(head)

    def top_attended(self, note, *, layer, head=None, k=3, earlier_only=True):
        """The ``k`` notes that ``note`` attends to most, as ``[(j, weight), ...]``.

        ``head=None`` averages the heads of ``layer``; ``earlier_only`` leaves out
        the note itself (and anything after it).
        """
        maps = self.note_attention[layer]
        row = maps.mean(0)[note] if head is None else maps[head, note]
        stop = note if earlier_only else len(row)
        order = np.argsort(-row[:stop], kind="stable")[:k]
        return [(int(j), float(row[j])) for j in order if row[j] > 0]

    # --------------------------------------------------------------- outputs
    def to_dict(self, *, token_attention=False, decimals=4):
        """Plain-Python view (JSON-ready): notes, tokens, note maps, and token maps on request."""
        out = {
            "name": self.name, "texts": self.texts, "window": self.window,
            "n_tokens_in_file": self.n_tokens_in_file, "notice": self.notice,
            "aggregation": "note_attention[l][h][i][j] = mean over the tokens of note i of the "
                           "summed attention to the tokens of note j",
            "notes": [_note_dict(self, i, decimals) for i in range(self.n_notes)],
            "tokens": [{"index": t, "token": self.tokens[t], "id": int(self.ids[t]),
                        "note": int(self.note_of_token[t]), "nll": _num(self.token_nll[t], decimals)}
                       for t in range(self.n_tokens)],
            "note_attention": _rounded(self.note_attention, decimals),
            "structure_share": _rounded(self.structure_share, decimals),
        }
        if token_attention:
            out["token_attention"] = _rounded(self.token_attention, decimals)
        return out

    def to_json(self, *, token_attention=False, decimals=4):
        """The `to_dict` view as a JSON string."""
        return json.dumps(self.to_dict(token_attention=token_attention, decimals=decimals))

    def _repr_html_(self):
        from music_attn.inspect.viz import render_html

        page = render_html(self)
        return (f'<iframe srcdoc="{html.escape(page, quote=True)}" '
                'style="width:100%;height:760px;border:0" sandbox="allow-scripts"></iframe>')

    def __repr__(self):
        return (f"AttentionMaps({self.name or 'melody'!r}: {self.n_notes} notes, {self.n_tokens} tokens, "
                f"{self.n_layers} layers x {self.n_heads} heads)")


# ------------------------------------------------------------ aggregation
def aggregate_to_notes(att, labels, n_notes):
    """Token attention (L, H, T, T) -> note attention (L, H, N, N) and structure share (L, H, N).

    See `AttentionMaps` for the rule.  Computed one layer at a time in float64.
    """
    L, H = att.shape[:2]
    counts = np.bincount(labels[labels >= 0], minlength=n_notes).astype(np.float64)   # (N,)
    note_att = np.zeros((L, H, n_notes, n_notes))
    structure = np.zeros((L, H, n_notes))
    for layer in range(L):
        a = att[layer].astype(np.float64)                                # (H, T, S)
        to_notes = _sum_by_label(a, labels, n_notes)                     # (H, T, N)
        to_structure = a[..., labels < 0].sum(-1)                        # (H, T)
        by_query = _sum_by_label(to_notes.transpose(0, 2, 1), labels, n_notes)  # (H, N, N) [key, query]
        note_att[layer] = by_query.transpose(0, 2, 1) / np.maximum(counts, 1)[:, None]
        structure[layer] = _sum_by_label(to_structure, labels, n_notes) / np.maximum(counts, 1)
    return note_att, structure


def _sum_by_label(x, labels, n):
    """Sum the last axis of ``x`` (..., T) into ``n`` bins by ``labels`` (T,); -1 is dropped."""
    idx = np.flatnonzero(labels >= 0)
    out = np.zeros(x.shape[:-1] + (n,), dtype=np.float64)
    if idx.size == 0:
        return out
    idx = idx[np.argsort(labels[idx], kind="stable")]
    lab = labels[idx]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    out[..., lab[starts]] = np.add.reduceat(x[..., idx], starts, axis=-1)
    return out


def _check_shapes(att, labels, n_notes):
    if att.ndim != 4 or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"token_attention must have shape (L, H, T, T), got {att.shape}")
    if labels.shape != (att.shape[-1],):
        raise ValueError(f"note_of_token has shape {labels.shape}, token_attention has T={att.shape[-1]}")
    if labels.size and labels.max() >= n_notes:
        raise ValueError(f"note_of_token refers to note {labels.max()} but there are {n_notes} notes")


# ------------------------------------------------------------------ notes
def _note_columns(notes):
    """pitch/start/end/velocity columns (N,) from a mapping, structured array or note objects."""
    out = {}
    for key, names in _NOTE_FIELDS.items():
        col = _find_column(notes, names)
        if col is None and key == "velocity":
            col = np.full(len(out["pitch"]), 80)
        if col is None:
            raise ValueError(f"notes have no {key!r} column (looked for {', '.join(names)})")
        out[key] = np.asarray(col, dtype=np.int64 if key in ("pitch", "velocity") else np.float64)
    return out


def _find_column(notes, names):
    for name in names:
        try:
            return np.asarray(notes[name])                    # mapping / structured array
        except (KeyError, ValueError, TypeError, IndexError):
            pass
        if hasattr(notes, name):                              # NoteArray-like container
            return np.asarray(getattr(notes, name))
        items = list(notes) if not isinstance(notes, (str, bytes)) else []
        if items and all(hasattr(n, name) for n in items):    # list of note objects
            return np.array([getattr(n, name) for n in items])
    if hasattr(notes, "__len__") and len(notes) == 0:
        return np.zeros(0)
    return None


def _note_dict(maps, i, decimals):
    return {"index": i, "name": maps.note_names[i], "pitch": int(maps.pitch[i]),
            "start": _num(maps.start[i], decimals), "end": _num(maps.end[i], decimals),
            "velocity": int(maps.velocity[i]), "surprise": _num(maps.surprise[i], decimals)}


def _num(x, decimals):
    x = float(x)
    return None if not math.isfinite(x) else round(x, decimals)


def _rounded(a, decimals):
    return np.round(np.asarray(a, dtype=np.float64), decimals).tolist()


# ------------------------------------------------------------- model pass
def attention_maps(model, midi_or_sequence, *, window=None, tokenizer=None):
    """Run ``model`` over a melody and return its `AttentionMaps`.

    Parameters
    ----------
    model : music_attn.core.model.Model
    midi_or_sequence : path, mido.MidiFile, pretty_midi.PrettyMIDI or TokenSequence
        A MIDI input is encoded with ``tokenizer`` (default ``model.tokenizer``).
    window : int, optional
        Tokens the model sees at once; default and maximum ``model.config.max_len``.
        A longer melody is read in overlapping windows (stride ``window // 2``):
        every token attends to the tokens before it inside its window, at least
        ``window // 2`` of them, and its NLL comes from that window's logits.
        Melodies too long for the dense (L, H, T, T) maps to fit in memory are
        cut; ``notice`` says so.
    tokenizer : Tokenizer, optional

    Returns
    -------
    AttentionMaps

    Raises
    ------
    MidiError
        The file cannot be read, or has no notes.
    ValueError
        Ids outside the model's vocabulary, or a bad ``window``.
    """
    seq = _as_sequence(midi_or_sequence, tokenizer if tokenizer is not None else model.tokenizer)
    ids = np.asarray(seq.ids, dtype=np.int64)
    cfg = model.config
    _check_ids(ids, cfg.vocab_size)
    window = _check_window(window, cfg.max_len)
    keep = min(ids.size, _token_cap(cfg.n_layers, cfg.n_heads))
    att, nll = _run_windows(model, ids[:keep], window)
    labels, notes = _kept_notes(np.asarray(seq.note_of_token, dtype=np.int64)[:keep], seq.notes)
    if not len(notes["pitch"]):
        raise MidiError(f"{_name_of(midi_or_sequence, seq) or 'melody'}: no notes to inspect")
    return AttentionMaps.from_arrays(
        att, labels, notes, tokens=list(seq.tokens)[:keep], ids=ids[:keep], token_nll=nll,
        name=_name_of(midi_or_sequence, seq), texts=_midi_texts(seq), window=window,
        n_tokens_in_file=ids.size, notice=_notice(ids.size, keep, window))


def _as_sequence(x, tokenizer):
    if hasattr(x, "ids") and hasattr(x, "note_of_token"):
        return x
    if tokenizer is None:
        raise MusicAttnError("the model has no tokenizer: pass a TokenSequence or tokenizer=...")
    return tokenizer.encode(x)


def _check_ids(ids, vocab_size):
    if ids.ndim != 1 or ids.size < 2:
        raise ValueError(f"need a 1-d sequence of at least 2 tokens, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids span {ids.min()}..{ids.max()} but the model's vocabulary has "
                         f"{vocab_size} entries: was the melody encoded with the model's tokenizer?")


def _check_window(window, max_len):
    window = max_len if window is None else int(window)
    if not 2 <= window <= max_len:
        raise ValueError(f"window must be between 2 and the model's max_len {max_len}, got {window}")
    return window


def _token_cap(n_layers, n_heads):
    return int(math.isqrt(_MAX_TOKEN_MAP_BYTES // (4 * n_layers * n_heads)))


def _notice(n_total, n_kept, window):
    parts = []
    if n_kept > window:
        parts.append(f"The model sees {window} tokens at a time; this melody's {n_kept} tokens were "
                     f"read in overlapping windows of {window} (stride {window // 2}), so each token "
                     f"attends only to the tokens before it inside its window.")
    if n_total > n_kept:
        parts.append(f"Only the first {n_kept} of {n_total} tokens are shown.")
    return " ".join(parts)


def _run_windows(model, ids, window):
    """Attention (L, H, T, T) and token NLL (T,) from windows of ``window`` tokens."""
    T, stride = ids.size, max(1, window // 2)
    att, nll = None, np.full(T, np.nan)
    done, start = 0, 0
    while done < T:
        start = max(0, min(start, T - window))
        stop = min(start + window, T)
        logits, a = _forward(model, ids[start:stop])                 # (W, V), (L, H, W, W)
        if att is None:
            att = np.zeros(a.shape[:2] + (T, T), dtype=np.float32)
        att[:, :, done:stop, start:stop] = a[:, :, done - start:, :]
        first = max(done, start + 1)
        nll[first:stop] = _token_nll(logits[first - 1 - start:stop - 1 - start], ids[first:stop])
        done, start = stop, start + stride
    return att, nll


def _forward(model, ids):
    logits, att = model.forward(ids[None, :], return_attention=True)  # (1, W, V), (L, 1, H, W, W)
    return np.asarray(logits[0], dtype=np.float64), np.asarray(att[:, 0], dtype=np.float32)


def _token_nll(logits, targets):
    """``-log softmax(logits)[target]`` per row: logits (T, V), targets (T,) -> (T,)."""
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
    return log_z - logits[np.arange(len(targets)), targets]


def _kept_notes(labels, notes):
    """Drop notes with no token left (after a cut) and renumber: (labels (T,), notes)."""
    cols = _note_columns(notes)
    kept = np.unique(labels[labels >= 0])
    if kept.size == len(cols["pitch"]):
        return labels, cols
    new_index = np.full(len(cols["pitch"]), -1)
    new_index[kept] = np.arange(kept.size)
    relabelled = np.where(labels >= 0, new_index[np.maximum(labels, 0)], -1)
    return relabelled, {k: v[kept] for k, v in cols.items()}


# ------------------------------------------------------------ MIDI texts
def _name_of(x, seq):
    name = getattr(seq, "name", None)
    if name:
        return Path(str(name)).name
    if isinstance(x, (str, Path)):
        return Path(x).name
    return getattr(x, "filename", None) and Path(x.filename).name


def _midi_texts(seq):
    """Track names and lyrics of the Score the sequence was encoded from (empty without one)."""
    score = getattr(seq, "score", None)
    if score is None:
        return {}
    names = [name for name in score.track_names if name.strip()]
    return {"tracks": list(dict.fromkeys(names)), "lyrics": score.lyrics()[:2000]}
