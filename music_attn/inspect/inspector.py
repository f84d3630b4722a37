"""Attention over the notes of a piece of any length: a band of token attention, sparse note maps.

`attention_maps` runs a model over a piece (or a chosen passage, tracks or
top voice of it, see :mod:`music_attn.music.select`) and keeps what it saw:

* **Token attention as a band.**  A piece longer than the model's window is
  read with THE windowing rule of :func:`music_attn.runtime.windows.spans`
  (windows of ``W`` tokens moved by ``W // 2``; every position's attention row
  and next-token logits come from exactly one window, the first that holds
  it).  So query ``t`` only ever sees keys ``t - W + 1 .. t``, and the band
  ``token_band[l, h, t, j]`` is its weight on key ``t - band_back + j``
  (``band_back = W - 1`` for a model pass: column ``W - 1`` is the token
  itself; keys its window did not hold are 0).  Memory grows as L H T W, never T x T.
* **Note attention, sparse.**  With ``Q_i`` the query tokens of note ``i`` and
  ``K_j`` the key tokens of note ``j``::

      note_attention[l, h, i, j] = mean over t in Q_i of ( sum over s in K_j of A[l, h, t, s] )
      structure_share[l, h, i]   = the same mean of the weight on tokens of no note (Bar, Position, BOS)
      context_share[l, h, i]     = the same mean of the weight on notes not shown (before the passage)

  so ``row sum + structure_share + context_share == 1``.  Each head's note
  attention is stored as CSR rows (`note_rows`): only the key notes a query
  note's window held, never N x N.
* **Rollout** (Abnar & Zuidema 2020), computed within each window as the model
  saw it: for the window's tokens, per layer ``0.5 * mean over heads of A + 0.5 * I``,
  rows renormalised, multiplied through the layers (``R = A_L ... A_2 A_1``), and
  each query's row taken from the window that owns it (as above); then
  aggregated to notes by the same rule.  Select it with ``note_rows("rollout")``.
* **A passage in the middle** is read as in the whole piece: its tokens get
  exactly the windows they get when the whole piece is read, so the music just
  before it (up to a window) is their context; attention to the notes of that
  music is ``context_share`` (to its Bar and Position tokens, ``structure_share``).
* **Surprise** of a note: the sum of the NLL (nats) of its tokens, each from the
  logits of the position before it (:func:`~music_attn.runtime.windows.token_nll`).
  ``model_fit`` compares the mean NLL per token of what is shown with the
  model's NLL per token on its own validation set (stored in the checkpoint).

Shape legend: L layers, H heads, T tokens, W band width (window), N notes, V vocab.
"""

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from music_attn._text import without_bidi
from music_attn.errors import MidiError, MusicAttnError
from music_attn.music import select
from music_attn.music.constants import DRUM_CHANNEL
from music_attn.music.theory import note_name, spelled_names
from music_attn.inspect.bands import (
    _CONTEXT, _STRUCTURE, NoteRows, _band_keys, _check_dense, _earlier_entropy, _gc_paused, _Head, _row_ids, _split_floats, _split_rows,
    _top_k_entries, attention_rollout, band_to_notes, dense_to_band,
)
from music_attn.inspect.fit import FIT_RATIO, _polyphonic, model_fit  # noqa: F401 (FIT_RATIO re-exported)
from music_attn.runtime.windows import alignment
from music_attn.inspect.viz import _note_dicts, _sparse_json
from music_attn.inspect.windows_read import (  # noqa: F401 (the reference is used by the tests through here)
    _check_memory, _plan, _run_windows, _run_windows_one_by_one, fitting_window,
)

__all__ = ["AttentionMaps", "NoteRows", "attention_maps", "attention_rollout", "note_name"]

# JSON: key notes listed per query note and head (the rest is summed).
JSON_TOP_K = 8

# Field names that different note containers use for the same column.
_NOTE_FIELDS = {
    "pitch": ("pitch",),
    "start": ("start", "start_sec", "start_time", "onset"),
    "end": ("end", "end_sec", "end_time", "offset"),
    "velocity": ("velocity",),
}


