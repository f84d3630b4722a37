"""Four-voice grid tokens: the JSB Chorales serialization of the Music Transformer paper.

A chorale is a grid of sixteenth-note steps; each step holds the pitches of the
soprano, alto, tenor and bass (-1 where a voice is silent).  The tokens are the
grid read step by step, voice by voice: ``S A T B`` of step 0, then of step 1,
... -- one token per cell, ``Pitch_p`` or ``Rest``.  The vocabulary is the
specials (``PAD`` = 0, ``BOS``, ``EOS``), one ``Pitch_p`` for every pitch of
``pitch_range`` and ``Rest``.

Note alignment: on a bare grid a run of one pitch in one voice is one note.
The grid cannot tell a held note from a repeated one (nor can the JSB data), so
two repeated quarter notes read as one half note.  A MIDI file read onto the
grid keeps its own notes: each cell belongs to the note that sounds there.

Shape legend: S steps, N notes, L tokens (1 + 4 S).
"""

import numpy as np

from music_attn.errors import TokenizerError
from music_attn.music import constants as K
from music_attn.music.midi import NOTE_DTYPE, Score, read_midi
from music_attn.music.settings import check_pitch_range
from music_attn.music.tokenizers.base import (
    BOS_ID, EOS_ID, PITCH, SPECIAL, GrammarState, Tokenizer, TokenSequence, _id_list, _state_masks,
)
from music_attn.music.tokenizers.registry import register

__all__ = ["GridTokenizer", "VOICES", "grid_notes"]

VOICES = ("Soprano", "Alto", "Tenor", "Bass")
REST = 10                       # token kind of ``Rest`` (after the kinds of base.py)
# Every pitch of the JSB Chorales (train and validation): 36 (C2, bass) .. 81 (A5, soprano).
GRID_PITCH_RANGE = (36, 81)
# A sixteenth note is a quarter of a beat.
STEPS_PER_BEAT = 4
# Decoded grids use 480 ticks per beat (120 per step) at the decode tempo (120 bpm):
# one step is 0.125 s.
GRID_TICKS_PER_BEAT = 480
# A MIDI file longer than this many steps (about 36 hours at 120 bpm) is refused.
MAX_GRID_STEPS = 1 << 20


def grid_notes(grid):
    """The notes of a grid, a note being a run of one pitch in one voice.

    Parameters
    ----------
    grid : int (S, 4), MIDI pitches, -1 for silence.

    Returns
    -------
    starts, ends : int (N,) first step and one past the last step of each note.
    voices, pitches : int (N,)
    note_of_cell : int (S, 4), the note of each cell, -1 for silence.
    Notes are numbered in reading order (step, then voice).
    """
    grid = np.asarray(grid, dtype=np.int64)
    S = len(grid)
    prev = np.vstack([np.full((1, 4), -1), grid[:-1]])                # (S, 4)
    is_start = (grid >= 0) & (grid != prev)                           # (S, 4)
    number = np.cumsum(is_start.ravel()).reshape(S, 4) - 1            # (S, 4)
    last_start = np.maximum.accumulate(np.where(is_start, np.arange(S)[:, None], 0), axis=0)
    note_of_cell = np.where(grid >= 0, number[last_start, np.arange(4)], -1)
    steps, voices = np.nonzero(is_start)                              # reading order
    lengths = np.bincount(note_of_cell[note_of_cell >= 0], minlength=len(steps))
    return steps, steps + lengths, voices, grid[steps, voices], note_of_cell


def _note_array(starts, ends, voices, pitches, ticks_per_step, seconds_per_tick):
    """Note columns (in steps) -> NOTE_DTYPE (N,), track and channel = voice."""
    notes = np.zeros(len(starts), dtype=NOTE_DTYPE)
    notes["pitch"], notes["velocity"] = pitches, K.DEFAULT_VELOCITY
    notes["start_tick"], notes["end_tick"] = starts * ticks_per_step, ends * ticks_per_step
    notes["start"], notes["end"] = notes["start_tick"] * seconds_per_tick, notes["end_tick"] * seconds_per_tick
    notes["start_beat"], notes["end_beat"] = starts / STEPS_PER_BEAT, ends / STEPS_PER_BEAT
    notes["channel"] = notes["track"] = voices
    return notes


