"""Tests of music_attn.music.select (bars, tracks, top voice, passages) and TokenSequence.slice_bars,
on hand-built multi-track files."""

import mido
import numpy as np
import pytest

from midi_factory import midi_file, note_events, time_signature, track
from music_attn.errors import MusicAttnError, TokenizerError
from music_attn.music import select
from music_attn.music.midi import read_midi
from music_attn.music.tokenizers import RemiTokenizer

Q = 480          # ticks per quarter note


def _named(name, events, end=None):
    return track([(0, mido.MetaMessage("track_name", name=name))] + events, end=end)


def quartet(tmp_path):
    """Conductor (3/4, then 2/4 from bar 3), a violin line and a cello with a held note and a high note."""
    conductor = track([(0, time_signature(3, 4)), (6 * Q, time_signature(2, 4))])
    violin = _named("Violin", note_events([(72, 0, Q, 80), (74, Q, 2 * Q, 80), (77, 4 * Q, 5 * Q, 80),
                                           (71, 6 * Q, 7 * Q, 80), (72, 7 * Q, 8 * Q, 80)]))
    cello = _named("Cello", note_events([(48, 0, 4 * Q, 80), (76, 2 * Q, 3 * Q, 80), (79, 3 * Q, 5 * Q, 80)],
                                        channel=1))
    path = tmp_path / "quartet.mid"
    midi_file(conductor, violin, cello).save(path)
    return path


def test_bars_and_beats_count_from_one_and_follow_a_metre_change(tmp_path):
    score = read_midi(quartet(tmp_path))
    bar, beat = select.bars_and_beats(score.notes, score.time_signatures, score.ticks_per_beat)
    got = {(int(p), int(t)): (int(b), float(x)) for p, t, b, x in
           zip(score.notes["pitch"], score.notes["start_tick"], bar, beat)}
    # 3/4: bars at 0 and 3Q; the 2/4 change at 6Q starts bar 3; 7Q is its second beat, 8Q bar 4
    assert got[(72, 0)] == (1, 1.0) and got[(74, Q)] == (1, 2.0) and got[(76, 2 * Q)] == (1, 3.0)
    assert got[(79, 3 * Q)] == (2, 1.0) and got[(77, 4 * Q)] == (2, 2.0)
    assert got[(71, 6 * Q)] == (3, 1.0) and got[(72, 7 * Q)] == (3, 2.0)


def test_a_metre_change_inside_a_bar_starts_a_new_bar_and_beats_count_in_eighths():
    notes = np.zeros(3, dtype=[("start_tick", np.int64)])
    notes["start_tick"] = [0, Q, 2 * Q + Q // 2]
    sigs = np.array([(0, 4, 4), (Q, 6, 8)], dtype=[("tick", np.int64), ("numerator", np.int16),
                                                  ("denominator", np.int16)])
    bar, beat = select.bars_and_beats(notes, sigs, Q)
    assert bar.tolist() == [1, 2, 2]
    np.testing.assert_allclose(beat, [1.0, 1.0, 4.0])       # 1.5 quarters into 6/8 = the 4th eighth


def test_tracks_are_kept_by_number_or_by_name_and_a_missing_one_is_named(tmp_path):
    path = quartet(tmp_path)
    score = read_midi(path)
    names = select.track_names(score)
    assert names == {1: "Violin", 2: "Cello"}
    assert sorted(select.keep_tracks(score, [1], names).notes["pitch"].tolist()) == [71, 72, 72, 74, 77]
    assert sorted(select.keep_tracks(score, ["cello"], names).notes["pitch"].tolist()) == [48, 76, 79]
    assert len(select.keep_tracks(score, ["Violin", 2], names).notes) == len(score.notes)
    with pytest.raises(MusicAttnError, match="Violin"):
        select.keep_tracks(score, ["viola"], names)
    assert len(score.notes) == 8                             # the score itself is untouched


def test_the_top_voice_is_the_highest_sounding_note_at_each_onset(tmp_path):
    score = read_midi(quartet(tmp_path))
    top = select.top_voice(score).notes
    # 0: 72 over the cello's 48; 2Q: the cello's 76 is the highest; 4Q: the violin's 77 starts while
    # the cello's 79 (3Q..5Q) still sounds, so it is not the top voice
    assert list(zip(top["pitch"].tolist(), (top["start_tick"] // Q).tolist())) == [
        (72, 0), (74, 1), (76, 2), (79, 3), (71, 6), (72, 7)]


def test_a_passage_is_the_notes_starting_in_it_and_its_tokens_start_at_the_bar_line():
    bar = np.array([1, 1, 2, 2, 3])
    start = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    assert select.passage_mask(bar, start, bars=(2, 2)).tolist() == [False, False, True, True, False]
    assert select.passage_mask(bar, start, seconds=(0.5, 2.0)).tolist() == [False, True, True, True, False]
    labels = np.array([-1, -1, -1, 0, 0, -1, 1, 1, -1, -1, 2, 2, -1, 3, 3, -1])
    chosen = np.array([False, False, True, True])
    assert select.token_range(labels, chosen) == (8, 15)     # back over Bar and Position, up to note 3's end
    with pytest.raises(MusicAttnError):
        select.token_range(labels, np.zeros(4, bool))


@pytest.mark.parametrize("text, want", [("9:16", (9, 16)), ("3", (3, 3))])
def test_bars_are_parsed_from_one(text, want):
    assert select.parse_bars(text) == want


@pytest.mark.parametrize("text", ["0:4", "5:2", "a:b", "1:2:3", ""])
def test_bad_bar_ranges_are_refused(text):
    with pytest.raises(ValueError):
        select.parse_bars(text)


def test_token_sequences_slice_by_bar_tokens(tmp_path):
    tok = RemiTokenizer(velocity_bins=0)
    seq = tok.encode(quartet(tmp_path))
    part = seq.slice_bars(2, 3)
    tokens = part.tokens
    assert tokens[0] == "Bar" and tokens.count("Bar") == 2 and "EOS" not in tokens
    assert sorted(part.notes["pitch"].tolist()) == [71, 72, 77, 79]
    for t, label in enumerate(part.note_of_token.tolist()):       # each kept token still names its note
        if label >= 0 and tokens[t].startswith("Pitch_"):
            assert tokens[t] == f"Pitch_{part.notes['pitch'][label]}"
    with pytest.raises(TokenizerError):
        seq.slice_bars(9, 9)