@dataclass(eq=False)
class AttentionMaps:
    """What a model attends to while it reads a piece, over tokens and over notes.

    The rules (band, aggregation, rollout, passage context) are in the module
    docstring.  Build one with `attention_maps` (a model pass) or `from_arrays`.

    Attributes
    ----------
    tokens : list of str, length T
    ids : ndarray of int, shape (T,)
    note_of_token : ndarray of int, shape (T,)
        Index of the note each token belongs to, -1 for tokens of no shown note.
    token_band : ndarray of float32, shape (L, H, T, W), or None
        ``token_band[l, h, t, j]`` = attention of query ``t`` to key ``t - band_back + j``
        (keys before the first token are the context before a passage).
    band_back : int
    rollout_band : ndarray of float32, shape (T, W), or None
        The rollout of every query token, in the band layout.
    structure_share, context_share : ndarray of float64, shape (L, H, N)
    token_nll : ndarray of float64, shape (T,)
        ``-log p(token t | tokens before it)`` in nats; NaN for the piece's first token.
    surprise : ndarray of float64, shape (N,)
        Sum of ``token_nll`` over the tokens of each note (nats).
    pitch, start, end, velocity, track : ndarray, shape (N,)
        The notes (times in seconds, track as numbered in the file).
    drum : ndarray of bool, shape (N,)
        Drum notes (MIDI channel 10): no key, named by their General MIDI percussion name.
    bar, beat : ndarray, shape (N,), or None
        Bar (from 1) and beat (from 1) of each note's onset, when the metre is known.
    note_names : list of str, length N
    name : str or None
    texts : dict
        Text found in the MIDI file (``"tracks"``: the name of every track, indexed like
        ``track``, "" where a track has none; ``"lyrics"``).
    window : int or None
        How many tokens the model sees at once.
    n_tokens_in_file : int
        Tokens of the whole piece (more than T when a passage or a cut was shown).
    notice : str
        How the piece was read (windows, passage, tracks), "" when nothing to say.
    model_fit : dict
        ``nats_per_token`` (the tokens shown), ``validation_nats_per_token`` (the
        model's, None when its checkpoint does not record it), ``ratio``, ``reading``.
    selection : dict
        What was chosen: ``bars``, ``seconds``, ``tracks``, ``melody``.
    score : Score or None
        The file's notes (after the choice of tracks or top voice), tempo map and
        metres, when read from a MIDI input.
    """

    tokens: list
    ids: np.ndarray
    note_of_token: np.ndarray
    token_band: np.ndarray
    band_back: int
    rollout_band: np.ndarray
    heads: list = field(repr=False)           # [layer][head] -> _Head
    rollout: object = field(repr=False)       # _Head or None
    token_nll: np.ndarray = None
    surprise: np.ndarray = None
    pitch: np.ndarray = None
    start: np.ndarray = None
    end: np.ndarray = None
    velocity: np.ndarray = None
    track: np.ndarray = None
    drum: np.ndarray = None
    bar: np.ndarray = None
    beat: np.ndarray = None
    note_names: list = None
    name: str = None
    texts: dict = field(default_factory=dict)
    window: int = None
    n_tokens_in_file: int = 0
    notice: str = ""
    model_fit: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    score: object = field(default=None, repr=False)

    @classmethod
    def from_arrays(cls, token_attention, note_of_token, notes, *, band=None, band_back=None,
                    tokens=None, ids=None, token_nll=None, name=None, texts=None, window=None,
                    n_tokens_in_file=None, notice="", model_fit=None):
        """Build the maps from token attention and the token -> note alignment.

        Parameters
        ----------
        token_attention : array_like, shape (L, H, T, T), or None
            Dense attention probabilities (rows: queries), for short sequences.
            Entries above the diagonal (a bidirectional model) are kept.
        note_of_token : array_like of int, shape (T,)
            Note index of each token, -1 for tokens that belong to no note.
        notes : mapping, structured array or sequence of note objects
            Columns ``pitch``, ``start``, ``end`` (seconds), optionally
            ``velocity``, ``track``, ``bar``, ``beat``; N rows, N > max(note_of_token).
        band : array_like, shape (L, H, T, W), optional
            Instead of ``token_attention``: the band (module docstring), its column
            ``j`` of row ``t`` being key ``t - band_back + j`` (default ``band_back = W - 1``).
        tokens, ids, token_nll, name, texts, window, n_tokens_in_file, notice, model_fit
            Stored as given (see the class attributes).
        """
        labels = np.asarray(note_of_token, dtype=np.int64)
        cols = _note_columns(notes)
        if band is None:
            band, band_back = dense_to_band(np.asarray(token_attention, dtype=np.float32))
        band = np.asarray(band, dtype=np.float32)
        band_back = band.shape[-1] - 1 if band_back is None else int(band_back)
        _check_shapes(band, labels, len(cols["pitch"]))
        rollout = None
        if token_attention is not None:
            rollout, _ = dense_to_band(attention_rollout(token_attention)[None, None])
        return _assemble(band, band_back, rollout, labels, labels, cols, tokens=tokens, ids=ids,
                         token_nll=token_nll, name=name, texts=texts, window=window,
                         n_tokens_in_file=n_tokens_in_file, notice=notice, model_fit=model_fit)

    # ----------------------------------------------------------------- sizes
    @property
    def n_layers(self):
        return len(self.heads)

    @property
    def n_heads(self):
        return len(self.heads[0]) if self.heads else 0

    @property
    def n_tokens(self):
        return len(self.ids)

    @property
    def n_notes(self):
        return len(self.pitch)

    # ------------------------------------------------------------ accessors
    def note_rows(self, layer, head=None):
        """`NoteRows` (indptr (N+1,), keys (nnz,), weights (nnz,)) of one head, or of ``"rollout"``."""
        return self._head(layer, head).rows

    def shares(self, layer, head=None):
        """``(structure_share (N,), context_share (N,))`` of one head, or of ``"rollout"``."""
        h = self._head(layer, head)
        return h.structure, h.context

    def _head(self, layer, head):
        if isinstance(layer, str):
            if layer != "rollout" or self.rollout is None:
                raise MusicAttnError(f"no {layer!r} maps here (rollout needs the attention of whole windows)")
            return self.rollout
        return self.heads[int(layer)][int(head)]

    @property
    def structure_share(self):
        """(L, H, N) share of each note's attention on tokens of no note."""
        return self._stack(1)

    @property
    def context_share(self):
        """(L, H, N) share of each note's attention on notes not shown (the music before the passage)."""
        return self._stack(2)

    def _stack(self, which):
        return np.array([[h[which] for h in layer] for layer in self.heads]).reshape(
            self.n_layers, self.n_heads, self.n_notes)

    def note_row(self, note, layer, head=None):
        """Dense attention of one query note to every note: (N,) float64."""
        rows = self.note_rows(layer, head)
        out = np.zeros(self.n_notes)
        lo, hi = rows.indptr[note], rows.indptr[note + 1]
        out[rows.keys[lo:hi]] = rows.weights[lo:hi]
        return out

    def top_keys(self, layer, head=None, k=JSON_TOP_K):
        """The ``k`` strongest key notes of every query note, strongest first.

        Returns ``(indptr (N+1,), keys, weights, rest (N,))``: CSR rows of at most
        ``k`` entries and, per row, the summed weight of the key notes left out.
        """
        rows = self.note_rows(layer, head)
        r = _row_ids(rows.indptr)
        keep = _top_k_entries(0.5 * (1.0 - rows.weights), rows.indptr, k)   # by row, strongest first
        counts = np.bincount(r[keep], minlength=self.n_notes)
        rest = np.bincount(r, rows.weights.astype(np.float64), self.n_notes) - np.bincount(
            r[keep], rows.weights[keep].astype(np.float64), self.n_notes)
        return np.concatenate(([0], np.cumsum(counts))), rows.keys[keep], rows.weights[keep], np.maximum(rest, 0)

    @property
    def note_attention(self):
        """Dense (L, H, N, N) float64 note attention, for short pieces (`note_rows` for any length)."""
        L, H, N = self.n_layers, self.n_heads, self.n_notes
        _check_dense(L * H * N * N * 8, "note_attention", "note_rows(layer, head)")
        out = np.zeros((L, H, N, N))
        for layer, head in np.ndindex(L, H):
            rows = self.note_rows(layer, head)
            out[layer, head, _row_ids(rows.indptr), rows.keys] = rows.weights
        return out

    @property
    def token_attention(self):
        """Dense (L, H, T, T) float32 token attention, for short pieces (``token_band`` for any length)."""
        if self.token_band is None:
            raise MusicAttnError("these maps keep no token attention")
        L, H, T, W = self.token_band.shape
        _check_dense(L * H * T * T * 4, "token_attention", "token_band")
        out = np.zeros((L, H, T, T), dtype=np.float32)
        t, s, valid = _band_keys(T, W, self.band_back, 0)
        out[:, :, np.broadcast_to(t, s.shape)[valid], s[valid]] = self.token_band[:, :, valid]
        return out

    # --------------------------------------------------------------- queries
    def head_entropy(self):
        """How spread each head's attention over earlier notes is: mean entropy (nats), shape (L, H).

        For every note, its attention to the notes before it is renormalised to
        sum to one (itself and structure tokens left out) and its entropy taken;
        notes with no attention to earlier notes are skipped.  Low = focused.
        """
        out = np.zeros((self.n_layers, self.n_heads))
        for layer, head in np.ndindex(*out.shape):
            rows = self.note_rows(layer, head)
            out[layer, head] = _earlier_entropy(rows, self.n_notes)
        return out

    def most_focused_head(self):
        """``(layer, head)`` whose note attention has the lowest mean entropy."""
        ent = self.head_entropy()
        layer, head = np.unravel_index(int(np.argmin(ent)), ent.shape)
        return int(layer), int(head)

    def top_attended(self, note, *, layer, head=None, k=3, earlier_only=True):
        """The ``k`` notes that ``note`` attends to most, as ``[(j, weight), ...]``.

        ``head=None`` averages the heads of ``layer`` (``layer="rollout"``: the
        rollout); ``earlier_only`` leaves out the note itself (and anything after it).
        """
        if head is None and not isinstance(layer, str):
            row = np.mean([self.note_row(note, layer, h) for h in range(self.n_heads)], axis=0)
        else:
            row = self.note_row(note, layer, head)
        stop = note if earlier_only else len(row)
        order = np.argsort(-row[:stop], kind="stable")[:k]
        return [(int(j), float(row[j])) for j in order if row[j] > 0]

    def head_roles(self, score=None):
        """What each head does in musical terms: see `music_attn.inspect.roles`.

        Returns a plain dict: ``relations`` (R names), ``share`` (L, H, R),
        ``uniform`` (R,), ``lift`` (L, H, R) and ``table`` (one dict per head:
        layer, head, relation, share, lift; sorted by lift).  ``score`` (the
        file's `Score`) gives the bars and tracks when the maps lack them.
        """
        from music_attn.inspect.roles import maps_roles

        return maps_roles(self, score)

    # --------------------------------------------------------------- outputs
    def to_dict(self, *, top_k=JSON_TOP_K, token_band=False, decimals=3):
        """Plain-Python view (JSON-ready), the format of ``docs/formats.md``."""
        return self._plain(token_band, decimals, self._sparse_dict(top_k, decimals))

    def _plain(self, token_band, decimals, note_attention):
        out = {"format": "music_attn.attention", "version": 3, "name": self.name, "texts": self.texts,
               "tracks": _track_list(self),
               "window": self.window, "n_tokens_in_file": self.n_tokens_in_file, "notice": self.notice,
               "selection": self.selection, "model_fit": _fit_dict(self.model_fit, decimals),
               "layers": self.n_layers, "heads": self.n_heads,
               "notes": _note_dicts(self, decimals),
               "tokens": {"text": [str(t) for t in self.tokens], "note": self.note_of_token.tolist(),
                          "nll": _floats(self.token_nll, decimals)},
               "note_attention": note_attention}
        if token_band and self.token_band is not None:
            out["token_band"] = {"back": self.band_back, "values": _rounded(self.token_band, decimals)}
        return out

    def _sparse_dict(self, k, decimals):
        layers = [[self._head_dict(layer, head, k, decimals) for head in range(self.n_heads)]
                  for layer in range(self.n_layers)]
        rollout = self._head_dict("rollout", None, k, decimals) if self.rollout is not None else None
        return {"top_k": int(k), "layers": layers, "rollout": rollout}

    def _head_dict(self, layer, head, k, decimals):
        indptr, keys, weights, rest = self.top_keys(layer, head, k)
        structure, context = self.shares(layer, head)
        return {"keys": _split_rows(keys, indptr), "weights": _split_floats(weights, indptr, decimals),
                "rest": _floats(rest, decimals), "structure": _floats(structure, decimals),
                "context": _floats(context, decimals)}

    def to_json(self, *, top_k=JSON_TOP_K, token_band=False, decimals=3):
        """The `to_dict` view as compact JSON text (its note attention written by `viz._sparse_json`)."""
        with _gc_paused():
            text = json.dumps(self._plain(token_band, decimals, None), separators=(",", ":"), allow_nan=False)
            before, key, after = text.rpartition('"note_attention":null')      # after it: numbers only
            return before + key[:-4] + _sparse_json(self, top_k, decimals) + after

    def _repr_html_(self):
        from music_attn.inspect.viz import render_html

        page = render_html(self)
        return (f'<iframe srcdoc="{html.escape(page, quote=True)}" '
                'style="width:100%;height:760px;border:0" sandbox="allow-scripts"></iframe>')

    def __repr__(self):
        return (f"AttentionMaps({self.name or 'melody'!r}: {self.n_notes} notes, {self.n_tokens} tokens, "
                f"{self.n_layers} layers x {self.n_heads} heads)")


