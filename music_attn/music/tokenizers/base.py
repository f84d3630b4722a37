"""Tokenizers: MIDI notes <-> integer ids, with the note each token belongs to.

Two tokenizers share one interface (:class:`Tokenizer`):

* :class:`RemiTokenizer` -- Huang & Yang (2020) beat-based events:
  ``Bar``, ``TimeSig_3/4`` (first bar and where the metre changes),
  ``Position_p``, then per note ``Pitch_60``, ``Velocity_80`` (optional),
  ``Duration_d`` (in positions).  Options: ``tempo=True`` adds ``Tempo_96``
  tokens (integer beats per minute) after the Bar (or Position) where the
  tempo changes; ``programs=True`` adds a ``Program_40`` token before each
  note's Pitch (the REMI+ convention; ``Program_-1`` is the drum kit).
* :class:`PerformanceTokenizer` -- Oore et al. (2018) / Music Transformer
  events: ``NoteOn_60``, ``NoteOff_60``, ``TimeShift_k`` (k steps of 10 ms),
  ``Velocity_v``; with the same two options (a Tempo token where the tempo
  changes, a Program token before each NoteOn and NoteOff).

Tokens are readable ``Type_Value`` strings; the specials ``PAD`` (= 0),
``BOS`` and ``EOS`` come first.  ``encode`` is vectorised with numpy (no
Python object per note); ``decode`` and :meth:`Tokenizer.grammar` run the same
state machine, so a sequence sampled under the grammar decodes with zero
skipped tokens.  ``decode`` returns the project's :class:`~music_attn.music.midi.Score`.

The tokenizer owns what tokens mean: :meth:`Tokenizer.pitch_of` (which tokens
carry a pitch, and which), :meth:`Tokenizer.is_structure` and
:meth:`Tokenizer.allowed_next` (what the grammar allows after some tokens).
Tokenizer types are registered in :data:`TOKENIZER_TYPES` (``type`` -> class),
which :meth:`Tokenizer.from_dict` dispatches on.

Shape legend: L tokens, N notes, V vocabulary size.
"""

import copy
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from music_attn.music import constants as K
from music_attn._io import atomic_write
from music_attn.errors import TokenizerError
from music_attn.music.arrays import run_starts
from music_attn.music.midi import NOTE_DTYPE, Score, read_midi
from music_attn.music.settings import check_bool, check_float, check_int, check_int_pair, check_metres, check_pitch_range

__all__ = [
    "Tokenizer",
    "RemiTokenizer",
    "PerformanceTokenizer",
    "TokenSequence",
    "DecodeResult",
    "GrammarState",
    "TOKENIZER_TYPES",
    "load_tokenizer",
    "velocity_values",
    "tempo_values",
]

# Token kinds (the part before "_").
SPECIAL, BAR, TIMESIG, POSITION, PITCH, VELOCITY, DURATION, NOTE_ON, NOTE_OFF, TIME_SHIFT, TEMPO, PROGRAM = range(12)
_KIND_NAMES = ("", "Bar", "TimeSig", "Position", "Pitch", "Velocity", "Duration", "NoteOn", "NoteOff", "TimeShift",
               "Tempo", "Program")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
DRUM_PROGRAM = -1  # the value of the Program token of drum notes (MidiTok's convention)
_MAX_NESTING = 20  # a tokenizer config is flat; anything deeper is not one


class TokenSequence:
    """An encoded file: ids and, for every token, the note it belongs to.

    Attributes
    ----------
    ids : int32 (L,)
    note_of_token : int32 (L,)
        Index into ``notes`` of the note a token belongs to, -1 for none
        (BOS, EOS, Bar, TimeSig, Position, TimeShift, Tempo).
    notes : NOTE_DTYPE (N,)
        The notes as read (real times), in the order the tokens name them.
    name : str or None
        The file name, when encoded from a file.
    score : Score or None
        The file as read (track names, texts, tempo map ...), when encoded
        from a file: no need to read it again.
    """

    def __init__(self, ids, note_of_token, notes, vocab, name=None, score=None):
        self.ids = np.asarray(ids, dtype=np.int32)
        self.note_of_token = np.asarray(note_of_token, dtype=np.int32)
        self.notes = notes
        self.name = name
        self.score = score
        self._vocab = vocab

    @property
    def tokens(self):
        """The token strings, list of length L."""
        vocab = self._vocab
        return [vocab[i] for i in self.ids.tolist()]

    @property
    def dropped_drums(self):
        """Drum notes of the file left out (the tokenizer's ``include_drums`` is off)."""
        return self.score.dropped_drums if self.score is not None else 0

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

    score: Score  # the notes, tempo map, metres, programs and track names; ``.write(path)``
    skipped: int  # tokens that could not be used (illegal where they stood)
    assumed: tuple = ()  # what the tokens did not say and decode had to assume ("tempo 120 bpm", ...)


