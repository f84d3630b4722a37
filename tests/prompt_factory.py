"""A multi-track prompt for the continuation tests, built with mido.

``multitrack_prompt()``: a conductor track (title, text, key, 6 tempos, a
change of metre) and four named tracks with programs and controllers, one of
them drums; the constants describe it for the tests' own expectations.
"""

import mido

from midi_factory import midi_file, note_events, tempo, time_signature, track


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
