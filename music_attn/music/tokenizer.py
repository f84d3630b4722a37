"""Tokenizers: MIDI notes <-> integer ids, with the note each token belongs to.

Two tokenizers share one interface (:class:`Tokenizer`):

* :class:`RemiTokenizer` -- Huang & Yang (2020) beat-based events:
  ``Bar``, ``TimeSig_3/4`` (first bar and where the metre changes),
  ``Position_p``, then per note ``Pitch_60``, ``Velocity_80`` (optional),
  ``Duration_d`` (in positions).
* :class:`PerformanceTokenizer` -- Oore et al. (2018) / Music Transformer
  events: ``NoteOn_60``, ``NoteOff_60``, ``TimeShift_k`` (k steps of 10 ms),
  ``Velocity_v``.

Tokens are readable ``Type_Value`` strings; the specials ``PAD`` (= 0),
``BOS`` and ``EOS`` come first.  ``encode`` is vectorised with numpy (no
Python object per note); ``decode`` and :meth:`Tokenizer.grammar` run the same
state machine, so a sequence sampled under the grammar decodes with zero
skipped tokens.

Shape legend: L tokens, N notes, V vocabulary size.
"""

import copy
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pretty_midi

from music_attn.music import constants as K
from music_attn._io import atomic_write
from music_attn.errors import TokenizerError
from music_attn.music.midi import NOTE_DTYPE, TEMPO_DTYPE, TIME_SIGNATURE_DTYPE, _run_starts, read_midi, to_pretty_midi

__all__ = [
    "Tokenizer",
    "RemiTokenizer",
    "PerformanceTokenizer",
    "TokenSequence",
    "DecodeResult",
    "GrammarState",
    "load_tokenizer",
    "velocity_values",
]

# Token kinds (the part before "_").
SPECIAL, BAR, TIMESIG, POSITION, PITCH, VELOCITY, DURATION, NOTE_ON, NOTE_OFF, TIME_SHIFT = range(10)
_KIND_NAMES = ("", "Bar", "TimeSig", "Position", "Pitch", "Velocity", "Duration", "NoteOn", "NoteOff", "TimeShift")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


class TokenSequence:
    """An encoded file: ids and, for every token, the note it belongs to.

    Attributes
    ----------
    ids : int32 (L,)
    note_of_token : int32 (L,)
        Index into ``notes`` of the note a token belongs to, -1 for none
        (BOS, EOS, Bar, TimeSig, Position, TimeShift).
    notes : NOTE_DTYPE (N,)
        The notes as read (real times), in the order the tokens name them.
    name : str or None
        The file name, when encoded from a file.
    """

    def __init__(self, ids, note_of_token, notes, vocab, name=None):
        self.ids = np.asarray(ids, dtype=np.int32)
        self.note_of_token = np.asarray(note_of_token, dtype=np.int32)
        self.notes = notes
        self.name = name
        self._vocab = vocab

    @property
    def tokens(self):
        """The token strings, list of length L."""
        vocab = self._vocab
        return [vocab[i] for i in self.ids.tolist()]

    def __len__(self):
        return len(self.ids)

    def __repr__(self):
        return f"TokenSequence({len(self.ids)} tokens, {len(self.notes)} notes, name={self.name!r})"

    def slice_bars(self, first, last):
        """The tokens of bars ``first..last`` (counted from 1 by the Bar tokens, both included).

        A new TokenSequence from the ``first``-th Bar token up to the Bar token
        after bar ``last`` (or the end, without EOS); its notes are those named
        there, renumbered from 0.  TokenizerError when there is no bar ``first``
        (the performance tokenizer has no Bar tokens).
        """
        first, last = int(first), int(last)
        bar = _KIND_NAMES[BAR]
        at = np.flatnonzero(self.ids == self._vocab.index(bar)) if bar in self._vocab else np.zeros(0, int)
        if not 1 <= first <= last or first > at.size:
            raise TokenizerError(f"bars {first}..{last} are not in this sequence of {at.size} bars (counted from 1)")
        stop = at[last] if last < at.size else len(self.ids) - int(self.ids[-1] == EOS_ID)
        labels = self.note_of_token[at[first - 1]:stop]
        kept = np.unique(labels[labels >= 0])
        new = np.full(len(self.notes), -1)
        new[kept] = np.arange(kept.size)
        return TokenSequence(self.ids[at[first - 1]:stop], np.where(labels >= 0, new[labels], -1),
                             self.notes[kept], self._vocab, self.name)


class DecodeResult(NamedTuple):
    """What :meth:`Tokenizer.decode` returns."""

    midi: pretty_midi.PrettyMIDI
    skipped: int  # tokens that could not be used (illegal where they stood)


def velocity_values(n_bins):
    """The velocity each of ``n_bins`` bins stands for: round(127 (i + 1) / n), int (n_bins,)."""
    return np.round(np.arange(1, n_bins + 1) * 127 / n_bins).astype(np.int64)