def _check_shapes(band, labels, n_notes):
    if band.ndim != 4:
        raise ValueError(f"the token band must have shape (L, H, T, W), got {band.shape}")
    if labels.shape != (band.shape[2],):
        raise ValueError(f"note_of_token has shape {labels.shape}, the attention has T={band.shape[2]}")
    if labels.size and labels.max() >= n_notes:
        raise ValueError(f"note_of_token refers to note {labels.max()} but there are {n_notes} notes")


def _assemble(band, back, rollout_band, labels, key_labels, cols, *, progress=None, tokens=None, ids=None,
              token_nll=None, name=None, texts=None, window=None, n_tokens_in_file=None, notice="",
              model_fit=None, selection=None):
    """`AttentionMaps` from a band (L, H, T, W) and its key labels (P + T,) (see `band_to_notes`)."""
    L, H, T, _ = band.shape
    N = len(cols["pitch"])
    rolled = [] if rollout_band is None else [np.asarray(rollout_band, np.float32).reshape(1, T, -1)]
    flat = band_to_notes([band.reshape(L * H, T, -1)] + rolled, back, key_labels, N)   # one index pass for both
    heads = [flat[layer * H:(layer + 1) * H] for layer in range(L)]
    progress is not None and progress.update(L * H)
    rollout = flat[L * H] if rolled else None
    nll = np.full(T, np.nan) if token_nll is None else np.asarray(token_nll, dtype=np.float64)
    if nll.shape != (T,):
        raise ValueError(f"token_nll has shape {nll.shape}, expected ({T},)")
    surprise = np.bincount(labels[labels >= 0], np.nan_to_num(nll)[labels >= 0], minlength=N)
    return AttentionMaps(
        tokens=list(tokens) if tokens is not None else [str(i) for i in range(T)],
        ids=np.asarray(ids if ids is not None else np.zeros(T), dtype=np.int64), note_of_token=labels,
        token_band=band, band_back=int(back),
        rollout_band=None if rollout_band is None else np.asarray(rollout_band, np.float32).reshape(T, -1),
        heads=heads, rollout=rollout, token_nll=nll, surprise=surprise,
        note_names=spelled_names(cols["pitch"], np.asarray(cols["end"]) - np.asarray(cols["start"]), cols["drum"]),
        name=name, texts=dict(texts or {}),
        window=window, n_tokens_in_file=int(n_tokens_in_file or T), notice=notice,
        model_fit=dict(model_fit or {}), selection=dict(selection or {}), **cols)


