"""read_midi on the cases real files carry, each against hand-computed notes."""

import struct

import mido
import numpy as np
import pretty_midi
import pytest

from midi_factory import (
    midi_file, mido_reference, note_events, note_tuples, off, on, random_tune, save, score_notes, tempo, time_signature, track,
)
from music_attn.errors import MidiError
from music_attn.music.constants import MAX_TEXT_CHARS
from music_attn.music.midi import decode_text, read_midi, write_midi


def _raw_track(body):
    return b"MTrk" + struct.pack(">L", len(body)) + body


def _raw_file(*tracks, fmt=1, division=480, ntracks=None):
    n = len(tracks) if ntracks is None else ntracks
    return b"MThd" + struct.pack(">LHHh", 6, fmt, n, division) + b"".join(tracks)


EOT = b"\x00\xff\x2f\x00"


# --------------------------------------------------------------------------- file types


def test_type0_file_reads_every_channel_of_its_single_track():
    events = note_events([(60, 0, 480, 100)], channel=0) + note_events([(64, 240, 960, 90)], channel=3)
    score = read_midi(midi_file(track(events), type=0))
    assert note_tuples(score.notes) == [(60, 0, 480, 100), (64, 240, 960, 90)]
    assert sorted(score.notes["channel"].tolist()) == [0, 3]


def test_type1_tracks_play_together_with_tempo_from_the_first_track():
    meta = track([(0, tempo(60))])  # 1 s per beat
    a = track(note_events([(60, 0, 480, 80)]))
    b = track(note_events([(67, 480, 960, 80)], channel=1))
    score = read_midi(midi_file(meta, a, b))
    assert note_tuples(score.notes) == [(60, 0, 480, 80), (67, 480, 960, 80)]
    assert score.notes["start"].tolist() == [0.0, 1.0]
    assert score.notes["track"].tolist() == [1, 2]


def test_type2_tracks_play_one_after_another():
    a = track(note_events([(60, 0, 480, 80)]), end=960)
    b = track(note_events([(62, 0, 240, 80)]))
    score = read_midi(midi_file(a, b, type=2))
    assert note_tuples(score.notes) == [(60, 0, 480, 80), (62, 960, 1200, 80)]


def test_running_status_note_ons_are_read(tmp_path):
    # one status byte 0x90, then four data pairs; velocity 0 ends the notes
    body = b"\x00\x90\x3c\x64" + b"\x00\x40\x50" + b"\x83\x60\x3c\x00" + b"\x00\x40\x00" + EOT
    path = tmp_path / "running.mid"
    path.write_bytes(_raw_file(_raw_track(body), fmt=0))
    assert note_tuples(read_midi(path).notes) == [(60, 0, 480, 100), (64, 0, 480, 80)]