def _velocity_bins(velocity, values):
    """Index of the nearest value (ties go to the lower bin)."""
    midpoints = (values[1:] + values[:-1]) / 2
    return np.searchsorted(midpoints, velocity, side="left")


# --------------------------------------------------------------------------- base


class Tokenizer:
    """Base class: vocabulary, ids <-> strings, config I/O, decode, transpose.

    Subclasses set ``kind`` and implement ``_build_vocab``, ``_encode_score``,
    ``_new_machine`` and ``_config``.
    """

    kind = None
    sustain = False

    def __init__(self):
        names, kinds, values = list(K.SPECIAL_TOKENS), [SPECIAL] * 3, [0, 1, 2]
        for kind, kind_values, text in self._build_vocab():
            for v, t in zip(kind_values, text):
                names.append(f"{_KIND_NAMES[kind]}_{t}" if t is not None else _KIND_NAMES[kind])
                kinds.append(kind)
                values.append(v)
        self.vocab = names
        self._index = {name: i for i, name in enumerate(names)}
        self._kinds = np.array(kinds, dtype=np.int8)  # (V,)
        self._values = np.array(values, dtype=np.int64)  # (V,)
        self._kind_list, self._value_list = kinds, values  # fast scalar access in decode
        self._first = {k: int(np.flatnonzero(self._kinds == k)[0]) for k in set(kinds)}
        self._structure = ~np.isin(self._kinds, self._note_kinds)  # (V,)

    # -- vocabulary
    @property
    def vocab_size(self):
        return len(self.vocab)

    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
    bar_id = None

    def token_to_id(self, token):
        """Id of a token string; TokenizerError if unknown."""
        try:
            return self._index[token]
        except KeyError:
            raise TokenizerError(f"unknown token {token!r} for the {self.kind} tokenizer") from None

    def id_to_token(self, token_id):
        """Token string of an id; TokenizerError if out of range."""
        if not 0 <= int(token_id) < len(self.vocab):
            raise TokenizerError(f"token id {token_id} outside the vocabulary (0..{len(self.vocab) - 1})")
        return self.vocab[int(token_id)]

    def ids_from_tokens(self, tokens):
        """Token strings -> int32 ids; TokenizerError names the first unknown token."""
        return np.array([self.token_to_id(t) for t in tokens], dtype=np.int32)

    @property
    def structure_mask(self):
        """bool (V,): True for tokens that are not part of a note (a copy)."""
        return self._structure.copy()

    def is_structure(self, token_id):
        """True for Bar, TimeSig, Position, TimeShift and the specials."""
        return bool(self._structure[int(token_id)])

    # -- encode / decode
    def encode(self, source):
        """Encode a MIDI file (path, mido.MidiFile, PrettyMIDI or Score) -> TokenSequence.

        The ids start with BOS and end with EOS; a file with no notes gives
        ``[BOS, EOS]``.  Unreadable files raise MidiError.
        """
        score = read_midi(source, include_drums=self.include_drums, sustain=self.sustain)
        ids, note_of_token, notes = self._encode_score(score)
        return TokenSequence(ids, note_of_token, notes, self.vocab, score.name)

    def decode(self, ids):
        """Decode any id sequence -> DecodeResult(midi, skipped).

        A token that is illegal where it stands (by :meth:`grammar`) is skipped
        and counted; so are an unfinished note at the end, and every non-PAD
        token after EOS.  PAD is ignored.  A leading BOS is optional.
        """
        machine = self._new_machine()
        skipped = 0
        for token_id in _id_list(ids):
            if machine.done:
                skipped += token_id != PAD_ID
            elif not machine.step(token_id):
                skipped += 1
        return DecodeResult(machine.to_midi(), skipped + machine.pending)

    def grammar(self):
        """A fresh GrammarState: ``.allowed()`` (V,) bool, ``.advance(id)``, ``.done``."""
        return self._new_machine()

    def transpose(self, ids, semitones):
        """Shift every pitch token by ``semitones``; other tokens are unchanged.

        Raises TokenizerError if a pitch would leave the tokenizer's range.
        """
        ids = np.array(ids, dtype=np.int32)
        _check_ids(ids, len(self.vocab))
        is_pitch = np.isin(self._kinds[ids], self._pitch_kinds)
        pitch = self._values[ids[is_pitch]] + int(semitones)
        low, high = self.pitch_range
        if pitch.size and (pitch.min() < low or pitch.max() > high):
            raise TokenizerError(f"transposing by {semitones} takes pitches outside {low}..{high}")
        ids[is_pitch] += int(semitones)
        return ids

    # -- config
    def to_dict(self):
        """JSON-ready config; ``Tokenizer.from_dict`` rebuilds an equal tokenizer."""
        return {"type": self.kind, **self._config()}

    @staticmethod
    def from_dict(d):
        """Build the tokenizer a ``to_dict`` describes (dispatching on ``d["type"]``)."""
        if not isinstance(d, dict) or d.get("type") not in _TOKENIZERS:
            kind = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise TokenizerError(f"not a tokenizer config (type {kind!r}; expected one of {sorted(_TOKENIZERS)})")
        params = {k: v for k, v in d.items() if k not in ("type", "vocab")}
        try:
            tokenizer = _TOKENIZERS[d["type"]](**params)
        except (TypeError, ValueError) as exc:
            raise TokenizerError(f"bad {d['type']} tokenizer config: {exc}") from None
        if "vocab" in d and list(d["vocab"]) != tokenizer.vocab:
            raise TokenizerError("the saved vocabulary does not match the one this config builds")
        return tokenizer

    def save(self, path):
        """Write the config (with the vocabulary) as JSON, atomically."""
        with atomic_write(path, mode="w") as f:
            json.dump({**self.to_dict(), "vocab": self.vocab}, f, indent=1)
            f.write("\n")

    def __eq__(self, other):
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _velocity_setup(self, velocity_bins):
        if velocity_bins < 0 or velocity_bins > 127:
            raise ValueError(f"velocity_bins must be in 0..127, got {velocity_bins}")
        self.velocity_bins = int(velocity_bins)
        self._velocities = velocity_values(self.velocity_bins) if self.velocity_bins else np.zeros(0, np.int64)

    def _pitch_setup(self, pitch_range):
        low, high = (int(p) for p in pitch_range)
        if not 0 <= low <= high <= 127:
            raise ValueError(f"pitch_range must be within 0..127, got {pitch_range}")
        self.pitch_range = (low, high)

    def _velocity_bin_of(self, velocity):
        if not self.velocity_bins:
            return np.zeros(len(velocity), dtype=np.int64)
        return _velocity_bins(velocity, self._velocities)

    def _in_range(self, notes):
        low, high = self.pitch_range
        return notes[(notes["pitch"] >= low) & (notes["pitch"] <= high)]