# ------------------------------------------------------------------ notes
def _note_columns(notes):
    """pitch/start/end/velocity/track (and bar/beat when given) columns (N,) from a mapping,
    structured array or note objects."""
    out = {}
    for key, names in _NOTE_FIELDS.items():
        col = _find_column(notes, names)
        if col is None and key == "velocity":
            col = np.full(len(out["pitch"]), 80)
        if col is None:
            raise ValueError(f"notes have no {key!r} column (looked for {', '.join(names)})")
        out[key] = np.asarray(col, dtype=np.int64 if key in ("pitch", "velocity") else np.float64)
    track = _find_column(notes, ("track",))
    out["track"] = np.zeros(len(out["pitch"]), np.int64) if track is None else np.asarray(track, np.int64)
    channel, drum = _find_column(notes, ("channel",)), _find_column(notes, ("drum", "is_drum"))
    out["drum"] = (np.asarray(drum, bool) if drum is not None else
                   np.asarray(channel) == DRUM_CHANNEL if channel is not None else np.zeros(len(out["pitch"]), bool))
    bar, beat = _find_column(notes, ("bar",)), _find_column(notes, ("beat",))
    known = bar is not None and beat is not None and len(bar) == len(out["pitch"])
    out["bar"] = np.asarray(bar, np.int64) if known else None
    out["beat"] = np.asarray(beat, np.float64) if known else None
    return out


