"""Placing a continuation on the prompt file: new notes, times, tracks, channels, the marker."""

import struct

import mido
import numpy as np
import pytest

from midi_factory import midi_file, note_events, save, tempo, track
from music_attn.errors import MidiError, MusicAttnError
from music_attn.music import continuation as C
from music_attn.music import select
from music_attn.music.midi import read_midi
from music_attn.music.tokenizers import PerformanceTokenizer, RemiTokenizer

TPB = 96


def prompt_file(tmp_path, notes, *, meta=(), channel=0, program=40, name="Melody", tpb=TPB):
    """A type 1 file: a conductor track (``meta`` (tick, message) pairs) and one named track."""
    events = [(0, mido.MetaMessage("track_name", name=name)),
              (0, mido.Message("program_change", channel=channel, program=program))]
    mid = midi_file(track(list(meta)), track(events + note_events(notes, channel)), ticks_per_beat=tpb)
    return save(mid, tmp_path / "prompt.mid")


def with_tokens(tokenizer, path, tokens):
    """The prompt's ids (without EOS) followed by ``tokens`` (strings): (ids, prompt_length)."""
    prompt = tokenizer.encode(path).ids[:-1]
    return np.concatenate([prompt, tokenizer.ids_from_tokens(tokens)]), len(prompt)


def rows(notes):
    return sorted((int(n["pitch"]), float(n["start"]), float(n["end"])) for n in notes)


# --------------------------------------------------------------------------- new notes


def test_new_notes_are_exactly_the_appended_tokens_in_beats(tmp_path):
    tokenizer = RemiTokenizer(velocity_bins=0)
    path = prompt_file(tmp_path, [(60 + i, i * TPB, (i + 1) * TPB, 80) for i in range(4)])
    # a chord note at the prompt's last onset (beat 3), then a bar with two notes
    ids, n = with_tokens(tokenizer, path, ["Pitch_70", "Duration_12", "Bar", "Position_0", "Pitch_67",
                                           "Duration_24", "Position_24", "Pitch_65", "Duration_6"])
    notes, anchor = C.new_notes(tokenizer, ids, n)
    assert rows(notes) == [(65, 6.0, 6.5), (67, 4.0, 6.0), (70, 3.0, 4.0)]
    assert anchor == 3.0


def test_new_notes_are_exactly_the_appended_tokens_in_seconds(tmp_path):
    tokenizer = PerformanceTokenizer()
    path = prompt_file(tmp_path, [(60, 0, TPB, 80), (62, TPB, 2 * TPB, 80)])   # ends at 1 s (120 bpm)
    ids, n = with_tokens(tokenizer, path, ["TimeShift_50", "NoteOn_64", "TimeShift_25", "NoteOff_64"])
    notes, anchor = C.new_notes(tokenizer, ids, n)
    assert [(p, round(s, 6), round(e, 6)) for p, s, e in rows(notes)] == [(64, 1.5, 1.75)]
    assert anchor == pytest.approx(1.0)


# --------------------------------------------------------------------------- placing them


