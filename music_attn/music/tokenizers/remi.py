"""REMI tokens (Huang & Yang 2020): beat-based events, one bar after another.

``Bar``, ``TimeSig_3/4`` (first bar and where the metre changes),
``Position_p``, then per note ``Pitch_60``, ``Velocity_80`` (optional),
``Duration_d`` (in positions).  Options: ``tempo=True`` adds ``Tempo_96``
tokens (integer beats per minute) after the Bar (or Position) where the
tempo changes; ``programs=True`` adds a ``Program_40`` token before each
note's Pitch (the REMI+ convention; ``Program_-1`` is the drum kit).

Shape legend: L tokens, N notes, V vocabulary size.
"""

import numpy as np

from music_attn.errors import TokenizerError
from music_attn.music import constants as K
from music_attn.music.arrays import run_starts
from music_attn.music.settings import check_int, check_metres
from music_attn.music.tokenizers.base import (
    BAR, DRUM_PROGRAM, DURATION, PITCH, POSITION, PROGRAM, SPECIAL, TEMPO, TIMESIG, VELOCITY,
    GrammarState, Tokenizer, _assemble, _assumptions, _bpm_to_us, _decoded_score, _fifo_ends, _state_masks,
)
from music_attn.music.tokenizers.registry import register

__all__ = ["RemiTokenizer"]


@register
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

    ``one_line`` (set it after reading a prompt, for a melody): one note at a
    time -- no second note at a Position, and no Position before the last
    note has ended (its onset plus its Duration, across bar lines).
    """

    one_line = False

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
            return self.position < value < self.bar_length and self.bar_start + value >= self.free_from
        if kind in (PITCH, PROGRAM) and self.one_line:
            return self.state != self.DUR
        return True

    def _restrict(self, mask):
        kinds = self.tok._state_kinds[self.state]
        if POSITION in kinds:
            first = self.tok._first[POSITION]
            lowest = max(self.position + 1, self.free_from - self.bar_start)
            mask[first : first + max(lowest, 0)] = False
            mask[first + self.bar_length : first + int(self.tok._bar_lengths.max())] = False
        if self.one_line and self.state == self.DUR:
            mask[np.isin(self.tok._kinds, (PITCH, PROGRAM))] = False     # no chord

    @property
    def free_from(self):
        """First position (from the start) where a new note may start: any, or (``one_line``) the last note's end."""
        if not (self.one_line and self.notes):
            return 0
        onset, duration = self.notes[-1][:2]
        return onset + duration

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