def _find_column(notes, names):
    for name in names:
        try:
            return np.asarray(notes[name])                    # mapping / structured array
        except (KeyError, ValueError, TypeError, IndexError):
            pass
        if hasattr(notes, name):                              # NoteArray-like container
            return np.asarray(getattr(notes, name))
        items = list(notes) if not isinstance(notes, (str, bytes, dict)) else []
        if items and all(hasattr(n, name) for n in items):    # list of note objects
            return np.array([getattr(n, name) for n in items])
    if hasattr(notes, "__len__") and len(notes) == 0 and names[0] in _NOTE_FIELDS:
        return np.zeros(0)
    return None


def _num(x, decimals):
    x = float(x)
    return None if not math.isfinite(x) else round(x, decimals)


def _floats(a, decimals):
    """Rounded floats as a list, None for NaN/inf (JSON null)."""
    a = np.round(np.asarray(a, np.float64), decimals)
    out = a.tolist()
    if not np.isfinite(a).all():
        out = [x if math.isfinite(x) else None for x in out]
    return out


def _rounded(a, decimals):
    return np.round(np.asarray(a, dtype=np.float64), decimals).tolist()


# ------------------------------------------------------------ MIDI texts
def _name_of(x, seq):
    """The file name shown for the piece (bidi controls escaped: see :mod:`music_attn._text`)."""
    name = getattr(seq, "name", None)
    if name:
        return without_bidi(Path(str(name)).name)
    if isinstance(x, (str, Path)):
        return without_bidi(Path(x).name)
    return getattr(x, "filename", None) and without_bidi(Path(x.filename).name)


