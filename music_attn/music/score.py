"""The score: the notes of a piece with its tempo map, metres, programs and texts, and writing it as MIDI.

:class:`Score` is what :func:`music_attn.music.midi.read_midi` returns and what the
tokenizers' ``decode`` builds.  :meth:`Score.write` (and :func:`write_midi`)
writes it as a type 1 MIDI file with mido.

Shape legend: N notes, K tempo changes, M metre changes, P program changes.
"""

import io
import struct
from dataclasses import dataclass, field

import mido
import numpy as np

from music_attn._io import atomic_write
from music_attn.music.arrays import run_starts
from music_attn.errors import MidiError
from music_attn.music.constants import DEFAULT_TEMPO_US, DEFAULT_TIME_SIGNATURE, MIDI_MAX_TRACKS, MIDO_MAX_TRACKS

__all__ = ["NOTE_DTYPE", "TEMPO_DTYPE", "TIME_SIGNATURE_DTYPE", "PROGRAM_DTYPE", "Score", "write_midi", "save_mido"]

NOTE_DTYPE = np.dtype(
    [
        ("pitch", np.int16),
        ("velocity", np.int16),
        ("start_tick", np.int64),
        ("end_tick", np.int64),
        ("start", np.float64),  # seconds
        ("end", np.float64),
        ("start_beat", np.float64),  # quarter notes
        ("end_beat", np.float64),
        ("program", np.int16),
        ("channel", np.int16),
        ("track", np.int32),  # a file may announce up to 65,535 tracks
    ]
)
# tempo: microseconds per quarter note from `tick` on; time: seconds at `tick`
TEMPO_DTYPE = np.dtype([("tick", np.int64), ("time", np.float64), ("tempo", np.float64)])
TIME_SIGNATURE_DTYPE = np.dtype([("tick", np.int64), ("numerator", np.int16), ("denominator", np.int16)])
# a program change: from `tick` on, `channel` plays `program`; written in `track`
PROGRAM_DTYPE = np.dtype([("tick", np.int64), ("channel", np.int16), ("program", np.int16), ("track", np.int32)])

_MAX_DENOMINATOR = 64


