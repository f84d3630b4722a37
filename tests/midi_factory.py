"""Build MIDI files for the tests with mido, from absolute-tick event lists.

``track(...)`` takes ``(tick, message)`` pairs in any order (stable by tick)
and returns a ``mido.MidiTrack`` with delta times; ``midi_file(...)`` wraps
tracks in a ``mido.MidiFile``; ``note_events(...)`` turns (pitch, start, end,
velocity) tuples in ticks into note-on/note-off pairs; ``random_tune(...)``
makes a melody on a grid, with metre and tempo changes, for round trips.
"""

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
