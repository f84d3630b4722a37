"""The shared base of the tokenizers: vocabulary, ids <-> strings, config I/O, decode, grammar.

Every tokenizer (one per module: :mod:`.remi`, :mod:`.performance`, :mod:`.grid`)
subclasses :class:`Tokenizer` and registers its ``type`` name in
:data:`~music_attn.music.tokenizers.registry.TOKENIZER_TYPES`, on which
:meth:`Tokenizer.from_dict` (and so every checkpoint) dispatches.

Tokens are readable ``Type_Value`` strings; the specials ``PAD`` (= 0),
``BOS`` and ``EOS`` come first.  ``encode`` is vectorised with numpy (no
Python object per note); ``decode`` and :meth:`Tokenizer.grammar` run the same
state machine, so a sequence sampled under the grammar decodes with zero
skipped tokens.  ``decode`` returns the project's :class:`~music_attn.music.midi.Score`.

The tokenizer owns what tokens mean: :meth:`Tokenizer.pitch_of` (which tokens
carry a pitch, and which), :meth:`Tokenizer.is_structure` and
:meth:`Tokenizer.allowed_next` (what the grammar allows after some tokens).

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
from music_attn.music.settings import check_bool, check_float, check_int, check_int_pair, check_pitch_range
from music_attn.music.tokenizers.registry import TOKENIZER_TYPES

__all__ = [
    "Tokenizer",
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
    def kind_mask(self, kind, value=None):
        """bool (V,): the tokens of ``kind`` (``POSITION``, ``DURATION`` ... of this module), with ``value`` if given."""
        mask = self._kinds == kind
        return mask if value is None else mask & (self._values == value)

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