def velocity_values(n_bins, scale=K.VELOCITY_SCALE):
    """The velocity each of ``n_bins`` bins stands for, int (n_bins,), increasing.

    ``"steps128"``: 128 (i + 1) // n, the loudest 127 -- with 32 bins the
    multiples of 4, so 80 stays 80; 127 bins keep every velocity.
    ``"round127"`` (configs saved before the scale was a setting):
    round(127 (i + 1) / n) -- with 32 bins 79 and 83, so 80 becomes 79.
    """
    i = np.arange(1, n_bins + 1, dtype=np.int64)
    if scale == "round127":
        return np.round(i * 127 / max(n_bins, 1)).astype(np.int64)
    return np.minimum((128 * i) // max(n_bins, 1), 127)


def tempo_values(tempo_range):
    """The tempo, in whole beats per minute, of each Tempo token: low .. high, int."""
    low, high = tempo_range
    return np.arange(low, high + 1, dtype=np.int64)


def _nearest(values, x):
    """Index of the nearest of the sorted ``values`` to each ``x`` (ties go to the lower one)."""
    midpoints = (values[1:] + values[:-1]) / 2
    return np.searchsorted(midpoints, x, side="left")


def _bpm_to_us(bpm):
    return np.round(60e6 / np.asarray(bpm, dtype=np.float64)).astype(np.int64)


# --------------------------------------------------------------------------- base


class Tokenizer:
    """Base class: vocabulary, ids <-> strings, config I/O, decode, transpose.

    Subclasses set ``kind`` and implement ``_build_vocab``, ``_encode_score``,
    ``_new_machine`` and ``_config``, and register in :data:`TOKENIZER_TYPES`.
    """

    kind = None
    sustain = False
    tempo = programs = False
    _pitch_kinds = ()

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
        self._pitch_table = np.where(np.isin(self._kinds, self._pitch_kinds), self._values, -1)  # (V,)

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
        except (KeyError, TypeError):
            raise TokenizerError(f"unknown token {token!r} for the {self.kind} tokenizer") from None

    def id_to_token(self, token_id):
        """Token string of an id; TokenizerError if out of range."""
        if not 0 <= int(token_id) < len(self.vocab):
            raise TokenizerError(f"token id {token_id} outside the vocabulary (0..{len(self.vocab) - 1})")
        return self.vocab[int(token_id)]

    def ids_from_tokens(self, tokens):
        """Token strings -> int32 ids; TokenizerError names the first unknown token."""
        return np.array([self.token_to_id(t) for t in tokens], dtype=np.int32).reshape(-1)

    # -- what tokens mean
    def pitch_of(self, ids=None):
        """MIDI pitch each token carries, -1 for tokens that carry none.

        ``ids`` : int array (L,), or None for the whole vocabulary (V,).
        Returns int64 of the same shape.  Pitch tokens are REMI's ``Pitch``
        and the performance ``NoteOn``/``NoteOff``.
        """
        if ids is None:
            return self._pitch_table.copy()
        ids = np.asarray(ids, dtype=np.int64)
        _check_ids(ids, len(self.vocab))
        return self._pitch_table[ids]

    def is_structure(self, ids):
        """True for Bar, TimeSig, Position, TimeShift, Tempo and the specials (not part of a note).

        ``ids`` : one id (returns a bool) or an int array (returns a bool array).
        """
        if np.ndim(ids) == 0:
            return bool(self._structure[int(ids)])
        ids = np.asarray(ids, dtype=np.int64)
        _check_ids(ids, len(self.vocab))
        return self._structure[ids]

    def allowed_next(self, ids=()):
        """bool (V,): the tokens the grammar allows after ``ids`` (a leading BOS is optional).

        TokenizerError if ``ids`` themselves break the grammar.
        """
        state = self.grammar()
        for token_id in _id_list(ids):
            state.advance(token_id)
        return state.allowed()

    # -- encode / decode
    def encode(self, source):
        """Encode a MIDI file (path, mido.MidiFile, PrettyMIDI or Score) -> TokenSequence.

        The ids start with BOS and end with EOS; a file with no notes gives
        ``[BOS, EOS]``.  Unreadable files raise MidiError.  The sequence
        keeps the Score it read (``.score``).
        """
        score = read_midi(source, include_drums=self.include_drums, sustain=self.sustain)
        ids, note_of_token, notes = self._encode_score(score)
        return TokenSequence(ids, note_of_token, notes, self.vocab, score.name, score)

    def decode(self, ids, *, bpm=None):
        """Decode any id sequence -> DecodeResult(score, skipped, assumed).

        A token that is illegal where it stands (by :meth:`grammar`) is skipped
        and counted; so are an unfinished note at the end, and every non-PAD
        token after EOS.  PAD is ignored.  A leading BOS is optional.

        The tempo comes from the Tempo tokens; without them it is ``bpm``
        (default 120), and ``assumed`` says so, as it says when the notes'
        instruments were not in the tokens (all piano).
        """
        bpm = K.DECODE_TEMPO_BPM if bpm is None else check_float("bpm", bpm, 1.0, 1000.0)
        machine = self._new_machine()
        skipped = 0
        for token_id in _id_list(ids):
            if machine.done:
                skipped += token_id != PAD_ID
            elif not machine.step(token_id):
                skipped += 1
        score, assumed = machine.to_score(bpm)
        return DecodeResult(score, skipped + machine.pending, tuple(assumed))

    def grammar(self):
        """A fresh GrammarState: ``.allowed()`` (V,) bool, ``.advance(id)``, ``.done``."""
        return self._new_machine()

    def transpose(self, ids, semitones):
        """Shift every pitch token by ``semitones``; other tokens are unchanged.

        Raises TokenizerError if a pitch would leave the tokenizer's range.
        """
        ids = np.array(ids, dtype=np.int32)
        _check_ids(ids, len(self.vocab))
        is_pitch = self._pitch_table[ids] >= 0
        pitch = self._pitch_table[ids[is_pitch]] + int(semitones)
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
        """Build the tokenizer a ``to_dict`` describes (dispatching on ``d["type"]`` in TOKENIZER_TYPES).

        Every setting is checked (type, finite, range) before anything is
        built; missing settings take their defaults (so configs saved before
        an option existed load with it off).  TokenizerError otherwise.
        """
        if not isinstance(d, dict) or not isinstance(d.get("type"), str) or d["type"] not in TOKENIZER_TYPES:
            kind = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise TokenizerError(f"not a tokenizer config (type {kind!r}; expected one of {sorted(TOKENIZER_TYPES)})")
        _check_nesting(d)
        cls = TOKENIZER_TYPES[d["type"]]
        params = cls.upgrade_config({k: v for k, v in d.items() if k not in ("type", "vocab")})
        try:
            tokenizer = cls(**params)
        except TokenizerError as exc:
            raise TokenizerError(f"bad {d['type']} tokenizer config: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise TokenizerError(f"bad {d['type']} tokenizer config: {exc}") from None
        if "vocab" in d and (not isinstance(d["vocab"], list) or d["vocab"] != tokenizer.vocab):
            raise TokenizerError("the saved vocabulary does not match the one this config builds")
        return tokenizer

    def with_options(self, **changes):
        """A tokenizer like this one with some settings changed (``include_drums=True`` ...), checked."""
        return Tokenizer.from_dict({**self.to_dict(), **changes})

    @classmethod
    def upgrade_config(cls, params):
        """Settings of a config saved by an older version, as they were meant then.

        A config that names its velocity bins but not their scale predates
        the scale setting: its bins were ``"round127"``.
        """
        if "velocity_bins" in params and "velocity_scale" not in params:
            return {**params, "velocity_scale": "round127"}
        return params

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

    # -- settings shared by both tokenizers
    def _common_setup(self, velocity_bins, velocity_scale, pitch_range, include_drums, tempo, programs, tempo_range):
        self.velocity_bins = check_int("velocity_bins", velocity_bins, 0, 127)
        if velocity_scale not in K.VELOCITY_SCALES:
            raise TokenizerError(f"velocity_scale must be one of {', '.join(K.VELOCITY_SCALES)}, got {velocity_scale!r}")
        self.velocity_scale = velocity_scale if self.velocity_bins else K.VELOCITY_SCALE  # moot without bins
        self._velocities = velocity_values(self.velocity_bins, self.velocity_scale)
        self.pitch_range = check_pitch_range(pitch_range)
        self.include_drums = check_bool("include_drums", include_drums)
        self.tempo = check_bool("tempo", tempo)
        self.programs = check_bool("programs", programs)
        self.tempo_range = check_int_pair("tempo_range", tempo_range, 1, 1000)
        self._tempos = tempo_values(self.tempo_range)

    def _common_config(self):
        return {
            "velocity_bins": self.velocity_bins,
            "velocity_scale": self.velocity_scale,
            "pitch_range": list(self.pitch_range),
            "include_drums": self.include_drums,
            "tempo": self.tempo,
            "programs": self.programs,
            "tempo_range": list(self.tempo_range),
        }

    def _option_vocab(self):
        """Vocabulary rows of the Tempo and Program options."""
        rows = []
        if self.tempo:
            rows.append((TEMPO, self._tempos.tolist(), self._tempos.tolist()))
        if self.programs:
            values = list(range(DRUM_PROGRAM, 128))
            rows.append((PROGRAM, values, values))
        return rows

    def _velocity_bin_of(self, velocity):
        if not self.velocity_bins:
            return np.zeros(len(velocity), dtype=np.int64)
        return _nearest(self._velocities, velocity)

    def _program_of(self, notes):
        """Program token value of each note: its program, -1 for drums (channel 10)."""
        return np.where(notes["channel"] == K.DRUM_CHANNEL, DRUM_PROGRAM, notes["program"]).astype(np.int64)

    def _tempo_bins(self, score):
        """(tick, tempo bin) of the tempo map, consecutive repeats of a bin removed."""
        bins = _nearest(self._tempos.astype(np.float64), 60e6 / score.tempos["tempo"])
        keep = run_starts(bins)
        return score.tempos["tick"][keep], bins[keep]

    def _in_range(self, notes):
        """The notes this tokenizer can name: in its pitch range, drums only with ``include_drums``."""
        low, high = self.pitch_range
        keep = (notes["pitch"] >= low) & (notes["pitch"] <= high)
        if not self.include_drums:
            keep &= notes["channel"] != K.DRUM_CHANNEL  # a Score read with drums
        return notes[keep]


TOKENIZER_TYPES = {}
"""``type`` of a tokenizer config -> its class; add an entry to register a new tokenizer."""


def load_tokenizer(path):
    """Read a tokenizer saved with :meth:`Tokenizer.save`; TokenizerError if unusable."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not a tokenizer JSON file ({exc})") from None
    except RecursionError:
        raise TokenizerError(f"{path}: JSON nested too deeply to be a tokenizer file") from None
    try:
        return Tokenizer.from_dict(d)
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}") from None


def _check_nesting(value, depth=0):
    """TokenizerError if ``value`` nests lists/dicts deeper than a tokenizer config can."""
    if depth > _MAX_NESTING:
        raise TokenizerError(f"config nested more than {_MAX_NESTING} levels deep")
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        stack = [(v, depth + 1) for v in value if isinstance(v, (list, dict))]
        while stack:
            item, level = stack.pop()
            if level > _MAX_NESTING:
                raise TokenizerError(f"config nested more than {_MAX_NESTING} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((v, level + 1) for v in children if isinstance(v, (list, dict)))


def _id_list(ids):
    """Any id sequence -> list of Python ints (non-integers raise TokenizerError)."""
    try:
        arr = np.asarray(ids)
        if arr.dtype == object:
            arr = np.asarray(ids, dtype=np.int64)
    except (OverflowError, TypeError, ValueError) as exc:
        raise TokenizerError(f"token ids must be integers ({exc})") from None
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


def _decoded_score(cols, ticks_per_beat, tempos, signatures=(), with_programs=False):
    """Decoded notes -> Score: one track per program (a named GM instrument when known).

    cols : int64 (N, 5) start tick, end tick, pitch, velocity, program (-1 drums).
    tempos : rows (tick, microseconds per beat); signatures : rows (tick, num, den).
    """
    programs = np.unique(cols[:, 4]) if with_programs else np.zeros(1, np.int64)
    track = np.searchsorted(programs, cols[:, 4]) if with_programs else np.zeros(len(cols), np.int64)
    channels = _channels(programs)
    notes = np.zeros(len(cols), dtype=NOTE_DTYPE)
    notes["start_tick"], notes["end_tick"], notes["pitch"], notes["velocity"] = cols[:, :4].T
    notes["program"], notes["track"], notes["channel"] = np.maximum(cols[:, 4], 0), track, channels[track]
    names = [_instrument_name(p) for p in programs.tolist()] if with_programs else [""]
    rows = [(0, c, max(p, 0), k) for k, (c, p) in enumerate(zip(channels.tolist(), programs.tolist()))]
    return Score.from_ticks(notes, ticks_per_beat, tempos=tempos, time_signatures=signatures,
                            track_names=names, programs=rows if with_programs else ())


def _channels(programs):
    """A MIDI channel per program: drums on channel 10, the others in turn on the 15 others.

    MIDI has 16 channels: beyond 15 instruments, two share a channel (and the
    later program change wins when the file is read back).
    """
    melodic = [c for c in range(16) if c != K.DRUM_CHANNEL]
    out, k = [], 0
    for p in programs.tolist():
        out.append(K.DRUM_CHANNEL if p == DRUM_PROGRAM else melodic[k % 15])
        k += p != DRUM_PROGRAM
    return np.array(out, dtype=np.int64)


def _instrument_name(program):
    if program == DRUM_PROGRAM:
        return "Drums"
    import pretty_midi

    return pretty_midi.program_to_instrument_name(int(program))


def _assumptions(tok, bpm, has_tempo):
    """What decode had to assume: the tempo without Tempo tokens, piano without Program tokens."""
    out = []
    if not has_tempo:
        out.append(f"tempo {bpm:g} bpm" + ("" if tok.tempo else " (the tokens carry no tempo)"))
    if not tok.programs:
        out.append("every note on piano (the tokens carry no instruments)")
    if not tok.velocity_bins:
        out.append(f"velocity {K.DEFAULT_VELOCITY}")
    return out


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
    """Huang & Yang (2020) REMI: Bar, TimeSig, Position, Pitch, Velocity, Duration (+ Tempo, Program).

    Encoding, per bar: ``Bar``, ``TimeSig_n/d`` (on the first bar and where
    the metre changes), then for each onset ``Position_p`` (p in 0 ..
    bar length - 1, ``positions_per_beat`` per quarter note) followed by
    ``Pitch``, ``Velocity`` (if ``velocity_bins`` > 0) and ``Duration`` (in
    positions, 1 .. ``max_duration_beats * positions_per_beat``) of each note
    there, lowest pitch first.

    Options (off by default): ``programs=True`` puts ``Program_p`` before
    each Pitch (notes at one position ordered by program, then pitch);
    ``tempo=True`` writes ``Tempo_b`` (whole bpm in ``tempo_range``) on the
    first bar and where the tempo (rounded to a whole bpm) changes: after the
    Bar (and TimeSig) when the change falls on the bar line, else after the
    Position of the change (a Position may then have no notes).

    Quantization: onsets and ends go to the nearest position (half up); a
    note lasts at least one position and at most the largest Duration.
    Notes of one pitch (and program) are re-paired first-in first-out
    (sorted onsets with sorted ends), which is how any MIDI reader pairs them back.

    Metre: a time-signature change takes effect at the first bar line (of the
    old metre) at or after it, as in notation; metres not in
    ``time_signatures`` count as 4/4.  A run of more than ``max_empty_bars``
    empty bars is shortened to that many.  Without Tempo tokens decoded files
    are at 120 bpm (or ``decode(bpm=...)``).
    """

    kind = "remi"
    _note_kinds = (PITCH, VELOCITY, DURATION, PROGRAM)
    _pitch_kinds = (PITCH,)

    def __init__(
        self,
        *,
        positions_per_beat=K.POSITIONS_PER_BEAT,
        velocity_bins=K.VELOCITY_BINS,
        velocity_scale=K.VELOCITY_SCALE,
        max_duration_beats=K.MAX_DURATION_BEATS,
        max_empty_bars=K.MAX_EMPTY_BARS,
        time_signatures=K.TIME_SIGNATURES,
        pitch_range=K.PITCH_RANGE,
        include_drums=False,
        tempo=False,
        programs=False,
        tempo_range=K.TEMPO_RANGE_BPM,
    ):
        self.positions_per_beat = check_int("positions_per_beat", positions_per_beat, 1, K.MAX_POSITIONS_PER_BEAT)
        self.max_duration_beats = check_int("max_duration_beats", max_duration_beats, 1, K.MAX_DURATION_BEATS_LIMIT)
        self.max_empty_bars = check_int("max_empty_bars", max_empty_bars, 0, K.MAX_EMPTY_BARS_LIMIT)
        self._common_setup(velocity_bins, velocity_scale, pitch_range, include_drums, tempo, programs, tempo_range)
        self.time_signatures = check_metres(time_signatures)
        self._bar_lengths = np.array([self._bar_length(n, d) for n, d in self.time_signatures], dtype=np.int64)
        self._ts_index = {ts: i for i, ts in enumerate(self.time_signatures)}
        self._default_ts = self._ts_index.get(K.DEFAULT_TIME_SIGNATURE, 0)
        super().__init__()
        self.bar_id = self._first[BAR]
        self._state_kinds = _RemiGrammar.state_kinds(self.velocity_bins, self.programs)
        self._state_masks = _state_masks(self._kinds, self._state_kinds)

    def _bar_length(self, numerator, denominator):
        """Positions in a bar of numerator/denominator; TokenizerError if not whole."""
        if (numerator * 4 * self.positions_per_beat) % denominator:
            raise TokenizerError(f"time signature {numerator}/{denominator} is not a whole number of positions")
        return numerator * 4 * self.positions_per_beat // denominator

    def _config(self):
        return {
            "positions_per_beat": self.positions_per_beat,
            "max_duration_beats": self.max_duration_beats,
            "max_empty_bars": self.max_empty_bars,
            "time_signatures": [list(ts) for ts in self.time_signatures],
            **self._common_config(),
        }

    @property
    def max_duration(self):
        """The longest Duration, in positions."""
        return self.max_duration_beats * self.positions_per_beat

    @property
    def ticks_per_position(self):
        """Ticks of one position in a decoded file."""
        return K.REMI_TICKS_PER_BEAT // self.positions_per_beat or 1

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
            *self._option_vocab(),
        ]

    # -- encode
    def _encode_score(self, score):
        notes = self._in_range(score.notes)
        program = self._program_of(notes) if self.programs else np.zeros(len(notes), np.int64)
        pos, dur, vbin = self._quantize(notes, score.ticks_per_beat, program)
        order = np.lexsort((vbin, dur, notes["pitch"], program, pos))  # onset, program, pitch, length
        notes, program, pos, dur, vbin = notes[order], program[order], pos[order], dur[order], vbin[order]
        bar, in_bar, bar_sig, locate = self._bars(score, pos)
        first, rank = self._first, np.arange(len(notes))
        sig_change = run_starts(bar_sig)
        tempo_at, tempo_bin = self._tempo_events(score, pos, locate)
        at = np.concatenate([np.stack([bar, in_bar])[:, run_starts(pos)], tempo_at[:, tempo_at[1] > 0]], axis=1)
        at = np.unique(at, axis=1)  # (2, P): every Position, with notes or a tempo change
        parts = [
            ((np.arange(len(bar_sig)), -2, 0, 0), self.bar_id, -1),
            ((np.flatnonzero(sig_change), -1, 0, 0), first[TIMESIG] + bar_sig[sig_change], -1),
            ((at[0], 2 * at[1], 0, 0), first[POSITION] + at[1], -1),
            ((bar, 2 * in_bar + 1, rank, 1), first[PITCH] + notes["pitch"] - self.pitch_range[0], rank),
            ((bar, 2 * in_bar + 1, rank, 3), first[DURATION] + dur - 1, rank),
        ]
        if self.velocity_bins:
            parts.append(((bar, 2 * in_bar + 1, rank, 2), first[VELOCITY] + vbin, rank))
        if self.programs:
            parts.append(((bar, 2 * in_bar + 1, rank, 0), first[PROGRAM] + program - DRUM_PROGRAM, rank))
        if self.tempo and len(notes):  # on the bar line: in the bar's header, else after the Position
            slot = np.where(tempo_at[1] > 0, 2 * tempo_at[1], -1)
            parts.append(((tempo_at[0], slot, 1, 0), first[TEMPO] + tempo_bin, -1))
        ids, note_of_token = _assemble(parts)
        return ids, note_of_token, notes

    def _quantize(self, notes, tpb, program):
        """Onset position, duration (positions) and velocity bin of each note, FIFO re-paired."""
        pos = self._position(notes["start_tick"], tpb)
        end = self._position(notes["end_tick"], tpb)
        end = np.clip(end, pos + 1, pos + self.max_duration)
        vbin = self._velocity_bin_of(notes["velocity"])
        end = _fifo_ends(notes["pitch"] + 128 * (program - DRUM_PROGRAM), pos, end, vbin)
        return pos, end - pos, vbin

    def _position(self, ticks, tpb):
        """Nearest position (half up) of each tick."""
        ppq = self.positions_per_beat
        return (np.asarray(ticks, dtype=np.int64) * (2 * ppq) + tpb) // (2 * tpb)

    def _tempo_events(self, score, note_pos, locate):
        """(bar, in-bar position) (2, E) and tempo bin (E,) of the Tempo tokens.

        The tempo at the first note's bar, then every change up to the last
        onset; a change in a bar that is not written moves to the next
        written bar line; at one place the last change wins.
        """
        if not self.tempo or not len(note_pos):
            return np.zeros((2, 0), np.int64), np.zeros(0, np.int64)
        ticks, bins = self._tempo_bins(score)
        pos = self._position(ticks, score.ticks_per_beat)
        keep = pos <= note_pos.max()
        at = np.stack(locate(pos[keep]))  # (2, E)
        place = at[0] * (int(self._bar_lengths.max()) + 1) + at[1]
        last = run_starts(place[::-1])[::-1]
        at, bins = at[:, last], bins[keep][last]  # the last change at each place
        change = run_starts(bins)
        return at[:, change], bins[change]

    def _segments(self, score):
        """Metre segments (start position, bar length, TimeSig index, bars before).

        A change takes effect at the first bar line at or after its position;
        two changes before one bar line: the later wins.
        """
        starts, sigs = [0], [self._default_ts]
        for tick, num, den in score.time_signatures[["tick", "numerator", "denominator"]].tolist():
            at = int(self._position(tick, score.ticks_per_beat))
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
        """Written bar index (after shortening empty runs), position in bar, TimeSig of every written bar.

        Also returns ``locate(positions) -> (bar, in_bar)`` for other events:
        one in a bar that is not written goes to the next written bar line.
        """
        starts, lengths, sigs, bars_before = self._segments(score)

        def coords(p):
            seg = np.searchsorted(starts, p, side="right") - 1
            rel = p - starts[seg]
            return bars_before[seg] + rel // lengths[seg], rel % lengths[seg]

        bar, in_bar = coords(pos)
        emitted = _emitted_bars(bar, self.max_empty_bars)
        bar_sig = sigs[np.searchsorted(bars_before, emitted, side="right") - 1]

        def locate(p):
            raw, where = coords(p)
            k = np.searchsorted(emitted, raw)
            return k, np.where(emitted[np.minimum(k, len(emitted) - 1)] == raw, where, 0)

        return np.searchsorted(emitted, bar), in_bar, bar_sig, locate

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
    """REMI grammar: BOS (Bar [TimeSig] [Tempo] (Position [Tempo] ([Program] Pitch [Velocity] Duration)*)*)* EOS.

    Positions strictly increase within a bar and stay below its length.
    Without the Tempo option a Position is followed by at least one note;
    with Program tokens every note starts with one.
    """

    BAR_S, SIG, BAR_TEMPO, POS, POS_TEMPO, PROG, PITCH_S, VEL, DUR = (
        "bar", "timesig", "bar_tempo", "position", "position_tempo", "program", "pitch", "velocity", "duration")

    @classmethod
    def state_kinds(cls, velocity, programs):
        """Token kinds allowed in each state, for these options (Tempo tokens exist or not in the vocab)."""
        note = PROGRAM if programs else PITCH
        after = {POSITION, BAR, SPECIAL}
        return {
            GrammarState.START: {BAR, SPECIAL},
            GrammarState.OPEN: {BAR, SPECIAL},
            cls.BAR_S: {TIMESIG, TEMPO} | after,
            cls.SIG: {TEMPO} | after,
            cls.BAR_TEMPO: after,
            cls.POS: {note, TEMPO},
            cls.POS_TEMPO: {note} | after,
            cls.PROG: {PITCH},
            cls.PITCH_S: {VELOCITY} if velocity else {DURATION},
            cls.VEL: {DURATION},
            cls.DUR: {note} | after,
            GrammarState.DONE: set(),
        }

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.bar_start = 0  # position of the current bar's first beat
        self.bars = 0
        self.bar_length = int(tokenizer._bar_lengths[tokenizer._default_ts])
        self.position = -1  # last Position in this bar
        self.pitch = 0
        self.program = 0
        self.velocity = K.DEFAULT_VELOCITY
        self.notes = []  # (onset position, duration, pitch, velocity, program)
        self.signatures = []  # (bar start position, TimeSig index)
        self.tempos = []  # (position, bpm)

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
        elif kind == TEMPO:
            at_bar = self.state in (self.BAR_S, self.SIG)
            self.tempos.append((self.bar_start + (0 if at_bar else self.position), value))
            self.pending, self.state = 0, self.BAR_TEMPO if at_bar else self.POS_TEMPO
        elif kind == POSITION:
            self.position, self.pending, self.state = value, 1, self.POS
        else:
            self._apply_note(kind, value)

    def _apply_note(self, kind, value):
        if kind == PROGRAM:
            self.program, self.state = value, self.PROG
            self.pending += 1
        elif kind == PITCH:
            self.pitch, self.state = value, self.PITCH_S
            self.pending += 1
        elif kind == VELOCITY:
            self.velocity, self.state = value, self.VEL
            self.pending += 1
        else:  # DURATION: the note is complete
            self.notes.append((self.bar_start + self.position, value, self.pitch, self.velocity, self.program))
            self.pending, self.state = 0, self.DUR

    def to_score(self, bpm):
        """(Score, assumptions) of the notes decoded so far; ``bpm`` when no Tempo token came."""
        tok = self.tok
        scale = tok.ticks_per_position
        cols = np.array(self.notes, dtype=np.int64).reshape(-1, 5)  # (N, 5)
        cols = np.stack([cols[:, 0], cols[:, 0] + cols[:, 1], cols[:, 2], cols[:, 3], cols[:, 4]], axis=1)
        cols[:, :2] *= scale
        if not tok.velocity_bins:
            cols[:, 3] = K.DEFAULT_VELOCITY
        sigs = [(0, tok._default_ts)] + self.signatures
        signatures = [(start * scale, *tok.time_signatures[s]) for start, s in sigs]
        tempos = [(0, int(_bpm_to_us(bpm)))] + [(at * scale, int(_bpm_to_us(b))) for at, b in self.tempos]
        score = _decoded_score(cols, scale * tok.positions_per_beat, tempos, signatures, tok.programs)
        return score, _assumptions(tok, bpm, bool(self.tempos and self.tempos[0][0] == 0))


# --------------------------------------------------------------------------- performance


class PerformanceTokenizer(Tokenizer):
    """Oore et al. (2018) performance events: NoteOn, NoteOff, TimeShift, Velocity (+ Tempo, Program).

    With the defaults: 128 ``NoteOn_p``, 128 ``NoteOff_p``, 100
    ``TimeShift_k`` (k steps of 10 ms, so one token moves up to 1 s) and 32
    ``Velocity_v`` bins: 388 event tokens, plus the 3 specials.

    Times are in seconds (the tempo map is applied), rounded to the nearest
    step (half up, exactly: ``time_step`` counts whole microseconds); a note
    lasts at least one step; notes of one pitch (and program) are re-paired
    first-in first-out, as for REMI.  At one instant, a Tempo change comes
    first, then note-offs, then note-ons, each by program and pitch.  A
    ``Velocity`` token precedes a note-on whenever the velocity bin changes.
    The sustain pedal lengthens notes (``sustain=True``, the default).

    Options (off by default): ``tempo=True`` writes ``Tempo_b`` (whole bpm)
    at the start and where the tempo changes (it only sets how decoded
    seconds become ticks); ``programs=True`` puts ``Program_p`` before every
    NoteOn and NoteOff.

    Long silences are capped: a gap between two consecutive events longer than
    ``max_gap_seconds`` (5 s by default) -- a silence, or a note held while
    nothing else happens -- is shortened to it, so no gap costs more than
    ``ceil(max_gap / 1 s)`` TimeShift tokens.
    """

    kind = "performance"
    _note_kinds = (NOTE_ON, NOTE_OFF, VELOCITY, PROGRAM)
    _pitch_kinds = (NOTE_ON, NOTE_OFF)

    def __init__(
        self,
        *,
        time_step=K.TIME_STEP_SECONDS,
        max_shift_steps=K.MAX_SHIFT_STEPS,
        velocity_bins=K.VELOCITY_BINS,
        velocity_scale=K.VELOCITY_SCALE,
        max_gap_seconds=K.MAX_GAP_SECONDS,
        pitch_range=K.PITCH_RANGE,
        sustain=K.PERFORMANCE_SUSTAIN,
        include_drums=False,
        tempo=False,
        programs=False,
        tempo_range=K.TEMPO_RANGE_BPM,
    ):
        self.time_step = check_float("time_step", time_step, K.MIN_TIME_STEP, 1.0)
        self.max_shift_steps = check_int("max_shift_steps", max_shift_steps, 1, K.MAX_SHIFT_STEPS_LIMIT)
        self.max_gap_seconds = check_float("max_gap_seconds", max_gap_seconds, self.time_step, K.MAX_GAP_LIMIT)
        self.sustain = check_bool("sustain", sustain)
        self._common_setup(velocity_bins, velocity_scale, pitch_range, include_drums, tempo, programs, tempo_range)
        super().__init__()
        self._state_kinds = _PerformanceGrammar.state_kinds(self.programs)
        self._state_masks = _state_masks(self._kinds, self._state_kinds)

    def _config(self):
        return {
            "time_step": self.time_step,
            "max_shift_steps": self.max_shift_steps,
            "max_gap_seconds": self.max_gap_seconds,
            "sustain": self.sustain,
            **self._common_config(),
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
            *self._option_vocab(),
        ]

    # -- encode
    def _encode_score(self, score):
        notes = self._in_range(score.notes)
        n = len(notes)
        program = self._program_of(notes) if self.programs else np.zeros(n, np.int64)
        start = self._steps(score, notes["start_tick"])
        end = np.maximum(self._steps(score, notes["end_tick"]), start + 1)
        vbin = self._velocity_bin_of(notes["velocity"])
        end = _fifo_ends(notes["pitch"] + 128 * (program - DRUM_PROGRAM), start, end, vbin)
        tempo_time, tempo_bin = self._tempo_changes(score, end.max(initial=0)) if n else (np.zeros(0, np.int64),) * 2
        m = len(tempo_time)
        # events: ons, offs, tempo changes; at one step tempo, then offs, then ons, by program and pitch
        time = np.concatenate((start, end, tempo_time))
        kind = np.concatenate((np.full(n, 2), np.full(n, 1), np.zeros(m, np.int64)))
        pitch = np.concatenate((notes["pitch"], notes["pitch"], np.zeros(m, np.int64)))
        prog = np.concatenate((program, program, np.zeros(m, np.int64)))
        soft = np.concatenate((vbin, np.zeros(n + m, np.int64)))  # ons of one pitch: softer first
        order = np.lexsort((soft, pitch, prog, kind, time))
        orig = np.concatenate((np.arange(n), np.arange(n), np.full(m, -1)))[order]  # note of each event
        tbin = np.concatenate((np.zeros(2 * n, np.int64), tempo_bin))[order]
        time, kind, pitch, prog = time[order], kind[order], pitch[order], prog[order]
        note_rank = np.empty(n, np.int64)
        note_rank[orig[kind == 2]] = np.arange(n)  # notes numbered in NoteOn order
        index = np.where(orig >= 0, note_rank[np.maximum(orig, 0)] if n else -1, -1)
        ev_vbin = np.where(orig >= 0, vbin[np.maximum(orig, 0)] if n else 0, 0)
        gap = np.minimum(np.diff(time, prepend=0), self.max_gap_steps)
        parts = self._event_parts(gap, kind, pitch, prog, index, tbin, ev_vbin)
        ids, note_of_token = _assemble(parts)
        return ids, note_of_token, notes[np.argsort(note_rank)]

    def _steps(self, score, ticks):
        """Nearest time step (half up) of each tick, in exact integer arithmetic."""
        per_step = 2 * round(self.time_step * 1e6) * score.ticks_per_beat  # 2 x step in time units
        return (2 * score.tick_to_time_units(ticks) + per_step // 2) // per_step

    def _tempo_changes(self, score, last_step):
        """(step, tempo bin) of the Tempo tokens: the first, then each change before ``last_step``."""
        if not self.tempo:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ticks, bins = self._tempo_bins(score)
        steps = self._steps(score, ticks)
        keep = steps < last_step
        steps, bins = steps[keep], bins[keep]
        last = run_starts(steps[::-1])[::-1]  # at one step the last change wins
        steps, bins = steps[last], bins[last]
        change = run_starts(bins)
        return steps[change], bins[change]

    def _event_parts(self, gap, kind, pitch, prog, note, tempo_bin, vbin):
        """Tokens of each event e (keys: event e, slot): TimeShifts, Tempo, Velocity, Program, NoteOn/Off.

        Per event (E,): ``kind`` 0 tempo, 1 off, 2 on; ``note`` its note
        index (-1 for a tempo change); ``tempo_bin`` and ``vbin`` its bins.
        """
        first, low = self._first, self.pitch_range[0]
        event = np.arange(len(gap))
        is_on, is_note = kind == 2, kind > 0
        full, rest = np.divmod(gap, self.max_shift_steps)
        parts = [
            ((np.repeat(event, full), 0), first[TIME_SHIFT] + self.max_shift_steps - 1, -1),
            ((event[rest > 0], 1), first[TIME_SHIFT] + rest[rest > 0] - 1, -1),
            ((event[is_note], 5), np.where(is_on, first[NOTE_ON], first[NOTE_OFF])[is_note] + pitch[is_note] - low,
             note[is_note]),
        ]
        if self.tempo:
            parts.append(((event[~is_note], 2), first[TEMPO] + tempo_bin[~is_note], -1))
        if self.programs:
            parts.append(((event[is_note], 4), first[PROGRAM] + prog[is_note] - DRUM_PROGRAM, note[is_note]))
        if self.velocity_bins:
            on_bins = vbin[is_on]
            change = run_starts(on_bins)
            ons = event[is_on][change]
            parts.append(((ons, 3), first[VELOCITY] + on_bins[change], note[ons]))
        return parts

    def _new_machine(self):
        return _PerformanceGrammar(self)


class _PerformanceGrammar(GrammarState):
    """Performance grammar: any event after BOS, except a NoteOff of a pitch not sounding.

    With Program tokens every NoteOn and NoteOff follows one, and a NoteOff
    must end a note of that program.  Notes of one pitch (and program) end
    first-in first-out; a note still sounding at the end (or at EOS) ends
    there, and lasts at least one step.
    """

    BODY, PROG = GrammarState.OPEN, "program"

    @classmethod
    def state_kinds(cls, programs):
        """Token kinds allowed in each state."""
        events = {TIME_SHIFT, VELOCITY, TEMPO, SPECIAL} | ({PROGRAM} if programs else {NOTE_ON, NOTE_OFF})
        return {GrammarState.START: events, cls.BODY: events, cls.PROG: {NOTE_ON, NOTE_OFF}, GrammarState.DONE: set()}

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.time = 0  # steps
        self.velocity = K.DEFAULT_VELOCITY
        self.program = 0
        self.sounding = {}  # (program, pitch) -> list of (onset step, velocity), oldest first
        self.open_count = np.zeros((129, 128), dtype=np.int64)  # (program + 1, pitch)
        self.notes = []  # (onset step, end step, pitch, velocity, program)
        self.tempos = []  # (step, bpm)

    def _legal(self, kind, value):
        return kind != NOTE_OFF or self.open_count[self.program - DRUM_PROGRAM, value] > 0

    def _restrict(self, mask):
        if NOTE_OFF in self.tok._state_kinds[self.state]:
            low, high = self.tok.pitch_range
            first = self.tok._first[NOTE_OFF]
            mask[first : first + high - low + 1] = self.open_count[self.program - DRUM_PROGRAM, low : high + 1] > 0

    def _apply(self, kind, value):
        self.state = self.BODY
        key = (self.program, value)
        if kind == NOTE_ON:
            self.sounding.setdefault(key, []).append((self.time, self.velocity))
            self.open_count[self.program - DRUM_PROGRAM, value] += 1
        elif kind == NOTE_OFF:
            onset, velocity = self.sounding[key].pop(0)
            self.open_count[self.program - DRUM_PROGRAM, value] -= 1
            self.notes.append((onset, max(self.time, onset + 1), value, velocity, self.program))
        elif kind == TIME_SHIFT:
            self.time += value
        elif kind == VELOCITY:
            self.velocity = value
        elif kind == TEMPO:
            self.tempos.append((self.time, value))
        else:  # PROGRAM: a NoteOn or NoteOff follows
            self.program, self.state = value, self.PROG
            self.pending = 1
        if kind != PROGRAM:
            self.pending = 0

    def _close_all(self):
        for (program, pitch), held in self.sounding.items():
            self.notes += [(onset, max(self.time, onset + 1), pitch, v, program) for onset, v in held]
        self.sounding = {}
        self.open_count[:] = 0

    def to_score(self, bpm):
        """(Score, assumptions) of the notes decoded so far; ``bpm`` until the first Tempo token."""
        tok = self.tok
        machine = self.copy() if self.sounding else self
        machine._close_all()
        cols = np.array(machine.notes, dtype=np.int64).reshape(-1, 5)  # (N, 5)
        if not tok.velocity_bins:
            cols[:, 3] = K.DEFAULT_VELOCITY
        steps = [(0, bpm)] + self.tempos  # at one step the last tempo wins
        tempo_steps = np.array([t for t, _ in steps], dtype=np.int64)
        tempo_us = _bpm_to_us([b for _, b in steps])
        tpb = K.PERFORMANCE_TICKS_PER_BEAT
        change_ticks, ticks = _steps_to_ticks(cols[:, :2], tempo_steps, tempo_us, tok.time_step, tpb)
        cols[:, :2] = ticks
        score = _decoded_score(cols, tpb, np.stack([change_ticks, tempo_us], axis=1), (), tok.programs)
        return score, _assumptions(tok, bpm, bool(self.tempos and self.tempos[0][0] == 0))


def _steps_to_ticks(steps, tempo_steps, tempo_us, time_step, tpb):
    """Time steps -> ticks under a tempo map given in steps; each tick within half a tick.

    tempo_steps, tempo_us : (K,) where each tempo starts (sorted; the last at
    a step wins) and its microseconds per beat.  Each tempo change's tick is
    rounded from the exact time of the tick before it, so errors never add up.
    Returns (change ticks (K,), ticks of ``steps`` (same shape)).
    """
    step_us = round(time_step * 1e6)
    change_ticks = np.zeros(len(tempo_steps), dtype=np.int64)
    realised_us = np.zeros(len(tempo_steps), dtype=np.float64)  # time of each change tick, us
    for k in range(1, len(tempo_steps)):
        elapsed = tempo_steps[k] * step_us - realised_us[k - 1]
        change_ticks[k] = change_ticks[k - 1] + round(elapsed * tpb / tempo_us[k - 1])
        realised_us[k] = realised_us[k - 1] + (change_ticks[k] - change_ticks[k - 1]) * tempo_us[k - 1] / tpb
    seg = np.searchsorted(tempo_steps, steps, side="right") - 1
    ticks = change_ticks[seg] + np.round((steps * step_us - realised_us[seg]) * tpb / tempo_us[seg])
    return change_ticks, np.maximum(ticks.astype(np.int64), change_ticks[seg])


TOKENIZER_TYPES.update(remi=RemiTokenizer, performance=PerformanceTokenizer)

