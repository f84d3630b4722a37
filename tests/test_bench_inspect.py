"""Tests of music_attn.bench.inspect: the generated pieces and one measured row."""

import mido
import pytest

from music_attn.bench.inspect import VOICES, make_piece, measure
from music_attn.music.midi import read_midi


def test_generated_pieces_have_the_asked_notes_in_named_voices(tmp_path):
    path = tmp_path / "piece.mid"
    assert make_piece(path, 1001) == 1001
    score = read_midi(path)
    assert len(score.notes) == 1001
    assert sorted(set(score.notes["track"].tolist())) == list(range(VOICES))
    names = [m.name for t in mido.MidiFile(path).tracks for m in t if m.type == "track_name"]
    assert names == [f"voice {v + 1}" for v in range(VOICES)]


@pytest.mark.slow
def test_a_measured_row_counts_the_piece_and_its_outputs(tmp_path):
    path = tmp_path / "piece.mid"
    make_piece(path, 120)
    row = measure(path, tmp_path)
    assert "error" not in row, row
    assert row["notes"] == 120 and row["tokens"] > 120 and row["peak_mb"] > 10
    assert row["json_mb"] == pytest.approx((tmp_path / "piece.json").stat().st_size / 1e6)
