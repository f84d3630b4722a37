"""Robust MIDI reading into numpy note arrays, and writing notes back to MIDI.

``read_midi`` turns a file into a :class:`Score`: one structured array of
notes (ticks, seconds and beats), the tempo map and the time signatures.
Files are decoded by a byte-level scanner that follows mido's reading rules
(one loop step per event, no message objects: several times faster than
``mido.MidiFile``; the tests check it against mido); a ``mido.MidiFile`` is
read message by message.  Notes are paired with numpy, not built as one
Python object per note, so a 100,000-note file reads in about a second.
``load_midi_file`` gives the mido object, for callers that want its messages.

Stated behaviour on real-world files:

* type 0 and 1 files play all tracks together; a type 2 file's tracks are
  independent patterns and are played one after another.
* A note-on with velocity 0 is a note-off.  Two sounding notes of the same
  pitch on the same channel of a track are released first-in, first-out: a
  note-off ends the oldest one (so a re-struck note written "on, then off" at
  the same tick ends the old note, not the new one).
* A note-off with no sounding note is ignored; a note never released ends at
  the end of its track; a note that ends where it starts is dropped (silent).
* Channel 10 (percussion) is left out unless ``include_drums=True``.
* A note's program is the last program change on its channel at or before
  its onset (0 if none).
* ``sustain=True`` lengthens a note released while the sustain pedal (CC64)
  is down until the pedal is lifted, or until the same pitch is struck again.
* Seconds follow the tempo map across every change; beats are quarter notes
  (``tick / ticks_per_beat``), independent of tempo and time signature.
* Running status is followed (meta events keep it; sysex and system
  messages cancel it); reading a track stops at its end-of-track event.
* Unknown chunks are skipped, data bytes above 127 are clipped, text is never
  decoded (mido objects: latin-1), ticks are not limited (pretty_midi stops
  at 10^7); malformed tempo or time-signature events are ignored.

Any file that cannot be read raises :class:`~music_attn.errors.MidiError`
whose message is ``"FILE: reason"``.
"""

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np
import pretty_midi

from music_attn._io import atomic_write
from music_attn.music.constants import (
    DEFAULT_TEMPO_US,
    DEFAULT_TIME_SIGNATURE,
    DRUM_CHANNEL,
    SUSTAIN_CONTROL,
    SUSTAIN_THRESHOLD,
)
from music_attn.errors import MidiError

__all__ = [
    "NOTE_DTYPE",
    "TEMPO_DTYPE",
    "TIME_SIGNATURE_DTYPE",
    "Score",
    "read_midi",
    "load_midi_file",
    "to_pretty_midi",
    "write_midi",
]

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
        ("track", np.int16),
    ]
)
# tempo: microseconds per quarter note from `tick` on; time: seconds at `tick`
TEMPO_DTYPE = np.dtype([("tick", np.int64), ("time", np.float64), ("tempo", np.float64)])
TIME_SIGNATURE_DTYPE = np.dtype([("tick", np.int64), ("numerator", np.int16), ("denominator", np.int16)])

_MAX_DENOMINATOR = 64
# Ticks times tempo (< 2^24 us per beat) must fit in int64: 2^38 ticks is a
# century at 24 ticks per beat, so only corrupt files are longer.
_MAX_TICKS = 2**38


@dataclass(frozen=True, eq=False)
class Score:
    """The notes of a MIDI file with the maps between ticks, seconds and beats.

    Attributes
    ----------
    notes : ndarray of NOTE_DTYPE, shape (N,)
        Sorted by onset tick, then pitch.
    tempos : ndarray of TEMPO_DTYPE, shape (K,)
        Starts at tick 0 (the MIDI default 120 bpm when the file sets none).
    time_signatures : ndarray of TIME_SIGNATURE_DTYPE, shape (M,)
        Starts at tick 0 (4/4 when the file sets none); one entry per tick.
    ticks_per_beat : int
    end_tick : int
        The end of the longest track.
    name : str or None
        The file name, when read from a file.
    """

    notes: np.ndarray
    tempos: np.ndarray
    time_signatures: np.ndarray
    ticks_per_beat: int
    end_tick: int
    name: str | None = None

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