def test_beats_are_shifted_by_the_bars_the_tokens_left_out(tmp_path):
    # 20 empty bars of 4/4 before the first note: REMI keeps 16, so decoded beats are 16 early;
    # the last prompt onset is 1 tick early, off the grid: the shift is rounded to whole positions
    first = 80 * TPB
    notes = [(60, first, first + TPB, 80), (62, first + 2 * TPB - 1, first + 3 * TPB, 80)]
    path = prompt_file(tmp_path, notes)
    tokenizer = RemiTokenizer(velocity_bins=0)
    ids, n = with_tokens(tokenizer, path, ["Position_36", "Pitch_64", "Duration_6"])
    new, anchor = C.new_notes(tokenizer, ids, n)
    assert anchor == 64 + 2
    start, end = C.place_notes(new, anchor, tokenizer, read_midi(path))
    assert (start.tolist(), end.tolist()) == ([first + 3 * TPB], [first + 3 * TPB + TPB // 2])


def test_seconds_follow_the_prompts_tempo_map_after_its_end(tmp_path):
    # 60 bpm while the prompt plays (2 beats = 2 s), 150 bpm from its end on
    meta = [(0, tempo(60)), (2 * TPB, tempo(150))]
    path = prompt_file(tmp_path, [(60, 0, TPB, 80), (62, TPB, 2 * TPB, 80)], meta=meta)
    tokenizer = PerformanceTokenizer()
    ids, n = with_tokens(tokenizer, path, ["TimeShift_50", "NoteOn_64", "TimeShift_25", "NoteOff_64"])
    new, anchor = C.new_notes(tokenizer, ids, n)
    start, end = C.place_notes(new, anchor, tokenizer, read_midi(path))
    # 0.5 s and 0.75 s after the end at 150 bpm (0.4 s a beat): 1.25 and 1.875 beats
    assert (start.tolist(), end.tolist()) == ([2 * TPB + 120], [2 * TPB + 180])


def test_no_new_note_starts_before_the_prompts_last_onset(tmp_path):
    # the last onset lies 2 ticks after its grid position; a chord note there must not move earlier
    path = prompt_file(tmp_path, [(60, 0, TPB, 80), (62, TPB + 2, 2 * TPB, 80)])
    tokenizer = RemiTokenizer(velocity_bins=0)
    ids, n = with_tokens(tokenizer, path, ["Pitch_66", "Duration_12"])
    new, anchor = C.new_notes(tokenizer, ids, n)
    start, end = C.place_notes(new, anchor, tokenizer, read_midi(path))
    assert start.tolist() == [TPB + 2] and end.tolist() == [2 * TPB]


def test_anchor_counts_only_the_notes_in_the_tokenizers_pitch_range(tmp_path):
    # the last onset (beat 3) is a pitch the tokenizer cannot read: the anchor is beat 1
    path = prompt_file(tmp_path, [(60, 0, TPB, 80), (62, TPB, 2 * TPB, 80), (100, 3 * TPB, 4 * TPB, 80)])
    tokenizer = RemiTokenizer(velocity_bins=0, pitch_range=(21, 108 - 10))
    ids, n = with_tokens(tokenizer, path, ["Position_24", "Pitch_64", "Duration_12"])
    new, anchor = C.new_notes(tokenizer, ids, n)
    start, _ = C.place_notes(new, anchor, tokenizer, read_midi(path))
    assert anchor == 1.0 and start.tolist() == [2 * TPB]


# --------------------------------------------------------------------------- tracks


def three_tracks_file(tmp_path):
    events = lambda name, ch, prog, notes: track([(0, mido.MetaMessage("track_name", name=name)),
                                                   (0, mido.Message("program_change", channel=ch, program=prog))]
                                                  + note_events(notes, ch))
    return midi_file(track([(0, tempo(100))]),
                     events("Flute", 0, 73, [(72 + i % 3, i * TPB, (i + 1) * TPB, 70) for i in range(6)]),
                     events("Kit", 9, 0, [(36, i * TPB // 2, i * TPB // 2 + 10, 100) for i in range(12)]),
                     events("Bass", 1, 33, [(40, 0, 2 * TPB, 90), (43, 2 * TPB, 4 * TPB, 50)]))


def three_tracks(tmp_path):
    path = save(three_tracks_file(tmp_path), tmp_path / "three.mid")
    return C.prompt_tracks(*C.load_prompt(path))


def test_tracks_list_names_channels_programs_and_median_velocity(tmp_path):
    tracks = three_tracks(tmp_path)
    assert [(t.index, t.name, t.channel, t.program, t.n_notes, t.velocity) for t in tracks] == [
        (1, "Flute", 0, 73, 6, 70), (2, "Kit", 9, 0, 12, 100), (3, "Bass", 1, 33, 2, 70)]


def choose(tmp_path, spec=None):
    path = save(three_tracks_file(tmp_path), tmp_path / "three.mid")
    mid, score = C.load_prompt(path)
    return C.choose_track(C.prompt_tracks(mid, score), score, select.track_names(score), spec)


def test_default_track_is_the_pitched_one_with_most_notes(tmp_path):
    assert choose(tmp_path).name == "Flute"     # the drums have more


@pytest.mark.parametrize("spec, name", [("3", "Bass"), (3, "Bass"), ("Bass", "Bass"), ("bass", "Bass"),
                                        ("2", "Kit")])
def test_track_by_index_or_name(tmp_path, spec, name):
    assert choose(tmp_path, spec).name == name


@pytest.mark.parametrize("spec", ["0", "7", "Oboe"])
def test_unknown_track_names_the_tracks_there_are(tmp_path, spec):
    with pytest.raises(MusicAttnError, match="'Flute'.*'Kit'.*'Bass'"):
        choose(tmp_path, spec)


def test_melody_reading_is_the_top_voice_of_the_track_and_drums_are_counted(tmp_path):
    chords = [(60, 0, 2 * TPB, 80), (67, 0, TPB, 80), (64, TPB, 2 * TPB, 80), (62, 2 * TPB, 3 * TPB, 80)]
    piano = track([(0, mido.MetaMessage("track_name", name="Piano"))] + note_events(chords, 0))
    kit = track(note_events([(36, 0, 10, 100), (38, TPB, TPB + 10, 100)], 9))
    path = save(midi_file(track([]), piano, kit), tmp_path / "piano.mid")
    mid, score = C.load_prompt(path)
    target = C.prompt_tracks(mid, score)[0]
    read, dropped = C.prompt_reading(score, target, melody=True)
    # the skyline: G4 over C4, then E4 (C4 still sounds but is lower), then D4
    assert read.notes["pitch"].tolist() == [67, 64, 62] and dropped == 0
    read, dropped = C.prompt_reading(score, target)
    assert sorted(read.notes["pitch"].tolist()) == [60, 62, 64, 67] and dropped == 2
    read, dropped = C.prompt_reading(score, target, drums=True)
    assert len(read.notes) == 6 and dropped == 0


# --------------------------------------------------------------------------- the file


def build(path, start, end, pitches, *, target=0, programs=None):
    mid, score = C.load_prompt(path)
    tracks = C.prompt_tracks(mid, score)
    info = tracks[target]
    programs = np.full(len(pitches), info.program) if programs is None else np.array(programs)
    targets, which = C.route(mid, tracks, info, programs)
    return C.continuation_file(mid, score, score, targets, which, np.array(start), np.array(end),
                               np.array(pitches), np.full(len(pitches), 64))


def test_marker_at_the_prompts_end_or_at_an_earlier_first_new_note(tmp_path):
    path = prompt_file(tmp_path, [(60, 0, TPB, 80), (62, TPB, 3 * TPB, 80)])
    assert build(path, [4 * TPB], [5 * TPB], [64]).start_tick == 3 * TPB
    result = build(path, [2 * TPB], [5 * TPB], [64])
    assert result.start_tick == 2 * TPB
    markers = [m for m in result.midi.tracks[-1] if m.type == "marker"]
    assert [m.text for m in markers] == [C.MARKER_TEXT]


def test_program_change_that_would_alter_a_later_prompt_note_moves_to_a_free_channel(tmp_path):
    # Flute (program 73) and then Horn (program 60) share channel 0; the flute is continued at beat 2
    flute = track([(0, mido.Message("program_change", channel=0, program=73))]
                  + note_events([(72, 0, 2 * TPB, 80)], 0))
    horn = track([(2 * TPB, mido.Message("program_change", channel=0, program=60))]
                 + note_events([(55, 2 * TPB, 4 * TPB, 80)], 0))
    path = save(midi_file(track([]), flute, horn), tmp_path / "shared.mid")
    result = build(path, [2 * TPB], [3 * TPB], [74])
    out = save(result.midi, tmp_path / "out.mid")
    notes = read_midi(out).notes
    assert [(int(n["pitch"]), int(n["program"])) for n in notes] == [(72, 73), (55, 60), (74, 73)]
    assert notes["channel"][2] not in (0, 9)


def test_new_note_doubling_a_sounding_note_on_its_channel_is_left_out(tmp_path):
    # 60 doubles the prompt's sounding 60; the second 64 starts while the first new 64 sounds
    path = prompt_file(tmp_path, [(60, 0, 4 * TPB, 80)])
    result = build(path, [TPB, TPB, 2 * TPB, 3 * TPB, 4 * TPB], [2 * TPB, 3 * TPB, 3 * TPB, 4 * TPB, 5 * TPB],
                   [60, 64, 64, 64, 60])
    notes = read_midi(save(result.midi, tmp_path / "out.mid")).notes
    assert result.doubled == 2 and result.n_notes == 3
    assert sorted((int(n["pitch"]), int(n["start_tick"]), int(n["end_tick"])) for n in notes) == [
        (60, 0, 4 * TPB), (60, 4 * TPB, 5 * TPB), (64, TPB, 3 * TPB), (64, 3 * TPB, 4 * TPB)]


def test_type_2_prompt_is_refused(tmp_path):
    mid = midi_file(track(note_events([(60, 0, TPB, 80)])), type=2)
    path = save(mid, tmp_path / "t2.mid")
    with pytest.raises(ValueError, match="type 2"):
        build(path, [TPB], [2 * TPB], [62])


def test_notes_of_other_programs_go_to_the_tracks_of_those_programs_or_to_new_ones(tmp_path):
    # Flute (73, channel 0) continued; a Bass (33) note goes to the bass track's channel and
    # program, a Trumpet (56) note, which the prompt lacks, to a new track on a free channel
    path = save(three_tracks_file(tmp_path), tmp_path / "three.mid")
    # and a drum note (program -1) to the drum track's channel
    result = build(path, [6 * TPB, 6 * TPB, 7 * TPB, 7 * TPB], [7 * TPB, 8 * TPB, 8 * TPB, 7 * TPB + 10],
                   [76, 40, 70, 38], programs=[73, 33, 56, -1])
    names = [[m.name for m in result.midi.tracks[i] if m.type == "track_name"][0] for i in result.tracks]
    assert result.tracks == (4, 5, 6, 7)
    assert names == ["Flute (continued)", "Kit (continued)", "Bass (continued)", "Trumpet (continued)"]
    notes = read_midi(save(result.midi, tmp_path / "out.mid"), include_drums=True).notes
    new = notes[notes["track"] >= 4]
    assert sorted(zip(new["pitch"].tolist(), new["program"].tolist(), new["channel"].tolist())) == [
        (38, 0, 9), (40, 33, 1), (70, 56, 2), (76, 73, 0)]
    markers = [i for i in result.tracks if any(m.type == "marker" for m in result.midi.tracks[i])]
    assert markers == [4]


def test_prompt_copy_is_what_the_reader_sees_unknown_chunks_skipped_and_nothing_after_end_of_track(tmp_path):
    track_bytes = bytes([0x00, 0x90, 60, 64, 0x60, 0x80, 60, 0, 0x00, 0xFF, 0x2F, 0x00,    # C4, end of track
                         0x00, 0x90, 62, 64, 0x60, 0x80, 62, 0])                          # D4 after it
    data = (b"MThd" + struct.pack(">LHHh", 6, 1, 1, TPB) + b"XFIH" + struct.pack(">L", 3) + b"abc"
            + b"MTrk" + struct.pack(">L", len(track_bytes)) + track_bytes)
    path = tmp_path / "odd.mid"
    path.write_bytes(data)
    mid, score = C.load_prompt(path)
    assert [m.type for m in mid.tracks[0]] == ["note_on", "note_off", "end_of_track"]
    assert score.notes["pitch"].tolist() == [60]


def test_prompt_that_is_not_midi_is_a_midi_error_naming_it(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not midi")
    with pytest.raises(MidiError, match="notes.txt"):
        C.load_prompt(path)


def test_a_new_instrument_stays_on_the_continued_track_when_no_channel_is_free(tmp_path):
    every_channel = track([(0, mido.Message("control_change", channel=c, control=7, value=100)) for c in range(16)])
    mid = three_tracks_file(tmp_path)
    mid.tracks.append(every_channel)
    path = save(mid, tmp_path / "full.mid")
    result = build(path, [6 * TPB, 6 * TPB], [7 * TPB, 7 * TPB], [76, 70], programs=[73, 56])
    assert len(result.tracks) == 1 and result.n_notes == 2


def test_a_four_voice_grid_continues_each_voice_on_its_own_track(tmp_path):
    """Grid tokens continue all four voices: each new note goes to a copy of the track that
    was read as its voice (tracks stored bass first, here), never all onto one track."""
    from music_attn.music.tokenizers import GridTokenizer

    tok = GridTokenizer()
    voice = lambda name, ch, pitch: track([(0, mido.MetaMessage("track_name", name=name))]
                                          + note_events([(pitch, 0, 4 * TPB, 80)], ch))
    path = save(midi_file(track([(0, tempo(100))]), voice("Bass", 0, 48), voice("Soprano", 1, 72),
                          voice("Tenor", 2, 55), voice("Alto", 3, 64), ticks_per_beat=TPB),
                tmp_path / "choral.mid")
    new = {"Soprano": 74, "Alto": 65, "Tenor": 57, "Bass": 43}       # one new step, S A T B order
    ids, n = with_tokens(tok, path, [f"Pitch_{new[v]}" for v in ("Soprano", "Alto", "Tenor", "Bass")])
    mid, score = C.load_prompt(path)
    tracks = C.prompt_tracks(mid, score)
    result = C.continue_prompt(mid, score, score, tracks, tracks[0], tok, ids, n)
    written = read_midi(save(result.midi, tmp_path / "out.mid")).notes
    names = {i: [m.name for m in result.midi.tracks[i] if m.type == "track_name"][0] for i in result.tracks}
    got = {names[t]: p for t, p in zip(written["track"].tolist(), written["pitch"].tolist()) if t in names}
    assert got == {f"{v} (continued)": p for v, p in new.items()}