@pytest.mark.parametrize("tpb", [24, 96, 480, 960, 15360])
def test_seconds_and_beats_follow_ticks_per_beat(tpb):
    events = note_events([(60, tpb // 2, 3 * tpb, 80)])
    score = read_midi(midi_file(track([(0, tempo(120))] + events), ticks_per_beat=tpb))
    n = score.notes[0]
    assert (n["start_beat"], n["end_beat"]) == (0.5, 3.0)
    assert n["start"] == pytest.approx(0.25) and n["end"] == pytest.approx(1.5)


def test_seconds_follow_a_tempo_map_across_changes_and_beats_ignore_it():
    # 120 bpm for 2 beats (1 s), then 60 bpm (1 s per beat), then 240 bpm after beat 4
    meta = [(0, tempo(120)), (960, tempo(60)), (1920, tempo(240)), (0, time_signature(3, 4)), (1440, time_signature(6, 8))]
    notes = [(60, 480, 1440, 80), (62, 1440, 2400, 80)]
    score = read_midi(midi_file(track(meta), track(note_events(notes))))
    # 480 -> 0.5 s; 1440 -> 1 + 1 = 2 s; 2400 -> 1 + 2 + 1 * 0.25 = 3.25 s
    assert score.notes["start"].tolist() == pytest.approx([0.5, 2.0])
    assert score.notes["end"].tolist() == pytest.approx([2.0, 3.25])
    assert score.notes["start_beat"].tolist() == [1.0, 3.0]
    assert score.notes["end_beat"].tolist() == [3.0, 5.0]
    assert score.time_signatures[["tick", "numerator", "denominator"]].tolist() == [(0, 3, 4), (1440, 6, 8)]
    assert score.tempos["time"].tolist() == pytest.approx([0.0, 1.0, 3.0])


def test_tick_time_and_beat_conversions_are_inverse_pairs():
    meta = [(0, tempo(100)), (700, tempo(45)), (5000, tempo(200))]
    score = read_midi(midi_file(track(meta, end=9000), ticks_per_beat=384))
    ticks = np.array([0, 1, 699, 700, 701, 4999, 5000, 8999, 20000])
    assert score.time_to_tick(score.tick_to_time(ticks)) == pytest.approx(ticks)
    assert score.beat_to_tick(score.tick_to_beat(ticks)) == pytest.approx(ticks)


def test_a_file_without_tempo_or_metre_gets_the_midi_defaults():
    score = read_midi(midi_file(track(note_events([(60, 0, 480, 80)]))))
    assert score.tempos[["tick", "tempo"]].tolist() == [(0, 500000.0)]
    assert score.time_signatures[["tick", "numerator", "denominator"]].tolist() == [(0, 4, 4)]
    assert score.notes["end"][0] == 0.5


# --------------------------------------------------------------------------- note pairing


def test_velocity_zero_note_on_is_a_note_off():
    events = [(0, on(60, 90)), (480, off(60, as_note_on=True)), (480, on(62, 70)), (720, off(62))]
    assert note_tuples(read_midi(midi_file(track(events))).notes) == [(60, 0, 480, 90), (62, 480, 720, 70)]


def test_overlapping_notes_of_one_pitch_end_first_in_first_out():
    events = [(0, on(60, 100)), (240, on(60, 50)), (480, off(60)), (960, off(60))]
    assert note_tuples(read_midi(midi_file(track(events))).notes) == [(60, 0, 480, 100), (60, 240, 960, 50)]


def test_restruck_note_written_on_before_off_at_one_tick_ends_the_old_note():
    events = [(0, on(60, 100)), (480, on(60, 50)), (480, off(60)), (960, off(60))]
    assert note_tuples(read_midi(midi_file(track(events))).notes) == [(60, 0, 480, 100), (60, 480, 960, 50)]


def test_note_off_without_note_on_is_ignored():
    events = [(0, off(60)), (100, on(60, 80)), (200, off(62)), (480, off(60)), (600, off(60))]
    assert note_tuples(read_midi(midi_file(track(events))).notes) == [(60, 100, 480, 80)]


def test_unreleased_note_ends_at_the_end_of_its_track():
    a = track([(0, on(60, 80)), (480, on(62, 80)), (720, off(62))], end=1500)
    b = track(note_events([(70, 0, 3000, 80)]))
    notes = note_tuples(read_midi(midi_file(a, b)).notes)
    assert notes == [(60, 0, 1500, 80), (62, 480, 720, 80), (70, 0, 3000, 80)]


def test_note_ending_where_it_starts_is_dropped():
    events = [(0, on(60, 80)), (0, off(60)), (10, on(61, 80)), (20, off(61))]
    assert note_tuples(read_midi(midi_file(track(events))).notes) == [(61, 10, 20, 80)]


# --------------------------------------------------------------------------- channels and controllers


def test_drums_are_left_out_unless_asked_for():
    mid = midi_file(track(note_events([(60, 0, 480, 80)]) + note_events([(36, 0, 120, 100)], channel=9)))
    assert note_tuples(read_midi(mid).notes) == [(60, 0, 480, 80)]
    with_drums = read_midi(mid, include_drums=True).notes
    assert note_tuples(with_drums) == [(36, 0, 120, 100), (60, 0, 480, 80)]
    assert with_drums["channel"].tolist() == [9, 0]


def test_program_is_the_last_change_on_the_channel_before_the_onset():
    events = [
        (0, mido.Message("program_change", program=40, channel=0)),
        (480, mido.Message("program_change", program=73, channel=0)),
        (0, mido.Message("program_change", program=5, channel=2)),
    ]
    notes = [(60, 0, 240, 80), (62, 480, 720, 80)]
    events += note_events(notes) + note_events([(50, 0, 100, 80)], channel=1) + note_events([(55, 10, 100, 80)], channel=2)
    score = read_midi(midi_file(track(events)))
    programs = {p: prog for p, prog in zip(score.notes["pitch"].tolist(), score.notes["program"].tolist())}
    assert programs == {60: 40, 62: 73, 50: 0, 55: 5}


def _pedal(value, channel=0):
    return mido.Message("control_change", control=64, value=value, channel=channel)


def test_sustain_pedal_extends_notes_until_it_is_lifted_or_the_pitch_is_struck_again():
    events = [
        (0, _pedal(127)),
        (0, on(60, 80)), (100, off(60)),  # held by the pedal until 900
        (200, on(64, 80)), (300, off(64)),  # struck again at 500: ends there
        (500, on(64, 70)), (600, off(64)),  # held until the lift at 900
        (900, _pedal(0)),
        (1000, on(67, 80)), (1100, off(67)),  # pedal up: unchanged
        (0, _pedal(127, channel=1)), (50, on(48, 80, 1)), (150, off(48, 1)),  # no lift: to the end
    ]
    mid = midi_file(track(events, end=2000))
    assert note_tuples(read_midi(mid, sustain=True).notes) == [
        (48, 50, 2000, 80), (60, 0, 900, 80), (64, 200, 500, 80), (64, 500, 900, 70), (67, 1000, 1100, 80)
    ]
    assert note_tuples(read_midi(mid).notes)[1] == (60, 0, 100, 80)


# --------------------------------------------------------------------------- files pretty_midi refuses


def test_more_than_ten_million_ticks_reads_with_right_seconds(tmp_path):
    late = 30_000_000
    path = save(midi_file(track(note_events([(60, 0, 480, 80), (72, late, late + 480, 80)]))), tmp_path / "long.mid")
    with pytest.raises(ValueError):  # the case is real: pretty_midi refuses this file
        pretty_midi.PrettyMIDI(str(path))
    score = read_midi(path)
    assert score.notes["start_tick"].tolist() == [0, late]
    assert score.notes["start"][1] == pytest.approx(late / 480 * 0.5)


def _named_file(tmp_path, raw_name, lyrics=b""):
    body = b"\x00\xff\x03" + bytes([len(raw_name)]) + raw_name if len(raw_name) < 128 else b""
    if lyrics:
        body += b"\x00\xff\x05" + _varlen(len(lyrics)) + lyrics
    body += b"\x00\x90\x3c\x40\x83\x60\x80\x3c\x00" + EOT
    path = tmp_path / "name.mid"
    path.write_bytes(_raw_file(_raw_track(body), fmt=0))
    return path


def _varlen(n):
    """The MIDI variable-length bytes of ``n`` (reference encoding, 7 bits a byte)."""
    out = [n & 0x7F]
    while n > 127:
        n >>= 7
        out.append(0x80 | (n & 0x7F))
    return bytes(out[::-1])


def test_track_names_are_utf8_when_valid_and_latin1_otherwise(tmp_path):
    utf8 = read_midi(_named_file(tmp_path, "Café".encode("utf-8")))
    assert utf8.track_names == ("Café",)
    latin = read_midi(_named_file(tmp_path, b"Cl\xe9\xff"))  # not valid UTF-8
    assert latin.track_names == ("Cl\xe9\xff",) and note_tuples(latin.notes) == [(60, 0, 480, 64)]


def test_a_megabyte_text_event_is_shortened_and_keeps_the_other_names(tmp_path):
    score = read_midi(_named_file(tmp_path, b"Violin", lyrics=b"la " * 350_000))
    assert score.track_names == ("Violin",)
    (text,) = [t for _, _, kind, t in score.texts if kind == "lyrics"]
    assert len(text) == MAX_TEXT_CHARS and text.endswith("\u2026") and text.startswith("la la")


def test_decode_text_keeps_a_utf8_character_cut_by_the_byte_limit():
    raw = "é".encode("utf-8") * 1000  # 2 bytes a character: the byte cut may split one
    text = decode_text(raw, limit=10)
    assert text == "é" * 9 + "\u2026"
    assert decode_text(b"short") == "short"


def test_hundred_thousand_notes_are_all_read(tmp_path):
    n = 100_000
    pitch = 36 + np.arange(n) % 48
    body = bytearray()
    for p in pitch.tolist():  # running status: each note is on + off 60 ticks later
        body += bytes([0, 0x90, p, 90, 60, p, 0])
    path = tmp_path / "big.mid"
    path.write_bytes(_raw_file(_raw_track(bytes(body) + EOT), fmt=0))
    notes = read_midi(path).notes
    assert len(notes) == n
    assert notes["start_tick"][-1] == 60 * (n - 1) and notes["pitch"][-1] == pitch[-1]
    assert np.all(notes["end_tick"] - notes["start_tick"] == 60)


def test_file_without_notes_gives_empty_notes():
    score = read_midi(midi_file(track([(0, tempo(90))], end=960)))
    assert len(score) == 0 and score.notes.dtype.names[0] == "pitch"


def test_unknown_chunks_are_skipped_and_data_bytes_above_127_clipped(tmp_path):
    alien = b"XFIH" + struct.pack(">L", 3) + b"abc"
    body = b"\x00\x90\x3c\xc8" + b"\x83\x60\x3c\x00" + EOT  # velocity byte 200
    path = tmp_path / "odd.mid"
    path.write_bytes(b"MThd" + struct.pack(">LHHh", 6, 0, 1, 480) + alien + _raw_track(body))
    assert note_tuples(read_midi(path).notes) == [(60, 0, 480, 127)]


# --------------------------------------------------------------------------- byte scanner vs mido


def _busy_file(seed):
    """A tune plus every other kind of event: sysex, pitch bend, aftertouch, texts, pedals, programs."""
    rng = np.random.default_rng(seed)
    mid, _ = random_tune(rng, metres=((3, 4), (6, 8), (2, 4)), voices=2, ticks_per_beat=[96, 480, 1024][seed % 3])
    extra = [
        (0, mido.MetaMessage("track_name", name="Caf\xe9")),
        (10, mido.Message("sysex", data=[1, 2, 3, 4])),
        (20, mido.Message("pitchwheel", pitch=1000, channel=2)),
        (30, mido.Message("aftertouch", value=50, channel=0)),
        (40, mido.Message("polytouch", note=60, value=50, channel=0)),
        (50, mido.Message("program_change", program=int(rng.integers(128)), channel=0)),
        (60, mido.MetaMessage("lyrics", text="la")),
        (70, mido.Message("control_change", control=64, value=127, channel=0)),
        (900, mido.Message("control_change", control=64, value=0, channel=0)),
        (950, mido.Message("control_change", control=7, value=100, channel=0)),
    ]
    mid.tracks.append(track(extra + note_events([(72, 100, 300, 70), (72, 200, 500, 60)], channel=5)))
    return mid


@pytest.mark.parametrize("seed", range(6))
def test_byte_scanner_reads_files_like_a_plain_mido_loop(tmp_path, seed):
    path = save(_busy_file(seed), tmp_path / "busy.mid")
    score, ref = read_midi(path, include_drums=True), mido_reference(path, include_drums=True)
    assert score_notes(score) == ref["notes"] and len(ref["notes"]) > 20
    assert score.tempos[["tick", "tempo"]].tolist() == [(0, 500000)] * (ref["tempos"][0][0] > 0) + ref["tempos"]
    assert score.time_signatures[["tick", "numerator", "denominator"]].tolist() == ref["signatures"]
    assert score.track_names == tuple(ref["names"].get(k, "") for k in range(len(score.track_names)))
    assert [t for _, _, kind, t in score.texts if kind == "lyrics"] == ref["lyrics"] == ["la"]
    assert (score.ticks_per_beat, score.dropped_drums) == (ref["ticks_per_beat"], 0)


def test_mido_and_pretty_midi_objects_read_like_their_file(tmp_path):
    path = save(_busy_file(1), tmp_path / "busy.mid")
    expected = score_notes(read_midi(path))
    assert score_notes(read_midi(mido.MidiFile(path))) == expected
    melody, _ = random_tune(np.random.default_rng(1), metres=((3, 4),), voices=1)  # no overlapping notes
    path = save(melody, tmp_path / "melody.mid")
    pm = pretty_midi.PrettyMIDI(str(path))  # written again by pretty_midi: one track per instrument
    assert sorted(n[:4] for n in score_notes(read_midi(pm))) == sorted(n[:4] for n in score_notes(read_midi(path)))


def test_drum_notes_left_out_are_counted(tmp_path):
    notes = note_events([(36, 0, 100, 100), (38, 100, 200, 100), (42, 0, 50, 90)], channel=9)
    path = save(midi_file(track(notes + note_events([(60, 0, 480, 80)]))), tmp_path / "drums.mid")
    assert read_midi(path).dropped_drums == mido_reference(path)["drums"] == 3
    kept = read_midi(path, include_drums=True)
    assert kept.dropped_drums == 0 and len(kept) == 4


# --------------------------------------------------------------------------- bad files


def _bad_files(tmp_path):
    good = _raw_file(_raw_track(b"\x00\x90\x3c\x40\x83\x60\x80\x3c\x00" + EOT))
    lying = good[:18] + struct.pack(">L", 500) + good[22:]
    cases = {
        "truncated.mid": good[:-6],
        "random.mid": np.random.default_rng(0).bytes(300),
        "lying.mid": lying,
        "text.mid": b"hello, this is not a MIDI file at all\n",
        "empty.mid": b"",
        "header_only.mid": good[:14],
        "smpte.mid": _raw_file(_raw_track(EOT), division=-(25 << 8 | 40)),
        "missing_tracks.mid": _raw_file(_raw_track(EOT), ntracks=3),
    }
    paths = {}
    for name, data in cases.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    (tmp_path / "folder.mid").mkdir()
    paths["folder.mid"] = tmp_path / "folder.mid"
    paths["missing.mid"] = tmp_path / "missing.mid"
    return paths


def test_every_bad_file_raises_midi_error_naming_the_file(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(MidiError) as info:
            read_midi(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and len(message) > len(str(path)) + 5, message
        assert isinstance(info.value, ValueError)


def test_bad_file_messages_say_what_is_wrong(tmp_path):
    paths = _bad_files(tmp_path)
    expected = {
        "missing.mid": "no such file",
        "folder.mid": "directory",
        "empty.mid": "empty",
        "text.mid": "not a MIDI file",
        "lying.mid": "chunk length",
        "smpte.mid": "SMPTE",
        "missing_tracks.mid": "announces 3 track",
    }
    for name, words in expected.items():
        with pytest.raises(MidiError, match=words):
            read_midi(paths[name])


# --------------------------------------------------------------------------- writing


def test_written_file_reads_back_with_the_same_notes_tempo_map_and_metre(tmp_path):
    meta = [(0, tempo(90)), (960, tempo(150)), (0, time_signature(3, 4)), (1440, time_signature(6, 8))]
    notes = [(60, 0, 480, 80), (62, 480, 1500, 90), (67, 2000, 2100, 30)]
    program = [(0, mido.Message("program_change", program=41, channel=1))]
    score = read_midi(midi_file(track(meta), track(program + note_events(notes, channel=1))))
    write_midi(tmp_path / "out.mid", score)
    again = read_midi(tmp_path / "out.mid")
    assert note_tuples(again.notes) == notes
    assert again.notes["program"].tolist() == [41, 41, 41]
    assert again.notes["start"].tolist() == pytest.approx(score.notes["start"].tolist())
    assert again.time_signatures[["tick", "numerator", "denominator"]].tolist() == [(0, 3, 4), (1440, 6, 8)]
    assert again.tempos["tempo"].tolist() == pytest.approx(score.tempos["tempo"].tolist(), rel=1e-6)


def test_failed_write_leaves_no_file(tmp_path):
    class Broken(mido.MidiFile):
        def save(self, filename=None, file=None):
            file.write(b"MThd")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_midi(tmp_path / "out.mid", Broken())
    assert list(tmp_path.iterdir()) == []