def _tick_to_time(tempos, tpb, ticks):
    ticks = np.asarray(ticks)
    k = np.searchsorted(tempos["tick"], ticks, side="right") - 1
    seconds_per_tick = tempos["tempo"][k] * 1e-6 / tpb
    return tempos["time"][k] + (ticks - tempos["tick"][k]) * seconds_per_tick


# --------------------------------------------------------------------------- reading


def read_midi(source, *, include_drums=False, sustain=False):
    """Read a MIDI file into a :class:`Score`.

    Parameters
    ----------
    source : str, Path, mido.MidiFile, pretty_midi.PrettyMIDI or Score
    include_drums : bool
        Keep the notes of channel 10 (left out by default).
    sustain : bool
        Lengthen notes held by the sustain pedal (CC64).

    Returns
    -------
    Score

    Raises
    ------
    MidiError
        The file is missing, not MIDI, truncated or corrupt (message ``FILE: reason``).
    """
    if isinstance(source, Score):
        return source
    if isinstance(source, mido.MidiFile):
        name = str(source.filename) if source.filename else "<MidiFile>"
        try:
            events = _events_from_mido(source)
        except Exception as exc:  # a MidiFile built by hand can hold anything
            raise MidiError(f"{name}: unreadable MIDI content ({exc})") from exc
        return _score(events, int(source.ticks_per_beat), name, include_drums, sustain)
    data, name = _source_bytes(source)
    fmt, tpb, chunks = _split_chunks(data, name)
    return _score(_events_from_chunks(fmt, chunks, name), tpb, name, include_drums, sustain)


def load_midi_file(source):
    """Parse ``source`` with mido; returns ``(mido.MidiFile, name)``.

    For callers that want mido messages (texts, lyrics); :func:`read_midi`
    does not need it.  Raises MidiError for anything not a readable MIDI file.
    """
    if isinstance(source, mido.MidiFile):
        return source, str(source.filename) if source.filename else "<MidiFile>"
    data, name = _source_bytes(source)
    fmt, tpb, chunks = _split_chunks(data, name)
    header = struct.pack(">4sLHHh", b"MThd", 6, fmt, len(chunks), tpb)
    body = b"".join(b"MTrk" + struct.pack(">L", len(c)) + c for c in chunks)
    try:
        return mido.MidiFile(file=io.BytesIO(header + body), clip=True, charset="latin1"), name
    except Exception as exc:  # mido raises OSError, EOFError, ValueError, KeyError...
        reason = "a track chunk ends in the middle of an event" if isinstance(exc, EOFError) else str(exc)
        raise MidiError(f"{name}: corrupt MIDI data ({reason or type(exc).__name__})") from None


def _source_bytes(source):
    """The bytes and display name of a path or PrettyMIDI."""
    if isinstance(source, pretty_midi.PrettyMIDI):
        buffer = io.BytesIO()
        try:
            source.write(buffer)
        except Exception as exc:  # pretty_midi refuses e.g. negative times or bad values
            raise MidiError(f"<PrettyMIDI>: cannot be written as MIDI ({exc})") from None
        return buffer.getvalue(), "<PrettyMIDI>"
    if not isinstance(source, (str, os.PathLike)):
        raise MidiError(f"{source!r}: not a path, mido.MidiFile or pretty_midi.PrettyMIDI")
    return _read_bytes(Path(source), str(source)), str(source)


def _read_bytes(path, name):
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MidiError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise MidiError(f"{name}: is a directory, not a MIDI file") from None
    except OSError as exc:
        raise MidiError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise MidiError(f"{name}: empty file")
    return data