def _midi_texts(score):
    """Track names (one per track of the file, indexed like ``note.track``; "" for a track with
    no name) and lyrics of the Score the piece was read into (empty for None), bidi controls escaped."""
    if score is None:
        return {}
    return {"tracks": [without_bidi(name.strip()) for name in score.track_names],
            "lyrics": without_bidi(score.lyrics()[:2000])}


def _track_list(maps):
    """One entry per track of the file, indexed by ``note.track``: number, name, label, notes shown."""
    names = [str(t) for t in maps.texts.get("tracks", [])]
    counts = np.bincount(np.asarray(maps.track, np.int64), minlength=len(names)) if maps.n_notes else np.zeros(len(names), int)
    names += [""] * (len(counts) - len(names))
    return [{"index": i, "name": name, "label": select.track_label(i, name), "notes": int(n)}
            for i, (name, n) in enumerate(zip(names, counts.tolist()))]


# ------------------------------------------------------------- model pass
def attention_maps(model, source, *, window=None, tokenizer=None, bars=None, start=None, end=None,
                   tracks=None, melody=False, progress=None):
    """Run ``model`` over a piece (or a chosen part of it) and return its `AttentionMaps`.

    Parameters
    ----------
    model : music_attn.core.model.Model
    source : path, mido.MidiFile, pretty_midi.PrettyMIDI, Score or TokenSequence
        A MIDI input is encoded with ``tokenizer`` (default ``model.tokenizer``).
    window : int, optional
        Tokens the model sees at once; default and maximum ``model.config.max_len``.
        Any length is read with the windowing rule (module docstring).
    bars : (first, last), optional
        Show the notes starting in these bars (counted from 1, both included).
    start, end : float, optional
        Show the notes starting at ``start <= onset < end`` seconds.
    tracks : list of int or str, optional
        Keep the notes of these tracks (numbers as in the file, or names).
    melody : bool
        Keep only the top voice (the highest sounding note at each onset).
    progress : bool, optional
        Progress on stderr: True, a bar on a terminal and plain lines in a log;
        default: a bar when stderr is a terminal.

    The rules for selection are in :mod:`music_attn.music.select`; a passage
    is read with the music before it as context (module docstring).

    Raises
    ------
    MidiError
        The file cannot be read, or has no notes.
    MusicAttnError
        No such track, or the chosen passage has no notes.
    ValueError
        Ids outside the model's vocabulary, or a bad ``window``.
    """
    tok = tokenizer if tokenizer is not None else model.tokenizer
    seq, score, names = _read(source, tok, tracks, melody)
    ids = np.asarray(seq.ids, dtype=np.int64)
    _check_ids(ids, model.config.vocab_size)
    chosen = window is not None
    window = _check_window(window, model.config.max_len)
    labels = np.asarray(seq.note_of_token, dtype=np.int64)
    cols = _note_columns(seq.notes)
    _add_bars(cols, seq.notes, score)
    a, b, shown = _passage(labels, cols, bars, start, end)
    narrowed = "" if chosen else _narrowed(model, b - a, window)
    window = window if not narrowed else fitting_window(model, b - a, window)
    key_labels, labels_shown, kept = _relabel(labels, shown, a, b, window)
    if not kept.size:
        raise MidiError(f"{_name_of(source, seq) or 'melody'}: no notes to inspect")
    _check_memory(model, b - a, window, _name_of(source, seq) or "melody")
    bar = _progress_bar(progress, len(_plan(ids.size, window, a, b, alignment(model))) + model.config.n_layers * model.config.n_heads)
    band, roll, nll = _run_windows(model, ids, window, a, b, bar)
    selection = {"bars": list(bars) if bars else None, "seconds": _seconds(start, end),
                 "tracks": [str(t) for t in tracks] if tracks else None, "melody": bool(melody)}
    maps = _assemble(band, window - 1, roll, labels_shown, key_labels, {k: None if v is None else v[kept] for k, v in cols.items()},
                     progress=bar, tokens=list(seq.tokens)[a:b], ids=ids[a:b], token_nll=nll,
                     name=_name_of(source, seq), texts=_midi_texts(score), window=window,
                     n_tokens_in_file=ids.size, selection=selection,
                     notice=_notice(ids.size, a, b, window, selection) + narrowed)
    bar is not None and bar.close()
    maps.score = score
    maps.model_fit = model_fit(model, nll, polyphonic=_polyphonic(maps), melody=melody, tracks=tracks)
    return maps


