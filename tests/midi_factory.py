"""Build MIDI files for the tests with mido, from absolute-tick event lists.

``track(...)`` takes ``(tick, message)`` pairs in any order (stable by tick)
and returns a ``mido.MidiTrack`` with delta times; ``midi_file(...)`` wraps
tracks in a ``mido.MidiFile``; ``note_events(...)`` turns (pitch, start, end,
velocity) tuples in ticks into note-on/note-off pairs; ``random_tune(...)``
makes a melody on a grid, with metre and tempo changes, for round trips.

``bars_by_loop(...)`` is the independent reference for a bar's contents (the
notes starting in it, as (offset, pitch, length)), against which bar repeats are
checked.

``mido_reference(...)`` is the independent reference reader: a file read
message by message with mido, against which the project's byte scanner,
tokenizers and writer are checked.
"""

from collections import defaultdict

import mido


def on(pitch, velocity=64, channel=0):
    return mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)


def off(pitch, channel=0, velocity=0, as_note_on=False):
    if as_note_on:  # velocity-0 note-on: the usual running-status note-off
        return mido.Message("note_on", note=pitch, velocity=0, channel=channel)
    return mido.Message("note_off", note=pitch, velocity=velocity, channel=channel)


def tempo(bpm):
    return mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))


def time_signature(numerator, denominator):
    return mido.MetaMessage("time_signature", numerator=numerator, denominator=denominator)


def track(events, *, end=None):
    """(tick, message) pairs -> MidiTrack with delta times and an end_of_track.

    ``end`` (absolute tick) places end_of_track; default: at the last event.
    """
    events = sorted(events, key=lambda e: e[0])
    out, now = mido.MidiTrack(), 0
    for tick, msg in events:
        out.append(msg.copy(time=tick - now))
        now = tick
    last = now if end is None else max(end, now)
    out.append(mido.MetaMessage("end_of_track", time=last - now))
    return out


