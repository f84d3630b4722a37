"""Note alignment for MidiTok token sequences: the note each token belongs to.

MidiTok has no map from tokens to notes; attention over notes needs one.
:func:`note_alignment` reads a ``TokSequence`` of a REMI, TSD or MIDILike
tokenizer and gives, for every token, the index of the note it belongs to
(-1 for structure tokens), matched to the notes MidiTok itself decodes from
the sequence (``tokenizer.decode``), with their times in seconds.

A note's tokens are its pitch token (``Pitch_*``; ``NoteOn_*`` in MIDILike)
and the ``Velocity_*`` / ``Duration_*`` tokens right after it; in MIDILike
also the ``NoteOff_*`` that ends it (MidiTok pairs NoteOffs first in, first
out).  Everything else (``Bar``, ``Position``, ``TimeShift``, ``Rest``,
``TimeSig``, ``Tempo``, ``Chord``, special tokens) is structure.

Supported: REMI, TSD and MIDILike, one track (``use_programs=False``), with
or without velocities, durations, rests, chords, tempos and time signatures.
Not supported (:class:`MidiTokAlignmentError`): other tokenizations, programs
or several tracks, pitch intervals, sustain pedals, pitch bends, and
tokenizers trained with BPE/Unigram/WordPiece (their ids merge tokens).
"""

from typing import NamedTuple

import numpy as np

from music_attn.errors import TokenizerError

__all__ = ["note_alignment", "MidiTokAlignment", "MidiTokAlignmentError", "SUPPORTED"]

SUPPORTED = ("REMI", "TSD", "MIDILike")
_TIME = {"Bar", "Position", "TimeShift", "Rest"}     # tokens that move time forward
_START = {"Pitch", "NoteOn"}                          # a note begins
_ATTRIBUTE = {"Velocity", "Duration"}                 # belong to the note just begun
_UNSUPPORTED_OPTIONS = ("use_programs", "use_pitch_intervals", "use_sustain_pedals", "use_pitch_bends")


class MidiTokAlignmentError(TokenizerError):
    """A MidiTok tokenizer configuration or sequence that cannot be aligned to notes."""


class MidiTokAlignment(NamedTuple):
    """Tokens of a MidiTok sequence and the notes they belong to.

    tokens : list of str (T,); ids : ndarray (T,) int64
    note_of_token : ndarray (T,) int64, note index of each token, -1 for structure
    notes : dict of ndarrays (N,): ``pitch``, ``start``, ``end`` (seconds), ``velocity``,
        in the order their pitch tokens appear
    """
    tokens: list
    ids: np.ndarray
    note_of_token: np.ndarray
    notes: dict


def _check_tokenizer(tokenizer):
    name = type(tokenizer).__name__
    if name not in SUPPORTED:
        raise MidiTokAlignmentError(f"note alignment supports MidiTok {', '.join(SUPPORTED)}, not {name}")
    used = [opt for opt in _UNSUPPORTED_OPTIONS if getattr(tokenizer.config, opt, False)]
    if used:
        raise MidiTokAlignmentError(f"note alignment supports single-track tokenizers without "
                                    f"{', '.join(_UNSUPPORTED_OPTIONS)}; this one has {', '.join(used)}")
    if getattr(tokenizer, "is_trained", False):
        raise MidiTokAlignmentError("note alignment needs the base vocabulary: this tokenizer was "
                                    "trained (BPE/Unigram/WordPiece), so its ids merge several tokens")


def _single_sequence(tokens):
    """The one TokSequence of a single-track encoding (a list of one is unwrapped)."""
    if isinstance(tokens, (list, tuple)):
        if len(tokens) != 1:
            raise MidiTokAlignmentError(f"note alignment takes one track; got {len(tokens)} sequences "
                                        f"(pass one of them)")
        tokens = tokens[0]
    if not getattr(tokens, "tokens", None):
        raise MidiTokAlignmentError("expected a MidiTok TokSequence with its tokens (tokenizer(score) "
                                    "or tokenizer.complete_sequence(seq) fills them)")
    return tokens


