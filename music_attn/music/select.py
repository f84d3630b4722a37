"""Choosing what to look at in a score: tracks, the top voice, a passage by bars or seconds.

Every function works on the note arrays of a :class:`~music_attn.music.midi.Score`
(``NOTE_DTYPE``) and returns new arrays or a new Score; the file and the
Score passed in are never changed.

Rules, as a musician would count:

* **Bars and beats** follow the file's time signatures: bars are numbered from
  1 at tick 0; a time signature takes effect at its tick (a change inside a bar
  starts a new bar there, as MIDI players count); the beat is counted from 1 in
  units of the signature's denominator (in 6/8, beats are eighth notes), with
  a fraction for notes between beats.
* **Tracks** are numbered as the file stores them (0 = its first track chunk,
  the numbering mido uses) or named by their ``track_name`` (case-insensitive);
  a name that several tracks with notes share is refused with their numbers
  (three parts called "Viola", two staves called "Piano").  A track is shown
  as ``"N · name"`` (``track_label``), ``"track N"`` when it has no name.
* **Top voice** (``top_voice``): the highest sounding note at each onset, i.e.
  a note is kept when it is the highest of the notes starting at its onset and
  no note still sounding from an earlier onset is higher (the "skyline").  Kept
  notes keep their lengths.
* **A passage** is the set of notes whose onset lies in it: bars ``first..last``
  (inclusive) or ``start <= onset < end`` seconds.

Shape legend: N notes.
"""

import dataclasses
import heapq

import numpy as np

from music_attn.errors import MusicAttnError

__all__ = ["bars_and_beats", "track_names", "track_label", "track_labels", "keep_tracks", "top_voice", "passage_mask",
           "token_range", "parse_bars"]


def bars_and_beats(notes, time_signatures, ticks_per_beat):
    """Bar (from 1) and beat (from 1, in denominator units) of every note: (N,) int64, (N,) float64."""
    ticks = np.asarray(notes["start_tick"], dtype=np.int64)
    sig_tick = np.asarray(time_signatures["tick"], dtype=np.int64)
    den = np.asarray(time_signatures["denominator"], dtype=np.float64)
    bar_len = ticks_per_beat * 4.0 * np.asarray(time_signatures["numerator"]) / den   # ticks per bar
    beat_len = ticks_per_beat * 4.0 / den
    bars_in = np.ceil(np.diff(sig_tick) / bar_len[:-1] - 1e-9)          # bars of each segment but the last
    bars_before = np.concatenate(([0.0], np.cumsum(bars_in)))
    seg = np.maximum(np.searchsorted(sig_tick, ticks, side="right") - 1, 0)
    rel = ticks - sig_tick[seg]
    bar = bars_before[seg] + np.floor(rel / bar_len[seg]) + 1
    beat = 1 + (rel - (bar - 1 - bars_before[seg]) * bar_len[seg]) / beat_len[seg]
    return bar.astype(np.int64), beat


def track_names(score):
    """{track index: name} of the tracks of a Score that have a (non-blank) name."""
    return {index: name.strip() for index, name in enumerate(score.track_names) if name.strip()}


def track_label(index, name=None):
    """How a track is shown everywhere: ``"2 · Viola"`` (its number in the file, its name), ``"track 2"``."""
    name = (name or "").strip()
    return f"{int(index)} · {name}" if name else f"track {int(index)}"


def track_labels(score):
    """``track_label`` of every track of a Score, indexed by track number (list, one per track chunk)."""
    names = track_names(score)
    count = max(len(score.track_names), int(score.notes["track"].max()) + 1 if len(score.notes) else 0)
    return [track_label(i, names.get(i)) for i in range(count)]


def keep_tracks(score, tracks, names=None):
    """A Score with only the notes of ``tracks`` (indices or names, see the module docstring).

    Raises MusicAttnError naming the tracks that hold notes when one cannot be found,
    or the numbers of the tracks that share a name given.
    """
    names = names or {}
    present = np.unique(score.notes["track"])
    wanted = {_track_index(t, present, names) for t in tracks}
    return dataclasses.replace(score, notes=score.notes[np.isin(score.notes["track"], list(wanted))])


def _track_index(spec, present, names):
    text = str(spec).strip()
    if text.lstrip("-").isdigit() and int(text) in present:
        return int(text)
    by_name = [i for i, name in names.items() if name.casefold() == text.casefold() and i in present]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        numbers = ", ".join(map(str, by_name))
        raise MusicAttnError(f"{len(by_name)} tracks with notes are named {names[by_name[0]]!r} (tracks {numbers}): "
                             f"give the track's number instead, e.g. {by_name[0]}")
    listing = ", ".join(f"{i}" + (f" ({names[i]!r})" if i in names else "") for i in present.tolist())
    raise MusicAttnError(f"no track {text!r} with notes; tracks with notes: {listing or 'none'}")


def top_voice(score):
    """A Score with only the highest sounding note at each onset (the skyline; module docstring)."""
    notes = score.notes
    if len(notes) == 0:
        return score
    order = np.lexsort((-notes["pitch"], notes["start_tick"]))          # onset, then highest first
    tick, pitch, end = (notes[f][order].tolist() for f in ("start_tick", "pitch", "end_tick"))
    keep, sounding, i = [], [], 0                                        # sounding: heap of (-pitch, end)
    while i < len(tick):
        j = i
        while j < len(tick) and tick[j] == tick[i]:
            j += 1
        while sounding and sounding[0][1] <= tick[i]:                    # the highest has ended
            heapq.heappop(sounding)
        if not sounding or pitch[i] >= -sounding[0][0]:
            keep.append(order[i])
        for k in range(i, j):
            heapq.heappush(sounding, (-pitch[k], end[k]))
        i = j
    return dataclasses.replace(score, notes=notes[np.sort(np.array(keep, dtype=np.int64))])


def passage_mask(bar, start, *, bars=None, seconds=None):
    """Notes whose onset lies in bars ``(first, last)`` and in ``(start, end)`` seconds: bool (N,).

    Either range may be None (no limit); an end of None is open.
    """
    keep = np.ones(len(start), bool)
    if bars is not None:
        first, last = bars
        keep &= (bar >= first) & (bar <= last)
    if seconds is not None:
        lo, hi = seconds
        keep &= (start >= (-np.inf if lo is None else lo)) & (start < (np.inf if hi is None else hi))
    return keep


def token_range(note_of_token, chosen):
    """The token span ``[a, b)`` of the chosen notes (bool (N,)), with the structure tokens before them.

    ``a`` is the first token of a chosen note, moved back over the structure
    tokens (label -1) just before it (Bar, Position, BOS); ``b`` is one past the
    last token of a chosen note.  Raises MusicAttnError when nothing is chosen.
    """
    labels = np.asarray(note_of_token)
    hit = np.flatnonzero((labels >= 0) & chosen[np.maximum(labels, 0)])
    if hit.size == 0:
        raise MusicAttnError("the chosen passage holds no notes")
    a, b = int(hit[0]), int(hit[-1]) + 1
    while a > 0 and labels[a - 1] < 0:
        a -= 1
    return a, b


def parse_bars(text):
    """``"9:16"`` -> (9, 16); ``"9"`` -> (9, 9); bars count from 1.  ValueError otherwise."""
    parts = str(text).split(":")
    try:
        first, last = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        first = last = None
    if first is None or not 1 <= first <= last:
        raise ValueError(f"bars must be FIRST:LAST counted from 1 (e.g. 9:16), got {text!r}")
    return first, last