@register
class GridTokenizer(Tokenizer):
    """Four voices on a sixteenth-note grid, one token per voice per step.

    ``encode_grid(grid)`` gives ``[BOS]`` + ``4 * S`` tokens (no EOS), so the
    NLL of ``ids[1:]`` is the NLL of the grid; ``encode(midi)`` reads a
    four-voice MIDI file onto the grid and ends with EOS; ``decode`` gives a
    MIDI file with one named track per voice.  With the default pitch range:
    3 specials + 46 pitches + Rest = 50 tokens.
    """

    kind = "grid"
    include_drums = False
    velocity_bins = 0              # no Velocity tokens: notes keep their track's velocity
    programs = False               # no Program tokens: notes keep their track's instrument
    _note_kinds = (PITCH,)
    _pitch_kinds = (PITCH,)

    def __init__(self, *, pitch_range=GRID_PITCH_RANGE):
        self.pitch_range = check_pitch_range(pitch_range)
        super().__init__()
        self._add_rest()
        self._state_kinds = _GridGrammar.STATE_KINDS
        self._state_masks = _state_masks(self._kinds, self._state_kinds)

    def _config(self):
        return {"pitch_range": list(self.pitch_range)}

    def _build_vocab(self):
        pitches = range(self.pitch_range[0], self.pitch_range[1] + 1)
        return [(PITCH, pitches, pitches)]

    def _add_rest(self):
        """Append the ``Rest`` token (a kind of its own, part of no note)."""
        self.rest_id = len(self.vocab)
        self.vocab = self.vocab + ["Rest"]
        self._index["Rest"] = self.rest_id
        self._kinds = np.append(self._kinds, np.int8(REST))
        self._values = np.append(self._values, -1)
        self._kind_list.append(REST)
        self._value_list.append(-1)
        self._first[REST] = self.rest_id
        self._structure = np.append(self._structure, True)
        self._pitch_table = np.append(self._pitch_table, -1)

    # -- encode
    def grid_ids(self, grid):
        """Token ids of the cells of a grid: int (S, 4) -> int32 (S, 4); TokenizerError if unfit."""
        grid = np.asarray(grid)
        if grid.ndim != 2 or grid.shape[1] != 4 or (grid.size and not np.issubdtype(grid.dtype, np.integer)):
            raise TokenizerError(f"a grid is an int array of shape (steps, 4), got {grid.dtype} {grid.shape}")
        low, high = self.pitch_range
        bad = (grid != -1) & ((grid < low) | (grid > high))
        if bad.any():
            raise TokenizerError(f"grid pitch {grid[bad][0]} outside {low}..{high} (and not -1 for silence)")
        ids = np.where(grid < 0, self.rest_id, self._first[PITCH] + grid - low)
        return ids.astype(np.int32)

    def encode_grid(self, grid, name=None):
        """A grid int (S, 4) (S A T B per step, -1 silent) -> TokenSequence of ``[BOS] + 4 S`` ids."""
        cells = self.grid_ids(grid).ravel()                                     # (4 S,)
        starts, ends, voices, pitches, note_of_cell = grid_notes(grid)
        tps = GRID_TICKS_PER_BEAT // STEPS_PER_BEAT
        notes = _note_array(starts, ends, voices, pitches, tps, 60.0 / K.DECODE_TEMPO_BPM / GRID_TICKS_PER_BEAT)
        ids = np.concatenate(([BOS_ID], cells))
        return TokenSequence(ids, np.concatenate(([-1], note_of_cell.ravel())), notes, self.vocab, name)

    def encode(self, source):
        """Read a four-voice MIDI file onto the grid -> TokenSequence ``[BOS] + 4 S + [EOS]``.

        Voices: with exactly four tracks of notes, the tracks from highest to
        lowest mean pitch; otherwise the notes starting together ranked from
        the top (the lowest of five or more go to the bass).  Notes snap to the
        nearest sixteenth and last at least one; where two notes of a voice
        overlap, the later one wins.  Each cell belongs to the note sounding
        there, and the notes keep their times as read, and their file track
        when the file has four tracks of notes (so the tracks keep their names);
        otherwise each note's track is its voice, 0 = soprano.
        """
        score = read_midi(source, include_drums=False)
        grid, cell_note = self._score_grid(score)
        ids = np.concatenate(([BOS_ID], self.grid_ids(grid).ravel(), [EOS_ID]))
        used = cell_note.ravel()
        first = np.unique(used[used >= 0], return_index=True)   # notes by first cell
        order = first[0][np.argsort(first[1])]
        rank = np.full(len(score.notes), -1, np.int64)
        rank[order] = np.arange(len(order))
        labels = np.concatenate(([-1], np.where(used >= 0, rank[np.maximum(used, 0)], -1), [-1]))
        notes = score.notes[order].copy()
        if len(np.unique(score.notes["track"])) != 4:      # voices inferred: they become the tracks
            notes["track"] = self._voices(score.notes)[order]
        return TokenSequence(ids, labels, notes, self.vocab, score.name, score)

    def voice_tracks(self, score):
        """{voice: file track} of a four-track file as :meth:`encode` reads it (0 = soprano);
        empty when the voices are inferred from the notes instead."""
        notes = score.notes
        tracks = np.unique(notes["track"])
        if len(tracks) != 4:
            return {}
        voices = self._voices(notes)
        return {int(voices[notes["track"] == t][0]): int(t) for t in tracks.tolist()}

    def _voices(self, notes):
        """Voice 0..3 of every note (see :meth:`encode`)."""
        tracks = np.unique(notes["track"])
        if len(tracks) == 4:
            means = [notes["pitch"][notes["track"] == t].mean() for t in tracks]
            voice_of_track = dict(zip(tracks[np.argsort(means)[::-1]].tolist(), range(4)))
            return np.array([voice_of_track[t] for t in notes["track"].tolist()], dtype=np.int64)
        order = np.lexsort((-notes["pitch"].astype(np.int64), notes["start_tick"]))
        onset = notes["start_tick"][order]
        first = np.searchsorted(onset, onset, side="left")            # rank within an onset
        voices = np.empty(len(notes), np.int64)
        voices[order] = np.minimum(np.arange(len(notes)) - first, 3)
        return voices

    def _score_grid(self, score):
        """(grid int (S, 4), cell_note int (S, 4) index into score.notes or -1)."""
        notes, low, high = score.notes, *self.pitch_range
        step = score.ticks_per_beat / STEPS_PER_BEAT
        start = np.floor(notes["start_tick"] / step + 0.5).astype(np.int64)
        end = np.maximum(np.floor(notes["end_tick"] / step + 0.5).astype(np.int64), start + 1)
        S = int(end.max()) if len(notes) else 0
        if S > MAX_GRID_STEPS:
            raise TokenizerError(f"{score.name or 'the file'}: {S} sixteenth steps is longer than "
                                 f"the grid tokenizer takes ({MAX_GRID_STEPS})")
        grid, cell_note = np.full((S, 4), -1, np.int64), np.full((S, 4), -1, np.int64)
        voices = self._voices(notes)
        keep = (notes["pitch"] >= low) & (notes["pitch"] <= high)
        for i in np.flatnonzero(keep)[np.argsort(start[keep], kind="stable")]:
            grid[start[i]:end[i], voices[i]] = notes["pitch"][i]
            cell_note[start[i]:end[i], voices[i]] = i
        return grid, cell_note

    # -- decode
    def grid_of(self, ids):
        """The grid int (S, 4) that grid tokens spell (BOS/EOS/PAD ignored; unfinished step dropped)."""
        machine = self._new_machine()
        for token_id in _id_list(ids):
            if not machine.done:
                machine.step(token_id)
        return machine.grid()

    def _new_machine(self):
        return _GridGrammar(self)