def load_tokenizer(path):
    """Read a tokenizer saved with :meth:`Tokenizer.save`; TokenizerError if unusable."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not a tokenizer JSON file ({exc})") from None
    try:
        return Tokenizer.from_dict(d)
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}") from None


def _id_list(ids):
    """Any id sequence -> list of Python ints (non-integers raise TokenizerError)."""
    arr = np.asarray(ids)
    if arr.ndim != 1 and arr.size:
        raise TokenizerError(f"expected a 1-D id sequence, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TokenizerError(f"token ids must be integers, got {arr.dtype}")
    return arr.astype(np.int64).ravel().tolist()


def _check_ids(ids, vocab_size):
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise TokenizerError(f"token ids must be in 0..{vocab_size - 1}")


def _assemble(parts):
    """Order the tokens of ``parts`` and wrap them in BOS ... EOS.

    parts : list of (keys, ids, notes); keys is a tuple of sort keys, most
    significant first, the first an array (its length is the part's), the
    others arrays or scalars; ids and notes are arrays or scalars.
    Returns (ids int32 (L,), note_of_token int32 (L,)).
    """

    def column(j, k=None):
        cells = [(p[j] if k is None else p[j][k], len(p[0][0])) for p in parts]
        return np.concatenate([c if isinstance(c, np.ndarray) else np.full(n, c) for c, n in cells])

    keys = [column(0, k) for k in range(len(parts[0][0]))]
    order = np.lexsort(keys[::-1])
    ids = np.concatenate(([BOS_ID], column(1)[order], [EOS_ID])).astype(np.int32)
    note_of_token = np.concatenate(([-1], column(2)[order], [-1])).astype(np.int32)
    return ids, note_of_token


def _decoded_midi(starts, ends, pitches, velocities, ticks_per_beat, signatures=None):
    """Note columns in ticks -> PrettyMIDI at DECODE_TEMPO_BPM, one piano track."""
    notes = np.zeros(len(starts), dtype=NOTE_DTYPE)
    notes["start_tick"], notes["end_tick"] = starts, ends
    notes["pitch"], notes["velocity"] = pitches, velocities
    tempos = np.zeros(1, dtype=TEMPO_DTYPE)
    tempos["tempo"] = 60e6 / K.DECODE_TEMPO_BPM
    return to_pretty_midi(notes, ticks_per_beat=ticks_per_beat, tempos=tempos, time_signatures=signatures)


# --------------------------------------------------------------------------- grammar


class GrammarState:
    """The decoding state machine, also used for grammar-constrained sampling.

    ``allowed()`` gives the bool mask (V,) of tokens legal next; ``advance(id)``
    consumes a legal token (TokenizerError otherwise); ``done`` is True after
    EOS.  ``step(id)`` is the lenient form decode uses: it returns False and
    changes nothing for an illegal token.  PAD is always accepted and ignored
    (but only offered by ``allowed()`` once done, so a sampler never picks it
    in the middle of a piece).
    """

    START, OPEN, DONE = "start", "open", "done"

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.state = self.START
        self.pending = 0  # tokens of an unfinished note (skipped if it never finishes)

    @property
    def done(self):
        return self.state == self.DONE

    def allowed(self):
        """bool (V,): tokens legal next."""
        mask = self.tok._state_masks[self.state].copy()
        self._restrict(mask)
        return mask

    def advance(self, token_id):
        """Consume ``token_id``; TokenizerError if it is illegal here."""
        if not self.step(token_id):
            name = self.tok.vocab[token_id] if 0 <= token_id < self.tok.vocab_size else token_id
            raise TokenizerError(f"token {name!r} is not allowed in state {self.state!r}")

    def step(self, token_id):
        """Consume ``token_id`` if legal; returns whether it was."""
        tok = self.tok
        if token_id == PAD_ID:
            return True
        if not 0 <= token_id < len(tok._kind_list):
            return False
        if token_id == BOS_ID:  # only as the first token
            return self.state == self.START and self._open()
        kind = tok._kind_list[token_id]
        if kind not in tok._state_kinds[self.state] or not self._legal(kind, tok._value_list[token_id]):
            return False
        if token_id == EOS_ID:
            self._finish()
        else:
            self._apply(kind, tok._value_list[token_id])
        return True

    def copy(self):
        return copy.deepcopy(self)

    def _open(self):
        self.state = self.OPEN
        return True

    def _finish(self):
        self.state = self.DONE

    def _legal(self, kind, value):  # extra conditions beyond the kind; subclasses refine
        return True

    def _restrict(self, mask):  # the same extra conditions on a whole mask
        pass


def _state_masks(kinds, state_kinds):
    """Per state, the bool (V,) mask of tokens whose kind is allowed there (specials by id)."""
    masks = {}
    for state, allowed in state_kinds.items():
        mask = np.isin(kinds, [k for k in allowed if k != SPECIAL])
        ids = {GrammarState.START: [BOS_ID], GrammarState.DONE: [PAD_ID]}.get(state, [])
        mask[ids] = True
        if SPECIAL in allowed and state != GrammarState.DONE:
            mask[EOS_ID] = True
        masks[state] = mask
    return masks


# --------------------------------------------------------------------------- REMI


class RemiTokenizer(Tokenizer):
    """Huang & Yang (2020) REMI: Bar, TimeSig, Position, Pitch, Velocity, Duration.

    Encoding, per bar: ``Bar``, ``TimeSig_n/d`` (on the first bar and where
    the metre changes), then for each onset ``Position_p`` (p in 0 ..
    bar length - 1, ``positions_per_beat`` per quarter note) followed by
    ``Pitch``, ``Velocity`` (if ``velocity_bins`` > 0) and ``Duration`` (in
    positions, 1 .. ``max_duration_beats * positions_per_beat``) of each note
    there, lowest pitch first.

    Quantization: onsets and ends go to the nearest position (half up); a
    note lasts at least one position and at most the largest Duration.
    Notes of one pitch are re-paired first-in first-out (sorted onsets with
    sorted ends), which is how any MIDI reader pairs them back.

    Metre: a time-signature change takes effect at the first bar line (of the
    old metre) at or after it, as in notation; metres not in
    ``time_signatures`` count as 4/4.  A run of more than ``max_empty_bars``
    empty bars is shortened to that many.  REMI has no tempo: decoded files
    are at 120 bpm.
    """

    kind = "remi"
    _note_kinds = (PITCH, VELOCITY, DURATION)
    _pitch_kinds = (PITCH,)

    def __init__(
        self,
        *,
        positions_per_beat=K.POSITIONS_PER_BEAT,
        velocity_bins=K.VELOCITY_BINS,
        max_duration_beats=K.MAX_DURATION_BEATS,
        max_empty_bars=K.MAX_EMPTY_BARS,
        time_signatures=K.TIME_SIGNATURES,
        pitch_range=K.PITCH_RANGE,
        include_drums=False,
    ):
        self.positions_per_beat = int(positions_per_beat)
        if self.positions_per_beat < 1:
            raise ValueError(f"positions_per_beat must be >= 1, got {positions_per_beat}")
        self._velocity_setup(velocity_bins)
        self._pitch_setup(pitch_range)
        self.max_duration_beats = int(max_duration_beats)
        self.max_empty_bars = int(max_empty_bars)
        if self.max_duration_beats < 1 or self.max_empty_bars < 0:
            raise ValueError("max_duration_beats must be >= 1 and max_empty_bars >= 0")
        self.time_signatures = [tuple(int(x) for x in ts) for ts in time_signatures]
        if not self.time_signatures:
            raise ValueError("time_signatures must name at least one metre")
        self._bar_lengths = np.array([self._bar_length(n, d) for n, d in self.time_signatures], dtype=np.int64)
        self._ts_index = {ts: i for i, ts in enumerate(self.time_signatures)}
        self._default_ts = self._ts_index.get(K.DEFAULT_TIME_SIGNATURE, 0)
        self.include_drums = bool(include_drums)
        super().__init__()
        self.bar_id = self._first[BAR]
        self._state_kinds = _RemiGrammar.STATE_KINDS if self.velocity_bins else _RemiGrammar.STATE_KINDS_NO_VELOCITY
        self._state_masks = _state_masks(self._kinds, self._state_kinds)

    def _bar_length(self, numerator, denominator):
        """Positions in a bar of numerator/denominator; ValueError if not whole."""
        if numerator < 1 or denominator < 1 or (numerator * 4 * self.positions_per_beat) % denominator:
            raise ValueError(f"time signature {numerator}/{denominator} is not a whole number of positions")
        return numerator * 4 * self.positions_per_beat // denominator

    def _config(self):
        return {
            "positions_per_beat": self.positions_per_beat,
            "velocity_bins": self.velocity_bins,
            "max_duration_beats": self.max_duration_beats,
            "max_empty_bars": self.max_empty_bars,
            "time_signatures": [list(ts) for ts in self.time_signatures],
            "pitch_range": list(self.pitch_range),
            "include_drums": self.include_drums,
        }

    @property
    def max_duration(self):
        """The longest Duration, in positions."""
        return self.max_duration_beats * self.positions_per_beat

    def _build_vocab(self):
        low, high = self.pitch_range
        n_positions = int(self._bar_lengths.max())
        pitches = range(low, high + 1)
        return [
            (BAR, [0], [None]),
            (TIMESIG, range(len(self.time_signatures)), [f"{n}/{d}" for n, d in self.time_signatures]),
            (POSITION, range(n_positions), range(n_positions)),
            (PITCH, pitches, pitches),
            (VELOCITY, self._velocities.tolist(), self._velocities.tolist()),
            (DURATION, range(1, self.max_duration + 1), range(1, self.max_duration + 1)),
        ]

    # -- encode
    def _encode_score(self, score):
        notes = self._in_range(score.notes)
        pos, dur, vbin = self._quantize(notes, score.ticks_per_beat)
        order = np.lexsort((vbin, dur, notes["pitch"], pos))  # token order: onset, pitch, length
        notes, pos, dur, vbin = notes[order], pos[order], dur[order], vbin[order]
        bar, in_bar, bar_sig = self._bars(score, pos)
        first = self._first
        n = len(notes)
        rank = np.arange(n)
        new_pos, sig_change = _run_starts(pos), _run_starts(bar_sig)
        parts = [
            ((np.arange(len(bar_sig)), -2, 0, 0), self.bar_id, -1),
            ((np.flatnonzero(sig_change), -1, 0, 0), first[TIMESIG] + bar_sig[sig_change], -1),
            ((bar[new_pos], 2 * in_bar[new_pos], 0, 0), first[POSITION] + in_bar[new_pos], -1),
            ((bar, 2 * in_bar + 1, rank, 0), first[PITCH] + notes["pitch"] - self.pitch_range[0], rank),
            ((bar, 2 * in_bar + 1, rank, 2), first[DURATION] + dur - 1, rank),
        ]
        if self.velocity_bins:
            parts.append(((bar, 2 * in_bar + 1, rank, 1), first[VELOCITY] + vbin, rank))
        ids, note_of_token = _assemble(parts)
        return ids, note_of_token, notes

    def _quantize(self, notes, tpb):
        """Onset position, duration (positions) and velocity bin of each note, FIFO re-paired."""
        ppq = self.positions_per_beat
        pos = (notes["start_tick"] * (2 * ppq) + tpb) // (2 * tpb)  # nearest position, half up
        end = (notes["end_tick"] * (2 * ppq) + tpb) // (2 * tpb)
        end = np.clip(end, pos + 1, pos + self.max_duration)
        vbin = self._velocity_bin_of(notes["velocity"])
        end = _fifo_ends(notes["pitch"], pos, end, vbin)
        return pos, end - pos, vbin

    def _segments(self, score):
        """Metre segments (start position, bar length, TimeSig index, bars before).

        A change takes effect at the first bar line at or after its position;
        two changes before one bar line: the later wins.
        """
        ppq, tpb = self.positions_per_beat, score.ticks_per_beat
        starts, sigs = [0], [self._default_ts]
        for tick, num, den in score.time_signatures[["tick", "numerator", "denominator"]].tolist():
            at = (tick * 2 * ppq + tpb) // (2 * tpb)
            sig = self._ts_index.get((num, den), self._default_ts)
            length = int(self._bar_lengths[sigs[-1]])
            bar_line = starts[-1] + max(0, -((starts[-1] - at) // length)) * length
            if bar_line == starts[-1]:
                sigs[-1] = sig
                if len(sigs) > 1 and sigs[-2] == sig:  # back to the metre before: merge
                    starts.pop(), sigs.pop()
            elif sig != sigs[-1]:
                starts.append(bar_line), sigs.append(sig)
        starts, sigs = np.array(starts), np.array(sigs)
        lengths = self._bar_lengths[sigs]
        bars_before = np.concatenate(([0], np.cumsum(np.diff(starts) // lengths[:-1])))
        return starts, lengths, sigs, bars_before

    def _bars(self, score, pos):
        """Bar index (after shortening empty runs), position in bar, and TimeSig of every emitted bar."""
        starts, lengths, sigs, bars_before = self._segments(score)
        seg = np.searchsorted(starts, pos, side="right") - 1
        rel = pos - starts[seg]
        bar = bars_before[seg] + rel // lengths[seg]
        in_bar = rel % lengths[seg]
        emitted = _emitted_bars(bar, self.max_empty_bars)
        bar_sig = sigs[np.searchsorted(bars_before, emitted, side="right") - 1]
        return np.searchsorted(emitted, bar), in_bar, bar_sig

    def _new_machine(self):
        return _RemiGrammar(self)


def _fifo_ends(pitch, start, end, vbin):
    """Re-pair the ends of each pitch first-in first-out: sorted onsets get sorted ends.

    This is the pairing a MIDI reader makes of the written notes (at equal
    onsets, pretty_midi writes the softer note first).  Each note still ends
    after it starts and lasts no longer than the longest original duration.
    """
    by_start = np.lexsort((vbin, start, pitch))
    by_end = np.lexsort((end, pitch))
    out = np.empty_like(end)
    out[by_start] = end[by_end]
    return out


def _emitted_bars(bar, max_empty):
    """Sorted bar indices to emit: every bar with notes, and at most ``max_empty``
    empty bars before each of them (counted from the previous one)."""
    full = np.unique(bar)
    prev = np.concatenate(([-1], full[:-1]))[: len(full)]
    kept = np.minimum(full - prev - 1, max_empty)
    offsets = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
    empty = np.repeat(prev + 1, kept) + offsets
    return np.union1d(full, empty).astype(np.int64)


class _RemiGrammar(GrammarState):
    """REMI grammar: BOS (Bar [TimeSig] (Position (Pitch [Velocity] Duration)+)*)* EOS.

    Positions strictly increase within a bar and stay below its length.
    """

    BAR_S, SIG, POS, PITCH_S, VEL, DUR = "bar", "timesig", "position", "pitch", "velocity", "duration"
    _AFTER_BOS = {BAR, SPECIAL}
    STATE_KINDS = {
        GrammarState.START: _AFTER_BOS | {SPECIAL},
        GrammarState.OPEN: _AFTER_BOS,
        BAR_S: {TIMESIG, POSITION, BAR, SPECIAL},
        SIG: {POSITION, BAR, SPECIAL},
        POS: {PITCH},
        PITCH_S: {VELOCITY},
        VEL: {DURATION},
        DUR: {PITCH, POSITION, BAR, SPECIAL},
        GrammarState.DONE: set(),
    }
    STATE_KINDS_NO_VELOCITY = {**STATE_KINDS, PITCH_S: {DURATION}}

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.bar_start = 0  # position of the current bar's first beat
        self.bars = 0
        self.bar_length = int(tokenizer._bar_lengths[tokenizer._default_ts])
        self.position = -1  # last Position in this bar
        self.pitch = 0
        self.velocity = K.DEFAULT_VELOCITY
        self.notes = []  # (onset position, duration, pitch, velocity)
        self.signatures = []  # (bar start position, TimeSig index)

    def _legal(self, kind, value):
        if kind == POSITION:
            return self.position < value < self.bar_length
        return True

    def _restrict(self, mask):
        if POSITION in self.tok._state_kinds[self.state]:
            first = self.tok._first[POSITION]
            mask[first : first + self.position + 1] = False
            mask[first + self.bar_length : first + int(self.tok._bar_lengths.max())] = False

    def _apply(self, kind, value):
        if kind == BAR:
            self.bar_start += self.bar_length if self.bars else 0
            self.bars += 1
            self.position, self.pending, self.state = -1, 0, self.BAR_S
        elif kind == TIMESIG:
            self.bar_length = int(self.tok._bar_lengths[value])
            self.signatures.append((self.bar_start, value))
            self.state = self.SIG
        elif kind == POSITION:
            self.position, self.pending, self.state = value, 1, self.POS
        elif kind == PITCH:
            self.pitch, self.state = value, self.PITCH_S
            self.pending += 1
        elif kind == VELOCITY:
            self.velocity, self.state = value, self.VEL
            self.pending += 1
        else:  # DURATION: the note is complete
            self.notes.append((self.bar_start + self.position, value, self.pitch, self.velocity))
            self.pending, self.state = 0, self.DUR

    def to_midi(self):
        tok = self.tok
        scale = K.REMI_TICKS_PER_BEAT // tok.positions_per_beat or 1
        tpb = scale * tok.positions_per_beat
        cols = np.array(self.notes, dtype=np.int64).reshape(-1, 4)  # (N, 4)
        sigs = self.signatures or [(0, tok._default_ts)]
        if sigs[0][0] != 0:
            sigs = [(0, tok._default_ts), *sigs]
        table = np.zeros(len(sigs), dtype=TIME_SIGNATURE_DTYPE)
        table["tick"] = [start * scale for start, _ in sigs]
        table["numerator"], table["denominator"] = np.array([tok.time_signatures[s] for _, s in sigs]).T
        velocity = cols[:, 3] if tok.velocity_bins else np.full(len(cols), K.DEFAULT_VELOCITY)
        return _decoded_midi(cols[:, 0] * scale, (cols[:, 0] + cols[:, 1]) * scale, cols[:, 2], velocity, tpb, table)


# --------------------------------------------------------------------------- performance


class PerformanceTokenizer(Tokenizer):
    """Oore et al. (2018) performance events: NoteOn, NoteOff, TimeShift, Velocity.

    With the defaults: 128 ``NoteOn_p``, 128 ``NoteOff_p``, 100
    ``TimeShift_k`` (k steps of 10 ms, so one token moves up to 1 s) and 32
    ``Velocity_v`` bins: 388 event tokens, plus the 3 specials.

    Times are in seconds (the tempo map is applied), rounded to the nearest
    step (half up, exactly: ``time_step`` counts whole microseconds); a note lasts at least one step; notes of one pitch are re-paired
    first-in first-out, as for REMI.  At one instant, note-offs come before
    note-ons, each in pitch order.  A ``Velocity`` token precedes a
    note-on whenever the velocity bin changes.  The sustain pedal lengthens
    notes (``sustain=True``, the default).

    Long silences are capped: a gap between two consecutive events longer than
    ``max_gap_seconds`` (5 s by default) -- a silence, or a note held while
    nothing else happens -- is shortened to it, so no gap costs more than
    ``ceil(max_gap / 1 s)`` TimeShift tokens.
    """

    kind = "performance"
    _note_kinds = (NOTE_ON, NOTE_OFF, VELOCITY)
    _pitch_kinds = (NOTE_ON, NOTE_OFF)

    def __init__(
        self,
        *,
        time_step=K.TIME_STEP_SECONDS,
        max_shift_steps=K.MAX_SHIFT_STEPS,
        velocity_bins=K.VELOCITY_BINS,
        max_gap_seconds=K.MAX_GAP_SECONDS,
        pitch_range=K.PITCH_RANGE,
        sustain=K.PERFORMANCE_SUSTAIN,
        include_drums=False,
    ):
        self.time_step = float(time_step)
        self.max_shift_steps = int(max_shift_steps)
        self.max_gap_seconds = float(max_gap_seconds)
        if self.time_step <= 0 or self.max_shift_steps < 1 or self.max_gap_seconds < self.time_step:
            raise ValueError("time_step must be > 0, max_shift_steps >= 1 and max_gap_seconds >= time_step")
        self._velocity_setup(velocity_bins)
        self._pitch_setup(pitch_range)
        self.sustain = bool(sustain)
        self.include_drums = bool(include_drums)
        super().__init__()
        self._state_kinds = _PerformanceGrammar.STATE_KINDS
        self._state_masks = _state_masks(self._kinds, self._state_kinds)

    def _config(self):
        return {
            "time_step": self.time_step,
            "max_shift_steps": self.max_shift_steps,
            "velocity_bins": self.velocity_bins,
            "max_gap_seconds": self.max_gap_seconds,
            "pitch_range": list(self.pitch_range),
            "sustain": self.sustain,
            "include_drums": self.include_drums,
        }

    @property
    def max_gap_steps(self):
        return int(round(self.max_gap_seconds / self.time_step))

    def _build_vocab(self):
        pitches = range(self.pitch_range[0], self.pitch_range[1] + 1)
        shifts = range(1, self.max_shift_steps + 1)
        return [
            (NOTE_ON, pitches, pitches),
            (NOTE_OFF, pitches, pitches),
            (TIME_SHIFT, shifts, shifts),
            (VELOCITY, self._velocities.tolist(), self._velocities.tolist()),
        ]

    # -- encode
    def _encode_score(self, score):
        notes = self._in_range(score.notes)
        n = len(notes)
        start = self._steps(score, notes["start_tick"])
        end = np.maximum(self._steps(score, notes["end_tick"]), start + 1)
        vbin = self._velocity_bin_of(notes["velocity"])
        end = _fifo_ends(notes["pitch"], start, end, vbin)
        # events, ons then offs; at one step offs first, then by pitch (ons: softer first)
        time = np.concatenate((start, end))
        is_on = np.arange(2 * n) < n
        pitch = np.tile(notes["pitch"], 2)
        order = np.lexsort((np.where(is_on, np.tile(vbin, 2), 0), pitch, is_on, time))
        time, is_on, pitch, note = time[order], is_on[order], pitch[order], order % max(n, 1)
        note_rank = np.empty(n, np.int64)
        note_rank[note[is_on]] = np.arange(n)  # notes numbered in NoteOn order
        gap = np.minimum(np.diff(time, prepend=0), self.max_gap_steps)
        parts = self._event_parts(gap, is_on, pitch, note_rank[note], vbin[note])
        ids, note_of_token = _assemble(parts)
        return ids, note_of_token, notes[np.argsort(note_rank)]

    def _steps(self, score, ticks):
        """Nearest time step (half up) of each tick, in exact integer arithmetic."""
        per_step = 2 * round(self.time_step * 1e6) * score.ticks_per_beat  # 2 x step in time units
        return (2 * score.tick_to_time_units(ticks) + per_step // 2) // per_step

    def _event_parts(self, gap, is_on, pitch, note, vbin):
        """Tokens of each event e (keys: event e, slot): TimeShifts, Velocity, NoteOn/Off."""
        first, low = self._first, self.pitch_range[0]
        event = np.arange(len(gap))
        full, rest = np.divmod(gap, self.max_shift_steps)
        parts = [
            ((np.repeat(event, full), 0), first[TIME_SHIFT] + self.max_shift_steps - 1, -1),
            ((event[rest > 0], 1), first[TIME_SHIFT] + rest[rest > 0] - 1, -1),
            ((event, 3), np.where(is_on, first[NOTE_ON], first[NOTE_OFF]) + pitch - low, note),
        ]
        if self.velocity_bins:
            on_bins = vbin[is_on]
            change = _run_starts(on_bins)
            ons = event[is_on][change]
            parts.append(((ons, 2), first[VELOCITY] + on_bins[change], note[ons]))
        return parts

    def _new_machine(self):
        return _PerformanceGrammar(self)


class _PerformanceGrammar(GrammarState):
    """Performance grammar: any event after BOS, except a NoteOff of a pitch not sounding.

    Notes of one pitch end first-in first-out; a note still sounding at the
    end (or at EOS) ends there, and lasts at least one step.
    """

    BODY = GrammarState.OPEN
    STATE_KINDS = {
        GrammarState.START: {NOTE_ON, NOTE_OFF, TIME_SHIFT, VELOCITY, SPECIAL},
        BODY: {NOTE_ON, NOTE_OFF, TIME_SHIFT, VELOCITY, SPECIAL},
        GrammarState.DONE: set(),
    }

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.time = 0  # steps
        self.velocity = K.DEFAULT_VELOCITY
        self.sounding = {}  # pitch -> list of (onset step, velocity), oldest first
        self.open_count = np.zeros(128, dtype=np.int64)
        self.notes = []  # (onset step, end step, pitch, velocity)

    def _legal(self, kind, value):
        return kind != NOTE_OFF or self.open_count[value] > 0

    def _restrict(self, mask):
        if self.state != self.DONE:
            low, high = self.tok.pitch_range
            first = self.tok._first[NOTE_OFF]
            mask[first : first + high - low + 1] = self.open_count[low : high + 1] > 0

    def _apply(self, kind, value):
        self.state = self.BODY
        if kind == NOTE_ON:
            self.sounding.setdefault(value, []).append((self.time, self.velocity))
            self.open_count[value] += 1
        elif kind == NOTE_OFF:
            onset, velocity = self.sounding[value].pop(0)
            self.open_count[value] -= 1
            self.notes.append((onset, max(self.time, onset + 1), value, velocity))
        elif kind == TIME_SHIFT:
            self.time += value
        else:  # VELOCITY
            self.velocity = value

    def _close_all(self):
        for pitch, held in self.sounding.items():
            self.notes += [(onset, max(self.time, onset + 1), pitch, v) for onset, v in held]
        self.sounding = {}
        self.open_count[:] = 0

    def to_midi(self):
        tok = self.tok
        machine = self.copy() if self.sounding else self
        machine._close_all()
        cols = np.array(machine.notes, dtype=np.int64).reshape(-1, 4)  # (N, 4)
        tpb = K.PERFORMANCE_TICKS_PER_BEAT
        ticks_per_step = tok.time_step / (60.0 / K.DECODE_TEMPO_BPM / tpb)
        ticks = np.round(cols[:, :2] * ticks_per_step).astype(np.int64)
        velocity = cols[:, 3] if tok.velocity_bins else np.full(len(cols), K.DEFAULT_VELOCITY)
        return _decoded_midi(ticks[:, 0], ticks[:, 1], cols[:, 2], velocity, tpb)


_TOKENIZERS = {"remi": RemiTokenizer, "performance": PerformanceTokenizer}