def _groups(tokens):
    """Token indices of each note (in pitch-token order) and the time frame it starts in."""
    groups, frames, pending, frame = [], [], {}, 0
    current = None                       # the group that Velocity/Duration tokens join
    for t, token in enumerate(tokens):
        kind, _, value = token.partition("_")
        if kind in _TIME:
            frame, current = frame + 1, None
        elif kind in _START:
            current = [t]
            groups.append(current)
            frames.append(frame)
            if kind == "NoteOn":
                pending.setdefault(value, []).append(current)
        elif kind in _ATTRIBUTE and current is not None:
            current.append(t)
        elif kind == "NoteOff" and pending.get(value):
            pending[value].pop(0).append(t)  # first in, first out, as MidiTok decodes
            current = None
        else:
            current = None
    ended = [len(g) > 1 and tokens[g[-1]].startswith("NoteOff") for g in groups]
    return groups, frames, ended


def _decoded_notes(tokenizer, seq):
    """MidiTok's own decoding of the sequence: structured notes sorted by onset (seconds, ticks)."""
    score = tokenizer.decode([seq])
    if len(score.tracks) > 1:
        raise MidiTokAlignmentError(f"the sequence decodes to {len(score.tracks)} tracks, not one")
    if not score.tracks:
        return [], []
    ticks = score.tracks[0].notes
    seconds = score.to("second").tracks[0].notes
    order = sorted(range(len(ticks)), key=lambda i: ticks[i].time)   # stable: token order within a time
    return [ticks[i] for i in order], [seconds[i] for i in order]


def _match(groups, frames, keep, tokens, decoded):
    """Decoded note index of each kept group: frames in order <-> onset times in order."""
    match = np.full(len(groups), -1)
    by_frame = {}
    for g, f in enumerate(frames):
        if keep[g]:
            by_frame.setdefault(f, []).append(g)
    onsets = sorted({n.time for n in decoded})
    if len(onsets) != len(by_frame):
        raise MidiTokAlignmentError(f"the tokens hold notes at {len(by_frame)} times but MidiTok "
                                    f"decodes {len(onsets)} onsets: not a well-formed sequence")
    for (f, gs), onset in zip(sorted(by_frame.items()), onsets):
        free = [i for i, n in enumerate(decoded) if n.time == onset]
        for g in gs:
            pitch = int(tokens[groups[g][0]].partition("_")[2])
            i = next((i for i in free if decoded[i].pitch == pitch), None)
            if i is None:
                raise MidiTokAlignmentError(f"token {groups[g][0]} ({tokens[groups[g][0]]}) has no "
                                            f"decoded note of that pitch at its onset")
            free.remove(i)
            match[g] = i
    return match


def note_alignment(tokenizer, tokens):
    """The note each token of a MidiTok sequence belongs to, matched to MidiTok's decoding.

    Parameters
    ----------
    tokenizer : miditok.REMI, miditok.TSD or miditok.MIDILike (see the module docstring)
    tokens : miditok.TokSequence, or a list holding one (``tokenizer(score)`` of one track)

    Returns
    -------
    MidiTokAlignment

    Raises
    ------
    MidiTokAlignmentError
        An unsupported tokenizer or configuration, several tracks, or tokens that
        MidiTok does not decode to the notes they spell.
    """
    _check_tokenizer(tokenizer)
    seq = _single_sequence(tokens)
    toks = list(seq.tokens)
    groups, frames, ended = _groups(toks)
    keep = ended if type(tokenizer).__name__ == "MIDILike" else [True] * len(groups)
    ticks, seconds = _decoded_notes(tokenizer, seq)
    match = _match(groups, frames, keep, toks, ticks)
    order = [g for g in range(len(groups)) if match[g] >= 0]     # notes in pitch-token order
    note_of_token = np.full(len(toks), -1, dtype=np.int64)
    for k, g in enumerate(order):
        note_of_token[groups[g]] = k
    picked = [seconds[match[g]] for g in order]
    notes = {"pitch": np.array([n.pitch for n in picked], dtype=np.int64),
             "start": np.array([n.time for n in picked], dtype=np.float64),
             "end": np.array([n.time + n.duration for n in picked], dtype=np.float64),
             "velocity": np.array([n.velocity for n in picked], dtype=np.int64)}
    ids = np.asarray(seq.ids if seq.ids else [tokenizer.vocab[t] for t in toks], dtype=np.int64)
    return MidiTokAlignment(toks, ids, note_of_token, notes)