@dataclass(frozen=True, eq=False)
class Score:
    """The notes of a MIDI file with the maps between ticks, seconds and beats.

    What :func:`read_midi` returns and what the tokenizers' ``decode`` builds;
    :meth:`write` writes it as MIDI (one MIDI track per score track, with its
    name, program changes and texts; tempo map and metres in track 0).  To
    add notes, build a new one: :meth:`from_ticks` with the old notes and the
    new (their seconds are filled in), or ``dataclasses.replace``.

    Attributes
    ----------
    notes : ndarray of NOTE_DTYPE, shape (N,)
        Sorted by onset tick, then pitch.  ``track`` is the index of the track
        chunk the note was read from; ``program`` the instrument in force.
    tempos : ndarray of TEMPO_DTYPE, shape (K,)
        Starts at tick 0 (the MIDI default 120 bpm when the file sets none).
    time_signatures : ndarray of TIME_SIGNATURE_DTYPE, shape (M,)
        Starts at tick 0 (4/4 when the file sets none); one entry per tick.
    ticks_per_beat : int
    end_tick : int
        The end of the longest track.
    name : str or None
        The file name, when read from a file.
    track_names : tuple of str
        One per track chunk ("" for a track without a name).
    programs : ndarray of PROGRAM_DTYPE, shape (P,)
        Every program change, in tick order.
    texts : tuple of (tick, track, kind, text)
        Text, copyright, lyrics, marker and cue events in file order; ``kind``
        is one of those words.
    dropped_drums : int
        Notes of channel 10 left out (``include_drums=False``).
    """

    notes: np.ndarray
    tempos: np.ndarray
    time_signatures: np.ndarray
    ticks_per_beat: int
    end_tick: int
    name: str | None = None
    track_names: tuple = ()
    programs: np.ndarray = field(default_factory=lambda: np.zeros(0, PROGRAM_DTYPE))
    texts: tuple = ()
    dropped_drums: int = 0

    @classmethod
    def from_ticks(cls, notes, ticks_per_beat, *, tempos=(), time_signatures=(), track_names=(),
                   programs=(), texts=(), name=None):
        """Build a Score from notes in ticks and (tick, value) change lists.

        Parameters
        ----------
        notes : NOTE_DTYPE (N,)
            ``pitch, velocity, start_tick, end_tick, program, channel, track``
            are used; seconds and beats are filled in here.
        ticks_per_beat : int
        tempos : rows (tick, microseconds per beat); 120 bpm from tick 0 if none there
        time_signatures : rows (tick, numerator, denominator); 4/4 from tick 0 if none there
        track_names, texts : as the attributes
        programs : rows (tick, channel, program, track)
        """
        tpb = int(ticks_per_beat)
        tempo_map = _tempo_map(np.asarray(tempos, dtype=np.int64).reshape(-1, 2), tpb)
        signatures = _time_signatures(np.asarray(time_signatures, dtype=np.int64).reshape(-1, 3))
        rows = np.asarray(programs, dtype=np.int64).reshape(-1, 4)
        table = np.zeros(len(rows), PROGRAM_DTYPE)
        table["tick"], table["channel"], table["program"], table["track"] = rows.T
        fields = {k: notes[k] for k in ("pitch", "velocity", "start_tick", "end_tick", "program", "channel", "track")}
        note_array = _note_array(fields, tempo_map, tpb)
        end_tick = int(max(note_array["end_tick"].max(initial=0), tempo_map["tick"][-1], signatures["tick"][-1]))
        return cls(note_array, tempo_map, signatures, tpb, end_tick, name, tuple(track_names), table, tuple(texts))

    def __len__(self):
        return len(self.notes)

    @property
    def duration(self):
        """Seconds from tick 0 to the end of the longest track."""
        return float(self.tick_to_time(self.end_tick))

    def tick_to_time(self, ticks):
        """Seconds at the given ticks (array or scalar), following the tempo map."""
        return _tick_to_time(self.tempos, self.ticks_per_beat, ticks)

    def time_to_tick(self, seconds):
        """Ticks (float) at the given seconds; the inverse of :meth:`tick_to_time`."""
        seconds = np.asarray(seconds, dtype=np.float64)
        k = np.searchsorted(self.tempos["time"], seconds, side="right") - 1
        k = np.maximum(k, 0)
        ticks_per_second = self.ticks_per_beat / (self.tempos["tempo"][k] * 1e-6)
        return self.tempos["tick"][k] + (seconds - self.tempos["time"][k]) * ticks_per_second

    def tick_to_time_units(self, ticks):
        """Exact time at the given ticks, int64, in units of 1 / (10^6 ticks_per_beat) s.

        The sum of ticks times tempo (microseconds per beat) over the tempo
        map: integer arithmetic, so rounding to a time grid has no float ties.
        """
        ticks = np.asarray(ticks, dtype=np.int64)
        tempo = self.tempos["tempo"].astype(np.int64)
        before = np.concatenate(([0], np.cumsum(np.diff(self.tempos["tick"]) * tempo[:-1])))
        k = np.searchsorted(self.tempos["tick"], ticks, side="right") - 1
        return before[k] + (ticks - self.tempos["tick"][k]) * tempo[k]

    def tick_to_beat(self, ticks):
        """Quarter notes at the given ticks."""
        return np.asarray(ticks) / self.ticks_per_beat

    def beat_to_tick(self, beats):
        """Ticks (float) at the given quarter notes; the inverse of :meth:`tick_to_beat`."""
        return np.asarray(beats, dtype=np.float64) * self.ticks_per_beat

    def lyrics(self):
        """The lyrics events joined with spaces (empty if none)."""
        return " ".join(text.strip() for _, _, kind, text in self.texts if kind == "lyrics").strip()

    def to_mido(self):
        """This score as a type 1 ``mido.MidiFile`` (see :func:`_to_mido`)."""
        return _to_mido(self)

    def write(self, path):
        """Write this score to ``path`` as a type 1 MIDI file, atomically."""
        write_midi(path, self)


def _tick_to_time(tempos, tpb, ticks):
    ticks = np.asarray(ticks)
    k = np.searchsorted(tempos["tick"], ticks, side="right") - 1
    seconds_per_tick = tempos["tempo"][k] * 1e-6 / tpb
    return tempos["time"][k] + (ticks - tempos["tick"][k]) * seconds_per_tick


def _tempo_map(rows, tpb):
    """(tick, us/beat) rows -> TEMPO_DTYPE array starting at tick 0, last at a tick wins."""
    rows = rows[rows[:, 1] > 0] if len(rows) else rows
    rows = _last_per_tick(np.vstack([[[0, DEFAULT_TEMPO_US]], rows]))
    out = np.zeros(len(rows), dtype=TEMPO_DTYPE)
    out["tick"], out["tempo"] = rows[:, 0], rows[:, 1]
    seconds = np.diff(out["tick"]) * out["tempo"][:-1] * 1e-6 / tpb
    out["time"][1:] = np.cumsum(seconds)
    return out


def _time_signatures(rows):
    """(tick, num, den) rows -> TIME_SIGNATURE_DTYPE array starting at tick 0."""
    if len(rows):
        valid = (rows[:, 1] > 0) & (rows[:, 2] > 0) & (rows[:, 2] <= _MAX_DENOMINATOR)
        rows = rows[valid]
    rows = _last_per_tick(np.vstack([[[0, *DEFAULT_TIME_SIGNATURE]], rows]))
    out = np.zeros(len(rows), dtype=TIME_SIGNATURE_DTYPE)
    out["tick"], out["numerator"], out["denominator"] = rows.T
    return out


def _last_per_tick(rows):
    """Stable-sort rows by tick (column 0) and keep the last row of each tick."""
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    return rows[run_starts(rows[::-1, 0])[::-1]]