def _read(source, tok, tracks, melody):
    """(TokenSequence, Score or None, {track: name}) of the input, after the track/voice choice."""
    if hasattr(source, "ids") and hasattr(source, "note_of_token"):
        if tracks or melody:
            raise ValueError("tracks= and melody= need a MIDI input, not a TokenSequence")
        return source, None, {}
    if tok is None:
        raise MusicAttnError("the model has no tokenizer: pass a TokenSequence or tokenizer=...")
    from music_attn.music.midi import read_midi

    score = read_midi(source, include_drums=tok.include_drums, sustain=tok.sustain)
    names = select.track_names(score)
    if tracks:
        score = select.keep_tracks(score, tracks, names)
    if melody:
        score = select.top_voice(score)
    return tok.encode(score), score, names


def _add_bars(cols, notes, score):
    """Bar and beat columns from the score's metre (left as they are without a score)."""
    if score is None or not len(notes):
        return
    from music_attn.music.select import bars_and_beats

    cols["bar"], cols["beat"] = bars_and_beats(notes, score.time_signatures, score.ticks_per_beat)


def _passage(labels, cols, bars, start, end):
    """Token span [a, b) and the notes (bool (N,)) of the chosen passage (the whole piece by default)."""
    from music_attn.music.select import passage_mask, token_range

    if bars is None and start is None and end is None:
        return 0, labels.size, np.ones(len(cols["pitch"]), bool)
    if bars is not None and cols.get("bar") is None:
        raise ValueError("bars= needs a MIDI input (the metre comes from the file)")
    shown = passage_mask(cols.get("bar"), cols["start"], bars=bars,
                         seconds=None if start is None and end is None else (start, end))
    a, b = token_range(labels, shown)
    return a, b, shown


