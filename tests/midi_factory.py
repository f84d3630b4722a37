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


# A multi-track prompt: four instrument tracks (one of drums) after a conductor track.
PROMPT_TPB = 384
PROMPT_BPMS = ((0, 96), (2, 90), (5, 120), (8, 70), (11, 100), (13.5, 84))   # (beat, bpm): 5 changes
PROMPT_METRES = ((0, 4, 4), (8, 3, 4))            # (beat, numerator, denominator): 4/4, then 3/4 from bar 3
PROMPT_END_BEAT = 20                               # six bars: 2 of 4/4, 4 of 3/4
PROMPT_TRACKS = (  # name, channel, program, notes as (pitch, start beat, end beat, velocity)
    ("Violin I", 0, 40, [(76, 0, 1, 90), (74, 1, 1.5, 70), (72, 1.5, 2, 72), (71, 2, 3, 100), (72, 3, 4, 95),
                         (74, 4, 5.25, 60), (76, 5.25, 6, 66), (77, 6, 8, 110), (76, 8, 9, 85), (74, 9, 10, 81),
                         (72, 10, 11, 75), (71, 11, 13, 88), (72, 13, 14, 90), (74, 14, 14.5, 64),
                         (76, 14.5, 17, 101), (74, 17, 18, 77), (72, 18, 20, 70)]),
    ("Cello", 1, 42, [(48, 0, 4, 60), (43, 4, 8, 62), (45, 8, 11, 58), (41, 11, 14, 61), (43, 14, 17, 63),
                      (48, 17, 20, 57)]),
    ("Kit", 9, 0, [(36, b, b + 0.25, 100) for b in range(0, 8)]),
    ("Viola", 2, 41, [(64, 0, 2, 50), (62, 2, 4, 52), (60, 8, 11, 54), (60, 17, 20, 49)]),
)


def beat_ticks(beat, ticks_per_beat=PROMPT_TPB):
    return int(round(beat * ticks_per_beat))


def multitrack_prompt():
    """A type 1 file with a conductor track (title, text, 6 tempos, 2 metres, key) and the tracks of
    PROMPT_TRACKS, each with a name, a program, volume and pan controllers and (the violin) an
    expression change and a pitch bend."""
    meta = [(0, mido.MetaMessage("track_name", name="Quartet sketch")),
            (0, mido.MetaMessage("text", text="a test piece")),
            (0, mido.MetaMessage("key_signature", key="C"))]
    meta += [(beat_ticks(b), tempo(bpm)) for b, bpm in PROMPT_BPMS]
    meta += [(beat_ticks(b), time_signature(n, d)) for b, n, d in PROMPT_METRES]
    end = beat_ticks(PROMPT_END_BEAT)
    tracks = [track(meta, end=end)]
    for name, channel, program, notes in PROMPT_TRACKS:
        events = [(0, mido.MetaMessage("track_name", name=name)),
                  (0, mido.Message("control_change", channel=channel, control=7, value=100 - 5 * channel)),
                  (0, mido.Message("control_change", channel=channel, control=10, value=20 + 10 * channel))]
        if channel != 9:
            events.append((0, mido.Message("program_change", channel=channel, program=program)))
        if channel == 0:
            events += [(beat_ticks(6), mido.Message("control_change", channel=0, control=11, value=90)),
                       (beat_ticks(9), mido.Message("pitchwheel", channel=0, pitch=512))]
        ticks = [(p, beat_ticks(s), beat_ticks(e), v) for p, s, e, v in notes]
        tracks.append(track(events + note_events(ticks, channel), end=end))
    return midi_file(*tracks, ticks_per_beat=PROMPT_TPB)