def _split_chunks(data, name):
    """Validate the MThd header; returns (format, ticks per beat, MTrk chunk bodies).

    Unknown chunks are skipped; bytes after the announced tracks are ignored.
    """
    if data[:4] != b"MThd":
        kind = "RIFF MIDI (RMID) is not supported" if data[:4] == b"RIFF" else "no MThd header"
        raise MidiError(f"{name}: not a MIDI file ({kind})")
    if len(data) < 14:
        raise MidiError(f"{name}: truncated header")
    size, fmt, ntracks, division = struct.unpack(">LHHh", data[4:14])
    if size < 6 or fmt > 2:
        raise MidiError(f"{name}: bad header (length {size}, format {fmt})")
    if division <= 0:
        raise MidiError(f"{name}: unsupported time division {division} (SMPTE or zero)")
    offset, chunks = 8 + size, []
    while len(chunks) < ntracks:
        if offset + 8 > len(data):
            raise MidiError(f"{name}: truncated (the header announces {ntracks} track(s), found {len(chunks)})")
        kind, length = struct.unpack(">4sL", data[offset : offset + 8])
        if not (kind.isascii() and kind.isalnum()):
            raise MidiError(f"{name}: corrupt chunk header at byte {offset} (a chunk length is wrong?)")
        end = offset + 8 + length
        if end > len(data):
            raise MidiError(f"{name}: truncated or lying chunk length ({kind.decode()} of {length} bytes at byte {offset})")
        if kind == b"MTrk":
            chunks.append(data[offset + 8 : end])
        offset = end
    return fmt, division, chunks


# --------------------------------------------------------------------------- messages -> arrays


@dataclass
class _Events:
    """Absolute-tick events of all tracks, as plain lists of tuples (then arrays)."""

    notes: list  # (tick, track, channel, pitch, velocity); velocity 0 = off
    pedals: list  # (tick, channel, value)
    programs: list  # (tick, channel, program)
    tempos: list  # (tick, microseconds per beat)
    signatures: list  # (tick, numerator, denominator)
    track_ends: list  # end tick of each track


def _events_from_mido(mid):
    """Events of a mido.MidiFile, message by message."""
    events = _Events([], [], [], [], [], [])
    offset = 0
    for index, track in enumerate(mid.tracks):
        end = _scan_track(track, index, offset, events)
        events.track_ends.append(end)
        if mid.type == 2:  # independent patterns: one after another
            offset = end
    return events


def _scan_track(track, index, tick, ev):
    """Append one mido track's events to ``ev``; returns the tick of its end."""
    notes, pedals, programs = ev.notes.append, ev.pedals.append, ev.programs.append
    for msg in track:
        tick += msg.time
        kind = msg.type
        if kind == "note_on":
            notes((tick, index, msg.channel, msg.note, msg.velocity))
        elif kind == "note_off":
            notes((tick, index, msg.channel, msg.note, 0))
        elif kind == "control_change":
            if msg.control == SUSTAIN_CONTROL:
                pedals((tick, msg.channel, msg.value))
        elif kind == "program_change":
            programs((tick, msg.channel, msg.program))
        elif kind == "set_tempo":
            ev.tempos.append((tick, msg.tempo))
        elif kind == "time_signature":
            ev.signatures.append((tick, msg.numerator, _denominator(msg.denominator.bit_length() - 1)))
        elif kind == "end_of_track":
            break
    return tick


def _denominator(power):
    """2 ** power, or 0 (an invalid metre, dropped later) for absurd powers."""
    return 2**power if 0 <= power < 16 else 0


class _Corrupt(Exception):
    """A track chunk that cannot be decoded (turned into MidiError with the file name)."""


def _events_from_chunks(fmt, chunks, name):
    """Events of raw MTrk chunk bodies."""
    events = _Events([], [], [], [], [], [])
    offset = 0
    for index, chunk in enumerate(chunks):
        try:
            end = _scan_chunk(chunk, index, offset, events)
        except _Corrupt as exc:
            raise MidiError(f"{name}: corrupt MIDI data in track {index} ({exc})") from None
        except IndexError:
            raise MidiError(f"{name}: corrupt MIDI data in track {index} (the chunk ends in the middle of an event)") from None
        events.track_ends.append(end)
        if fmt == 2:  # independent patterns: one after another
            offset = end
    return events