def _relabel(labels, shown, a, b, window):
    """Key labels (P + T,) of the context and the passage, the passage's own labels (T,), kept notes.

    Notes are renumbered 0.. in order; tokens of notes not shown become context (-2)
    in the key labels and -1 in the labels of the maps; structure tokens stay -1.
    """
    kept = np.flatnonzero(shown & (np.bincount(labels[a:b][labels[a:b] >= 0], minlength=shown.size) > 0))
    new = np.full(shown.size + 1, _CONTEXT)
    new[kept] = np.arange(kept.size)
    new[-1] = _STRUCTURE
    P = a - max(0, a - (window - 1))
    key_labels = new[np.where(labels[a - P:b] >= 0, labels[a - P:b], -1)]
    passage = key_labels[P:]
    return key_labels, np.where(passage >= 0, passage, -1), kept


def _progress_bar(progress, total):
    """None: a bar when stderr is a terminal; True: a bar there, plain lines in a log; False: none."""
    import sys

    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from music_attn._progress import progress as show

    return show(total, "inspect")


def _check_ids(ids, vocab_size):
    if ids.ndim != 1 or ids.size < 2:
        raise ValueError(f"need a 1-d sequence of at least 2 tokens, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids span {ids.min()}..{ids.max()} but the model's vocabulary has "
                         f"{vocab_size} entries: was the melody encoded with the model's tokenizer?")


def _narrowed(model, T, window):
    """The sentence saying why a long passage is read in narrower windows than the model's ('' if not)."""
    W = fitting_window(model, T, window)
    if W == window:
        return ""
    return (f" Its {T:,} tokens are read in windows of {W} (the model's are {window}) to stay within the "
            f"memory budget (MUSIC_ATTN_MEMORY_BUDGET); --window (window= in Python) chooses.")


def _check_window(window, max_len):
    window = max_len if window is None else int(window)
    if not 2 <= window <= max_len:
        raise ValueError(f"window must be between 2 and the model's max_len {max_len}, got {window}")
    return window


def _seconds(start, end):
    return None if start is None and end is None else [start, end]


def _notice(n_total, a, b, window, selection):
    parts = []
    if n_total > window:
        parts.append(f"The model sees {window} tokens at a time; this piece's {n_total} tokens were read "
                     f"in overlapping windows of {window} (stride {window // 2}): each token attends to "
                     f"the tokens before it inside its window, at least {window - window // 2} of them.")
    if b - a < n_total:
        parts.append(f"Shown: tokens {a + 1}..{b} of {n_total}, read with the music before them as context.")
    if selection["tracks"]:
        parts.append(f"Tracks kept: {', '.join(selection['tracks'])}.")
    if selection["melody"]:
        parts.append("Top voice only (the highest sounding note at each onset).")
    return " ".join(parts)


def _fit_dict(fit, decimals):
    return {k: (_num(v, decimals) if isinstance(v, float) else v) for k, v in fit.items()}