def grid_score(grid, bpm=K.DECODE_TEMPO_BPM):
    """A grid int (S, 4) -> Score with tracks Soprano, Alto, Tenor, Bass (``bpm`` quarter notes a minute)."""
    starts, ends, voices, pitches, _ = grid_notes(grid)
    tps = GRID_TICKS_PER_BEAT // STEPS_PER_BEAT
    notes = _note_array(starts, ends, voices, pitches, tps, 0.0)
    programs = [(0, v, 0, v) for v in range(4)]
    return Score.from_ticks(notes, GRID_TICKS_PER_BEAT, tempos=[(0, round(60e6 / bpm))],
                            track_names=VOICES, programs=programs)


class _GridGrammar(GrammarState):
    """Grid grammar: any pitch or Rest in every cell; EOS only between steps."""

    STATE_KINDS = {
        GrammarState.START: {PITCH, REST, SPECIAL},
        GrammarState.OPEN: {PITCH, REST, SPECIAL},
        GrammarState.DONE: set(),
    }

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.cells = []           # pitch or -1, in reading order

    @property
    def pending(self):            # cells of an unfinished step
        return len(self.cells) % 4

    @pending.setter
    def pending(self, value):     # the base class initialises it; the count is derived
        pass

    def _legal(self, kind, value):
        return kind != SPECIAL or self.pending == 0

    def _restrict(self, mask):
        if self.pending:
            mask[EOS_ID] = False

    def _apply(self, kind, value):
        self.state = self.OPEN
        self.cells.append(value)

    def grid(self):
        n = len(self.cells) - self.pending
        return np.array(self.cells[:n], dtype=np.int64).reshape(-1, 4)

    def to_score(self, bpm):
        """(Score with four named tracks, assumptions) of the complete steps so far."""
        return grid_score(self.grid(), bpm), (f"tempo {bpm:g} bpm (a grid carries no tempo)",
                                              f"velocity {K.DEFAULT_VELOCITY}")