def note_events(notes, channel=0):
    """(pitch, start, end, velocity) in ticks -> (tick, message) pairs (offs before ons at a tick)."""
    events = []
    for pitch, start, end, velocity in notes:
        events.append((end, 0, off(pitch, channel)))
        events.append((start, 1, on(pitch, velocity, channel)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [(tick, msg) for tick, _, msg in events]


def midi_file(*tracks, ticks_per_beat=480, type=1):
    mid = mido.MidiFile(type=type, ticks_per_beat=ticks_per_beat)
    mid.tracks.extend(tracks)
    return mid


def save(mid, path):
    mid.save(str(path))
    return path


def random_tune(rng, *, ticks_per_beat=480, n_bars=8, metres=((4, 4),), grid=12, bpm=120, voices=1):
    """A tune on a grid of ``grid`` positions per beat, with a metre per bar.

    Returns ``(mido.MidiFile, notes)`` where notes are (pitch, start, end,
    velocity) tuples in ticks.  A metre change is written at the start of the
    bar where it happens; the tempo changes once, half way.
    """
    meta, notes, tick = [(0, tempo(bpm))], [], 0
    step = ticks_per_beat // grid
    current = None
    for bar in range(n_bars):
        num, den = metres[int(rng.integers(len(metres)))] if bar % 2 == 0 else current
        if (num, den) != current:
            meta.append((tick, time_signature(num, den)))
            current = (num, den)
        bar_len = num * ticks_per_beat * 4 // den
        if bar == n_bars // 2:
            meta.append((tick, tempo(bpm * 1.5)))
        for voice in range(voices):
            notes += _bar_notes(rng, tick, bar_len, step, 48 + 12 * voice)
        tick += bar_len
    mid = midi_file(track(meta, end=tick), track(note_events(notes), end=tick), ticks_per_beat=ticks_per_beat)
    return mid, notes


def _bar_notes(rng, start, bar_len, step, low):
    notes, t = [], start
    while t < start + bar_len:
        length = int(rng.choice([3, 4, 6, 12, 18, 24])) * step
        if rng.random() < 0.85:
            end = min(t + length, start + bar_len)
            notes.append((int(rng.integers(low, low + 24)), t, end, int(rng.integers(30, 120))))
        t += length
    return notes


def note_tuples(notes):
    """Sorted (pitch, start_tick, end_tick, velocity) tuples of a NOTE_DTYPE array."""
    cols = zip(notes["pitch"].tolist(), notes["start_tick"].tolist(), notes["end_tick"].tolist(), notes["velocity"].tolist())
    return sorted(cols)


# --------------------------------------------------------------------------- reference reader

DRUM_CHANNEL = 9


def mido_reference(path_or_midi, *, include_drums=False):
    """A file read message by message with mido: what the project's reader must find.

    Returns a dict: ``notes`` sorted (pitch, start tick, end tick, velocity,
    channel, track, program) -- FIFO pairing per (track, channel, pitch), a
    note never released ends at its track's end, silent notes dropped, the
    program the last change on the channel at or before the onset (type 0
    and 1 files only); ``tempos`` [(tick, us)] and ``signatures`` [(tick,
    num, den)] in file order; ``names`` {track: first track name};
    ``lyrics`` [text]; ``ticks_per_beat``; ``drums`` the number of channel-10
    notes (left out of ``notes`` unless ``include_drums``).
    """
    mid = path_or_midi if isinstance(path_or_midi, mido.MidiFile) else mido.MidiFile(str(path_or_midi))
    ons, changes, out = [], [], {"tempos": [], "signatures": [], "names": {}, "lyrics": []}
    for index, trk in enumerate(mid.tracks):
        tick, sounding = 0, defaultdict(list)
        for msg in trk:
            tick += msg.time
            _meta(msg, tick, index, out)
            if msg.type == "program_change":
                changes.append((tick, msg.channel, msg.program))
            if msg.type not in ("note_on", "note_off"):
                continue
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                sounding[key].append((tick, msg.velocity))
            elif sounding[key]:
                start, velocity = sounding[key].pop(0)
                ons.append((msg.note, start, tick, velocity, msg.channel, index))
        ons += [(k[1], s, tick, v, k[0], index) for k, held in sounding.items() for s, v in held]
    notes = [n for n in ons if n[2] > n[1]]
    out["drums"] = sum(n[4] == DRUM_CHANNEL for n in notes)
    notes = [n for n in notes if include_drums or n[4] != DRUM_CHANNEL]
    out["notes"] = sorted(n + (_program(changes, n[4], n[1]),) for n in notes)
    out["ticks_per_beat"] = mid.ticks_per_beat
    return out


def _meta(msg, tick, index, out):
    if msg.type == "set_tempo":
        out["tempos"].append((tick, msg.tempo))
    elif msg.type == "time_signature":
        out["signatures"].append((tick, msg.numerator, msg.denominator))
    elif msg.type == "track_name":
        out["names"].setdefault(index, msg.name)
    elif msg.type == "lyrics":
        out["lyrics"].append(msg.text)


def _program(changes, channel, tick):
    """The last program change on ``channel`` at or before ``tick`` (0 if none); stable on ties."""
    found = [p for t, c, p in sorted(changes, key=lambda e: e[0]) if c == channel and t <= tick]
    return found[-1] if found else 0


def score_notes(score):
    """The notes of a Score as mido_reference gives them (sorted 7-tuples)."""
    n = score.notes
    cols = ("pitch", "start_tick", "end_tick", "velocity", "channel", "track", "program")
    return sorted(zip(*(n[c].tolist() for c in cols)))


def ensemble_tune(rng, *, ticks_per_beat=480, n_bars=8, grid=4):
    """A multi-track piece: named tracks with programs (strings, piano, drums), 5 tempo changes, a metre change.

    Returns ``(mido.MidiFile, parts)``: ``parts`` maps (program, channel) to
    (pitch, start, end, velocity) tuples in ticks.  Tempos are whole bpm; the
    metre changes from 4/4 to 3/4 at bar 4; notes lie on a grid of ``grid``
    steps per beat.
    """
    bar_lengths = [4 * ticks_per_beat if bar < 4 else 3 * ticks_per_beat for bar in range(n_bars)]
    bar_starts = [sum(bar_lengths[:b]) for b in range(n_bars)]
    end = sum(bar_lengths)
    bpms = (72, 96, 131, 60, 150, 84)
    meta = [(0, time_signature(4, 4)), (bar_starts[4], time_signature(3, 4))]
    meta += [(k * end // 6 // ticks_per_beat * ticks_per_beat, tempo(b)) for k, b in enumerate(bpms)]
    meta.append((ticks_per_beat // 2 * 3, tempo(110)))  # one change in the middle of a bar
    voices = {("Violin", 40, 0, 67): None, ("Cello", 42, 1, 43): None, ("Piano", 0, 2, 55): None, ("Kit", 0, 9, 36): None}
    tracks, parts = [track(meta, end=end)], {}
    step = ticks_per_beat // grid
    for name, program, channel, low in voices:
        notes = [n for s, length in zip(bar_starts, bar_lengths) for n in _bar_notes(rng, s, length, step, low)]
        head = [(0, mido.MetaMessage("track_name", name=name)),
                (0, mido.Message("program_change", channel=channel, program=program))]
        tracks.append(track(head + note_events(notes, channel=channel), end=end))
        parts[(program, channel)] = notes
    return midi_file(*tracks, ticks_per_beat=ticks_per_beat), parts


def bars_by_loop(notes, lines):
    """Each bar's notes between consecutive bar lines (ticks) as a sorted tuple of
    (offset in the bar, pitch, length), by a plain loop over the notes."""
    return [tuple(sorted((int(n["start_tick"]) - a, int(n["pitch"]), int(n["end_tick"] - n["start_tick"]))
                         for n in notes if a <= n["start_tick"] < b))
            for a, b in zip(lines[:-1], lines[1:])]