def _note_array(f, tempos, tpb):
    """Assemble NOTE_DTYPE notes sorted by (onset, pitch, end, track)."""
    order = np.lexsort((f["track"], f["end_tick"], f["pitch"], f["start_tick"]))
    notes = np.zeros(len(order), dtype=NOTE_DTYPE)
    for field in ("pitch", "velocity", "start_tick", "end_tick", "program", "channel", "track"):
        notes[field] = f[field][order]
    notes["start"] = _tick_to_time(tempos, tpb, notes["start_tick"])
    notes["end"] = _tick_to_time(tempos, tpb, notes["end_tick"])
    notes["start_beat"] = notes["start_tick"] / tpb
    notes["end_beat"] = notes["end_tick"] / tpb
    return notes


# --------------------------------------------------------------------------- writing


def write_midi(path, midi):
    """Write a Score, mido.MidiFile or pretty_midi.PrettyMIDI to ``path`` atomically (a Score as type 1)."""
    if isinstance(midi, Score):
        midi = _to_mido(midi)
    if isinstance(midi, mido.MidiFile):
        mid = midi
        write = lambda f: save_mido(mid, f, path)  # noqa: E731
    elif hasattr(midi, "instruments") and hasattr(midi, "write"):  # pretty_midi.PrettyMIDI
        write = midi.write
    else:
        raise TypeError(f"write_midi needs a Score, mido.MidiFile or PrettyMIDI, got {type(midi).__name__}")
    with atomic_write(path, mode="wb") as f:
        write(f)


def save_mido(mid, f, path):
    """``mid.save(file=f)`` for any track count MIDI allows (``path`` names it in errors): past mido's 32,767 the header is written
    here and the tracks by mido, a group at a time; past 65,535 MidiError."""
    n = len(mid.tracks)
    if n > MIDI_MAX_TRACKS:
        raise MidiError(f"{path}: {n:,} tracks, more than a MIDI file can hold ({MIDI_MAX_TRACKS:,})")
    if n <= MIDO_MAX_TRACKS:
        mid.save(file=f)
        return
    f.write(struct.pack(">4sLHHh", b"MThd", 6, 1, n, mid.ticks_per_beat))
    for lo in range(0, n, MIDO_MAX_TRACKS):
        part = mido.MidiFile(type=1, ticks_per_beat=mid.ticks_per_beat, charset=mid.charset)
        part.tracks.extend(mid.tracks[lo:lo + MIDO_MAX_TRACKS])
        buffer = io.BytesIO()
        part.save(file=buffer)
        f.write(buffer.getvalue()[14:])               # its tracks, without its header


def _to_mido(score):
    """A Score as a type 1 ``mido.MidiFile`` with the score's ticks per beat.

    Track k holds the notes, program changes, name and texts of the score's
    track k; the tempo map and the metres go into track 0.  Note-offs come
    before note-ons at one tick, so a re-struck note reads back as two notes.
    A score without program changes gets one before the first note of each
    (track, channel) whose program is not 0.
    """
    n_tracks = max(len(score.track_names), int(score.notes["track"].max(initial=-1)) + 1, 1)
    events = [[] for _ in range(n_tracks)]  # per track: (tick, order, message)
    for tick, us in zip(score.tempos["tick"].tolist(), score.tempos["tempo"].tolist()):
        events[0].append((tick, 0, mido.MetaMessage("set_tempo", tempo=int(round(us)))))
    for tick, num, den in score.time_signatures[["tick", "numerator", "denominator"]].tolist():
        if den & (den - 1) == 0:  # MIDI stores a power of two
            events[0].append((tick, 0, mido.MetaMessage("time_signature", numerator=num, denominator=den)))
    for tick, track, kind, text in score.texts:
        events[min(track, n_tracks - 1)].append((tick, 0, mido.MetaMessage(kind, text=text)))
    for tick, channel, program, track in _program_rows(score):
        events[min(track, n_tracks - 1)].append((tick, 2, mido.Message("program_change", channel=channel, program=program)))
    _note_messages(score.notes, events)
    mid = mido.MidiFile(type=1, ticks_per_beat=score.ticks_per_beat, charset="utf-8")
    for k, track_events in enumerate(events):
        name = score.track_names[k] if k < len(score.track_names) else ""
        mid.tracks.append(_track(track_events, name))
    return mid


def _program_rows(score):
    """(tick, channel, program, track) of the program changes to write."""
    if len(score.programs):
        return score.programs[["tick", "channel", "program", "track"]].tolist()
    notes = score.notes[score.notes["program"] != 0]
    first = {}
    for tick, channel, program, track in notes[["start_tick", "channel", "program", "track"]].tolist():
        first.setdefault((track, channel), (0, channel, program, track))
    return list(first.values())


def _note_messages(notes, events):
    """Append each note's note-on and note-off (order 3 and 1) to its track's events."""
    rows = notes[["start_tick", "end_tick", "channel", "pitch", "velocity", "track"]].tolist()
    for start, end, channel, pitch, velocity, track in rows:
        velocity = min(max(velocity, 1), 127)
        events[track].append((start, 3, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity)))
        events[track].append((end, 1, mido.Message("note_off", channel=channel, note=pitch, velocity=0)))


def _track(events, name):
    """(tick, order, message) events -> MidiTrack with delta times, a name and end-of-track."""
    track = mido.MidiTrack()
    if name:
        track.append(mido.MetaMessage("track_name", name=name))
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track