def _scan_chunk(chunk, index, tick, ev):
    """Decode one MTrk chunk body into ``ev``; returns the tick of its end.

    The byte-level twin of ``_scan_track``, with mido's reading rules: running
    status (meta events keep it, sysex and system messages cancel it), data
    bytes above 127 clipped, reading stops at end-of-track.  One loop step per
    event, no message objects: several times faster than mido.MidiFile.
    """
    notes, pedals, programs = ev.notes.append, ev.pedals.append, ev.programs.append
    i, n, status = 0, len(chunk), 0
    while i < n:
        b = chunk[i]
        i += 1
        delta = b & 0x7F
        while b & 0x80:  # variable-length delta time
            b = chunk[i]
            i += 1
            delta = (delta << 7) | (b & 0x7F)
        tick += delta
        b = chunk[i]
        if b & 0x80:
            i += 1
            if b >= 0xF0:
                i, done = _system_event(chunk, i, b, tick, ev)
                status = status if b == 0xFF else 0
                if done:
                    break
                continue
            status = b
        elif not status:
            raise _Corrupt("running status without a status byte")
        kind, channel = status & 0xF0, status & 0x0F
        if kind == 0xC0:
            programs((tick, channel, chunk[i] & 0x7F))
            i += 1
            continue
        if kind == 0xD0:
            i += 1
            continue
        x, y = chunk[i], chunk[i + 1]
        i += 2
        if (x | y) & 0x80:
            x, y = min(x, 127), min(y, 127)
        if kind == 0x90:
            notes((tick, index, channel, x, y))
        elif kind == 0x80:
            notes((tick, index, channel, x, 0))
        elif kind == 0xB0 and x == SUSTAIN_CONTROL:
            pedals((tick, channel, y))
    if i > n:
        raise _Corrupt("the chunk ends in the middle of an event")
    return tick


_SYSTEM_LENGTHS = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0, 0xF8: 0, 0xF9: 0, 0xFA: 0, 0xFB: 0, 0xFC: 0, 0xFD: 0, 0xFE: 0}


def _system_event(chunk, i, status, tick, ev):
    """Skip or read a meta, sysex or system event starting after its status byte.

    Returns (next index, True at end-of-track).  Tempo and time signature are
    recorded; malformed ones are ignored.
    """
    if status == 0xFF:
        kind = chunk[i]
        length, i = _varlen(chunk, i + 1)
        data = chunk[i : i + length]
        if len(data) < length:
            raise _Corrupt(f"meta event of {length} bytes runs past the chunk")
        if kind == 0x51 and length == 3:
            ev.tempos.append((tick, int.from_bytes(data, "big")))
        elif kind == 0x58 and length >= 2:
            ev.signatures.append((tick, data[0], _denominator(data[1])))
        return i + length, kind == 0x2F
    if status in (0xF0, 0xF7):
        length, i = _varlen(chunk, i)
        if i + length > len(chunk):
            raise _Corrupt(f"sysex of {length} bytes runs past the chunk")
        return i + length, False
    if status not in _SYSTEM_LENGTHS:
        raise _Corrupt(f"undefined status byte 0x{status:02x}")
    return i + _SYSTEM_LENGTHS[status], False


