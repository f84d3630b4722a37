"""Robust MIDI reading into the project's score object, and writing it back through mido.

``read_midi`` turns a file into a :class:`Score`: one structured array of
notes (ticks, seconds and beats), the tempo map, the time signatures, the
program changes, the track names and the texts (lyrics, markers).  One reader
does it all: a byte-level scanner that follows mido's reading rules (one loop
step per event, no message objects: several times faster than
``mido.MidiFile``; the tests check it against a plain mido loop).  A
``mido.MidiFile`` or ``pretty_midi.PrettyMIDI`` is first written to bytes and
read the same way.  Notes are paired with numpy, not built as one Python
object per note, so a 100,000-note file reads in about a second.
The container itself, and writing it back as a type 1 MIDI file with mido
(:meth:`Score.write`, :func:`write_midi`), live in :mod:`music_attn.music.score`.

Stated behaviour on real-world files:

* Only regular files are read: a directory, FIFO, device or socket is refused
  (a FIFO is never opened), and so is a file over ``MAX_MIDI_BYTES``.
* type 0 and 1 files play all tracks together; a type 2 file's tracks are
  independent patterns and are played one after another.
* A note-on with velocity 0 is a note-off.  Two sounding notes of the same
  pitch on the same channel of a track are released first-in, first-out: a
  note-off ends the oldest one (so a re-struck note written "on, then off" at
  the same tick ends the old note, not the new one).
* A note-off with no sounding note is ignored; a note never released ends at
  the end of its track; a note that ends where it starts is dropped (silent).
* Channel 10 (percussion) is left out unless ``include_drums=True``; the
  Score counts the notes left out (``dropped_drums``).
* A note's program is the last program change on its channel at or before
  its onset (0 if none).
* ``sustain=True`` lengthens a note released while the sustain pedal (CC64)
  is down until the pedal is lifted, or until the same pitch is struck again.
* Seconds follow the tempo map across every change; beats are quarter notes
  (``tick / ticks_per_beat``), independent of tempo and time signature.
* Running status is followed (meta events keep it; sysex and system
  messages cancel it); reading a track stops at its end-of-track event.
* Variable-length numbers longer than 4 bytes (the MIDI limit) are an error.
* Unknown chunks are skipped, data bytes above 127 are clipped, ticks are not
  limited (pretty_midi stops at 10^7); malformed tempo or time-signature
  events are ignored.
* Texts (track names, lyrics, markers) are UTF-8 when valid, latin-1
  otherwise, and cut to ``MAX_TEXT_CHARS`` characters with an ellipsis.

Any file that cannot be read raises :class:`~music_attn.errors.MidiError`
whose message is ``"FILE: reason"``.
"""

import codecs
import io
import itertools
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import mido
import numpy as np

from music_attn._io import read_input
from music_attn.errors import MidiError, brief
from music_attn.music.arrays import run_starts
from music_attn.music.constants import (
    DRUM_CHANNEL,
    MAX_MIDI_BYTES,
    MAX_TEXT_CHARS,
    SUSTAIN_CONTROL,
    SUSTAIN_THRESHOLD,
)
from music_attn.music.score import save_mido
from music_attn.music.score import (  # the container, re-exported here where it always was
    NOTE_DTYPE, PROGRAM_DTYPE, TEMPO_DTYPE, TIME_SIGNATURE_DTYPE, Score, _note_array, _tempo_map, _time_signatures,
    write_midi,
)

__all__ = [
    "NOTE_DTYPE",
    "TEMPO_DTYPE",
    "TIME_SIGNATURE_DTYPE",
    "PROGRAM_DTYPE",
    "Score",
    "read_midi",
    "read_chunks",
    "write_midi",
    "decode_text",
]


# Ticks times tempo (< 2^24 us per beat) must fit in int64: 2^38 ticks is a
# century at 24 ticks per beat, so only corrupt files are longer.
_MAX_TICKS = 2**38
_TEXT_KINDS = {0x01: "text", 0x02: "copyright", 0x05: "lyrics", 0x06: "marker", 0x07: "cue_marker"}


def decode_text(raw, limit=MAX_TEXT_CHARS):
    """Bytes of a MIDI text event -> str: UTF-8 when valid, else latin-1; cut to ``limit`` chars.

    Only the first ``4 * limit + 4`` bytes are decoded, so a huge event costs
    no more than a short one; a cut text ends with an ellipsis.
    """
    head = bytes(raw[: 4 * limit + 4])
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) == len(raw))
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    text = text.rstrip("\x00")
    if len(text) > limit or len(head) < len(raw):
        text = text[: limit - 1].rstrip() + "\u2026"
    return text


# --------------------------------------------------------------------------- reading


def read_midi(source, *, include_drums=False, sustain=False):
    """Read a MIDI file into a :class:`Score`.

    Parameters
    ----------
    source : str, Path, mido.MidiFile, pretty_midi.PrettyMIDI or Score
    include_drums : bool
        Keep the notes of channel 10 (left out by default, and counted).
    sustain : bool
        Lengthen notes held by the sustain pedal (CC64).

    Returns
    -------
    Score

    Raises
    ------
    MidiError
        The file is missing, not a regular file, too large, not MIDI,
        truncated or corrupt (message ``FILE: reason``).
    """
    if isinstance(source, Score):
        return source
    data, name = source_bytes(source)
    return read_chunks(*split_chunks(data, name), name, include_drums=include_drums, sustain=sustain)


def read_chunks(fmt, tpb, chunks, name, *, include_drums=False, sustain=False):
    """The Score of a file already split by :func:`split_chunks` (so a caller that also
    needs the raw tracks reads the file once); arguments as :func:`read_midi`."""
    return _score(_events_from_chunks(fmt, chunks, name), tpb, name, include_drums, sustain)


