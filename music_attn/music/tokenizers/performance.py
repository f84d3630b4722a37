"""Performance tokens (Oore et al. 2018 / Music Transformer): events in real time.

``NoteOn_60``, ``NoteOff_60``, ``TimeShift_k`` (k steps of 10 ms),
``Velocity_v``; options: a Tempo token where the tempo changes, a Program
token before each NoteOn and NoteOff.

Shape legend: L tokens, N notes, V vocabulary size.
"""

import numpy as np

from music_attn.music import constants as K
from music_attn.music.arrays import run_starts
from music_attn.music.settings import check_bool, check_float, check_int
from music_attn.music.tokenizers.base import (
    DRUM_PROGRAM, NOTE_OFF, NOTE_ON, PROGRAM, SPECIAL, TEMPO, TIME_SHIFT, VELOCITY,
    GrammarState, Tokenizer, _assemble, _assumptions, _bpm_to_us, _decoded_score, _fifo_ends, _state_masks,
)
from music_attn.music.tokenizers.registry import register

__all__ = ["PerformanceTokenizer"]


@register
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