def _varlen(chunk, i):
    """A variable-length quantity at ``i``: (value, next index)."""
    value = 0
    for _ in range(4):
        b = chunk[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, i
    raise _Corrupt("variable-length number longer than 4 bytes")


def _table(rows, ncols):
    """A list of equal-length int tuples -> int64 array (R, ncols)."""
    if not rows:
        return np.zeros((0, ncols), dtype=np.int64)
    return np.array(rows, dtype=np.int64)


def _score(ev, tpb, name, include_drums, sustain):
    """Events -> Score (notes paired, programs, optional sustain, times)."""
    if tpb <= 0:
        raise MidiError(f"{name}: unsupported time division {tpb} (SMPTE or zero)")
    end_tick = max(ev.track_ends, default=0)
    if end_tick > _MAX_TICKS:
        raise MidiError(f"{name}: implausibly long ({end_tick} ticks)")
    tempos = _tempo_map(_table(ev.tempos, 2), tpb)
    signatures = _time_signatures(_table(ev.signatures, 3))
    fields = _pair_notes(_table(ev.notes, 5), np.array(ev.track_ends, dtype=np.int64))
    if not include_drums:
        keep = fields["channel"] != DRUM_CHANNEL
        fields = {k: v[keep] for k, v in fields.items()}
    span = int(end_tick) + 2  # above every tick: (channel, tick) -> channel * span + tick
    fields["program"] = _programs(_table(ev.programs, 3), fields, span)
    if sustain:
        fields["end_tick"] = _sustained_ends(_table(ev.pedals, 3), fields, span)
    return Score(_note_array(fields, tempos, tpb), tempos, signatures, tpb, int(end_tick), name)


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
    return rows[_run_starts(rows[::-1, 0])[::-1]]


def _run_starts(x):
    """bool (n,): True where ``x`` differs from the element before (and at 0)."""
    out = np.ones(len(x), dtype=bool)
    out[1:] = x[1:] != x[:-1]
    return out


def _pair_notes(rows, track_ends):
    """Pair note-ons with note-offs, first-in first-out per (track, channel, pitch).

    Parameters
    ----------
    rows : int64 (E, 5)
        (tick, track, channel, pitch, velocity) in file order; velocity 0 is an off.
    track_ends : int64 (n_tracks,)

    Returns
    -------
    dict of arrays (N,): pitch, velocity, start_tick, end_tick, channel, track
    """
    key = (rows[:, 1] * 16 + rows[:, 2]) * 128 + rows[:, 3]
    order = np.argsort(key, kind="stable")  # grouped by key, file order inside a group
    rows, key = rows[order], key[order]
    on_index, off_index = _fifo_pairs(key, rows[:, 4] > 0)
    ons = rows[on_index]
    ends = np.where(off_index >= 0, rows[off_index, 0], track_ends[ons[:, 1]])
    keep = ends > ons[:, 0]  # a note that ends where it starts is silent
    ons, ends = ons[keep], ends[keep]
    return {
        "pitch": ons[:, 3],
        "velocity": ons[:, 4],
        "start_tick": ons[:, 0],
        "end_tick": ends,
        "channel": ons[:, 2],
        "track": ons[:, 1],
    }


def _fifo_pairs(key, is_on):
    """FIFO matching of on/off events grouped by ``key`` (each group in time order).

    An off is an orphan (ignored) when nothing of its group is sounding: the
    open count is the running sum of +1/-1 clamped at zero, which equals the
    running sum minus its running minimum (floored at 0).  The j-th matched off
    of a group ends the j-th on of that group.

    Returns
    -------
    on_index : int (N,)  index of every on event
    off_index : int (N,)  index of the off ending it, -1 if never released
    """
    n = len(key)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    delta = np.where(is_on, 1, -1)
    first = _run_starts(key)
    group = np.cumsum(first) - 1
    total = np.cumsum(delta)
    running = total - (total - delta)[first][group]  # sum within the group
    big = 2 * n + 2  # offsets keep each group's running minimum to itself
    low = np.minimum.accumulate(running - group * big) + group * big
    low_before = np.concatenate(([0], low[:-1]))
    low_before[first] = 0
    matched_off = ~is_on & (running >= np.minimum(low_before, 0))
    on_index, off_index = np.flatnonzero(is_on), np.flatnonzero(matched_off)
    rank = _rank_in_group(group[on_index])
    n_groups = group[-1] + 1
    off_count = np.bincount(group[off_index], minlength=n_groups)
    off_first = np.cumsum(off_count) - off_count
    g = group[on_index]
    released = rank < off_count[g]
    partner = np.full(len(on_index), -1)
    partner[released] = off_index[(off_first[g] + rank)[released]]
    return on_index, partner


def _rank_in_group(group):
    """0, 1, 2... within each run of equal values of a sorted array."""
    idx = np.arange(len(group))
    return idx - np.searchsorted(group, group, side="left")


def _by_channel(rows, default):
    """Sort (tick, channel, value) rows by channel then tick and append a sentinel.

    The sentinel (channel 16, ``default`` value) is what index -1 picks, so a
    failed lookup reads as the default.
    """
    rows = rows[np.lexsort((rows[:, 0], rows[:, 1]))]
    return np.vstack([rows, [[0, 16, default]]])


def _last_event(rows, channel, tick, span):
    """Index of the last row of ``channel`` at or before ``tick``; -1 if none."""
    k = np.searchsorted(rows[:, 1] * span + rows[:, 0], channel * span + tick, side="right") - 1
    return np.where(rows[k, 1] == channel, k, -1)


def _next_event(rows, channel, tick, span):
    """Index of the first row of ``channel`` after ``tick``; -1 if none."""
    k = np.searchsorted(rows[:, 1] * span + rows[:, 0], channel * span + tick, side="right")
    return np.where(rows[k, 1] == channel, k, -1)


def _programs(rows, f, span):
    """Last program change on each note's channel at or before its onset (0 if none)."""
    rows = _by_channel(rows, 0)
    return rows[_last_event(rows, f["channel"], f["start_tick"], span), 2]


def _sustained_ends(pedals, f, span):
    """Note ends lengthened by the sustain pedal (CC64) of their channel.

    A note released while the pedal is down (the last CC64 at or before the
    release is >= 64) lasts until the pedal is lifted (or the end of the file),
    but never past the next onset of the same pitch on the same channel.
    """
    ends, channel = f["end_tick"], f["channel"]
    pedals = _by_channel(pedals, 0)
    down = pedals[_last_event(pedals, channel, ends, span), 2] >= SUSTAIN_THRESHOLD
    lifts = pedals[pedals[:, 2] < SUSTAIN_THRESHOLD]
    lifts[-1, 0] = span - 2  # sentinel: no lift before the end of the file
    lift_tick = lifts[_next_event(lifts, channel, ends, span), 0]
    extended = np.minimum(np.where(down, lift_tick, ends), _next_onset(f, span))
    return np.maximum(ends, extended)


def _next_onset(f, span):
    """Onset of the next note of the same channel and pitch (``span`` if none)."""
    order = np.lexsort((f["start_tick"], f["pitch"], f["channel"]))
    key = (f["channel"] * 128 + f["pitch"])[order]
    later = np.append(f["start_tick"][order][1:], span)
    same = ~_run_starts(key[::-1])[::-1]  # the next note has the same key
    out = np.empty_like(f["start_tick"])
    out[order] = np.where(same, later, span)
    return out


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


def to_pretty_midi(score_or_notes, *, ticks_per_beat=480, tempos=None, time_signatures=None):
    """Notes (a Score, or a NOTE_DTYPE array) -> ``pretty_midi.PrettyMIDI``.

    One instrument per (program, drum) pair.  Times come from the notes' ticks
    through the tempo map, so the written file has the original ticks, tempo
    map and time signatures.  A bare note array gets 120 bpm and no metre.
    """
    if isinstance(score_or_notes, Score):
        s = score_or_notes
        notes, ticks_per_beat, tempos, time_signatures = s.notes, s.ticks_per_beat, s.tempos, s.time_signatures
    else:
        notes = score_or_notes
    tpb = int(ticks_per_beat)
    tempos = _tempo_map(np.zeros((0, 2), np.int64), tpb) if tempos is None else tempos
    pm = pretty_midi.PrettyMIDI(resolution=tpb)
    # pretty_midi has no public setter for a tempo map: fill its tick scales.
    pm._tick_scales = [(int(t), float(us) * 1e-6 / tpb) for t, us in zip(tempos["tick"], tempos["tempo"])]
    pm._update_tick_to_time(int(tempos["tick"][-1]))
    for ts in [] if time_signatures is None else time_signatures:
        seconds = float(_tick_to_time(tempos, tpb, ts["tick"]))
        pm.time_signature_changes.append(pretty_midi.TimeSignature(int(ts["numerator"]), int(ts["denominator"]), seconds))
    starts = _tick_to_time(tempos, tpb, notes["start_tick"])
    ends = _tick_to_time(tempos, tpb, notes["end_tick"])
    _add_instruments(pm, notes, starts, ends)
    return pm


def _add_instruments(pm, notes, starts, ends):
    drums = notes["channel"] == DRUM_CHANNEL
    for program, is_drum in sorted(set(zip(notes["program"].tolist(), drums.tolist()))):
        inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
        picked = np.flatnonzero((notes["program"] == program) & (drums == is_drum))
        rows = zip(notes["velocity"][picked].tolist(), notes["pitch"][picked].tolist(), starts[picked].tolist(), ends[picked].tolist())
        inst.notes = [pretty_midi.Note(v, p, s, e) for v, p, s, e in rows]
        pm.instruments.append(inst)


def write_midi(path, midi):
    """Write a PrettyMIDI, mido.MidiFile or Score to ``path`` atomically."""
    if isinstance(midi, Score):
        midi = to_pretty_midi(midi)
    with atomic_write(path, mode="wb") as f:
        if isinstance(midi, mido.MidiFile):
            midi.save(file=f)
        else:
            midi.write(f)