def source_bytes(source):
    """The bytes and display name of a path, mido.MidiFile or PrettyMIDI."""
    if isinstance(source, mido.MidiFile):
        name = str(source.filename) if source.filename else "<MidiFile>"
        return _written(lambda buffer: save_mido(source, buffer, name), name), name
    if hasattr(source, "instruments") and hasattr(source, "write"):  # pretty_midi.PrettyMIDI
        return _written(source.write, "<PrettyMIDI>"), "<PrettyMIDI>"
    if not isinstance(source, (str, os.PathLike)):
        raise MidiError(f"{brief(source)} ({type(source).__name__}): not a path, mido.MidiFile or pretty_midi.PrettyMIDI")
    return _read_bytes(Path(source), str(source)), str(source)


def _written(save, name):
    """The bytes ``save(buffer)`` writes; MidiError if it refuses."""
    buffer = io.BytesIO()
    try:
        save(buffer)
    except Exception as exc:  # a hand-built object can hold anything (negative times, bad values)
        raise MidiError(f"{name}: cannot be written as MIDI ({exc})") from None
    return buffer.getvalue()


def _read_bytes(path, name):
    """The bytes of a MIDI file: a regular file (never a FIFO or device) of at most MAX_MIDI_BYTES."""
    try:
        data = read_input(path, limit=MAX_MIDI_BYTES, what="MIDI file", error=MidiError)
    except FileNotFoundError:
        raise MidiError(f"{name}: no such file") from None
    if not data:
        raise MidiError(f"{name}: empty file")
    return data


def split_chunks(data, name):
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

    notes: list = field(default_factory=list)  # (tick, track, channel, pitch, velocity); velocity 0 = off
    pedals: list = field(default_factory=list)  # (tick, channel, value)
    programs: list = field(default_factory=list)  # (tick, channel, program, track)
    tempos: list = field(default_factory=list)  # (tick, microseconds per beat)
    signatures: list = field(default_factory=list)  # (tick, numerator, denominator)
    track_ends: list = field(default_factory=list)  # end tick of each track
    track_names: dict = field(default_factory=dict)  # track -> first name
    texts: list = field(default_factory=list)  # (tick, track, kind, text)


def _denominator(power):
    """2 ** power, or 0 (an invalid metre, dropped later) for absurd powers."""
    return 2**power if 0 <= power < 16 else 0


class _Corrupt(Exception):
    """A track chunk that cannot be decoded (turned into MidiError with the file name)."""


def _events_from_chunks(fmt, chunks, name):
    """Events of raw MTrk chunk bodies."""
    events = _Events()
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

    mido's reading rules: running status (meta events keep it, sysex and
    system messages cancel it), data bytes above 127 clipped, reading stops at
    end-of-track.  One loop step per event, no message objects: several times
    faster than mido.MidiFile.  Linear in the chunk's length.
    """
    notes, pedals, programs = ev.notes.append, ev.pedals.append, ev.programs.append
    i, n, status = 0, len(chunk), 0
    while i < n:
        b = chunk[i]
        i += 1
        delta = b & 0x7F
        if b & 0x80:  # variable-length delta time, at most 4 bytes; two inline
            b = chunk[i]
            if b & 0x80:
                delta, i = _varlen(chunk, i - 1)
            else:
                delta, i = (delta << 7) | b, i + 1
        tick += delta
        b = chunk[i]
        if b & 0x80:
            i += 1
            if b >= 0xF0:
                i, done = _system_event(chunk, i, b, tick, index, ev)
                status = status if b == 0xFF else 0
                if done:
                    break
                continue
            status = b
        elif not status:
            raise _Corrupt("running status without a status byte")
        kind, channel = status & 0xF0, status & 0x0F
        if kind == 0xC0:
            programs((tick, channel, chunk[i] & 0x7F, index))
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


def _system_event(chunk, i, status, tick, track, ev):
    """Skip or read a meta, sysex or system event starting after its status byte.

    Returns (next index, True at end-of-track).  Tempo, time signature, track
    name and texts are recorded; malformed tempos and metres are ignored.
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
        elif kind == 0x03:
            ev.track_names.setdefault(track, decode_text(data))
        elif kind in _TEXT_KINDS:
            ev.texts.append((tick, track, _TEXT_KINDS[kind], decode_text(data)))
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
    flat = itertools.chain.from_iterable(rows)          # twice as fast as np.array(rows)
    return np.fromiter(flat, dtype=np.int64, count=len(rows) * ncols).reshape(len(rows), ncols)


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
    dropped = 0
    if not include_drums:
        keep = fields["channel"] != DRUM_CHANNEL
        dropped = int(len(keep) - keep.sum())
        fields = {k: v[keep] for k, v in fields.items()}
    span = int(end_tick) + 2  # above every tick: (channel, tick) -> channel * span + tick
    program_rows = _table(ev.programs, 4)
    fields["program"] = _programs(program_rows[:, :3], fields, span)
    if sustain:
        fields["end_tick"] = _sustained_ends(_table(ev.pedals, 3), fields, span)
    programs = np.zeros(len(program_rows), PROGRAM_DTYPE)
    program_rows = program_rows[np.argsort(program_rows[:, 0], kind="stable")]
    programs["tick"], programs["channel"], programs["program"], programs["track"] = program_rows.T
    names = tuple(ev.track_names.get(t, "") for t in range(len(ev.track_ends)))
    return Score(_note_array(fields, tempos, tpb), tempos, signatures, tpb, int(end_tick), name,
                 names, programs, tuple(ev.texts), dropped)


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
    first = run_starts(key)
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
    same = ~run_starts(key[::-1])[::-1]  # the next note has the same key
    out = np.empty_like(f["start_tick"])
    out[order] = np.where(same, later, span)
    return out
