"""`music-attn tokenize` and `music-attn decode`: output, JSON round trip, one-line errors."""

import json

import pretty_midi
import pytest

from midi_factory import midi_file, note_events, save, tempo, track
from music_attn.cli import main

NOTES = [(60, 0, 480, 80), (64, 480, 960, 80), (67, 960, 1920, 80)]  # on the grid, 120 bpm


@pytest.fixture
def tune(tmp_path):
    return save(midi_file(track([(0, tempo(120))]), track(note_events(NOTES))), tmp_path / "tune.mid")


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tokenize_prints_a_header_and_the_tokens(capsys, tune):
    code, out, err = _run(capsys, "tokenize", tune)
    header, tokens = out.splitlines()
    assert code == 0 and err == ""
    assert header == f"# {tune}: 3 notes, {len(tokens.split())} tokens"
    words = tokens.split()
    assert words[0] == "BOS" and words[-1] == "EOS"
    assert [w for w in words if w.startswith("Pitch_")] == ["Pitch_60", "Pitch_64", "Pitch_67"]


@pytest.mark.parametrize("kind", ["remi", "performance"])
def test_json_from_tokenize_decodes_back_to_the_same_notes(capsys, tune, tmp_path, kind):
    code, out, _ = _run(capsys, "tokenize", tune, "--json", "--tokenizer", kind)
    doc = json.loads(out)
    assert code == 0 and doc["tokenizer"]["type"] == kind and len(doc["tokens"]) == len(doc["ids"])
    (tmp_path / "tokens.json").write_text(out)
    code, out, _ = _run(capsys, "decode", tmp_path / "tokens.json", "-o", tmp_path / "out.mid")
    assert code == 0 and "3 notes" in out and "0 skipped" in out
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "out.mid"))
    got = sorted((n.pitch, round(n.start, 3), round(n.end, 3)) for i in midi.instruments for n in i.notes)
    assert got == [(60, 0.0, 0.5), (64, 0.5, 1.0), (67, 1.0, 2.0)]


def test_stats_counts_notes_and_tokens(capsys, tune):
    _, out, _ = _run(capsys, "tokenize", tune, "--json", "--stats")
    doc = json.loads(out)
    assert doc["stats"]["notes"] == 3 and doc["stats"]["tokens"] == len(doc["tokens"])
    assert doc["stats"]["seconds"] == pytest.approx(2.0)
    code, out, _ = _run(capsys, "tokenize", tune, tune, "--stats")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["file", "notes", "tokens", "tok/note", "seconds"]
    assert lines[1].split()[1:3] == ["3", str(doc["stats"]["tokens"])]
    assert lines[-1].split()[:3] == ["total", "6", str(2 * doc["stats"]["tokens"])]


def test_bad_file_among_good_ones_is_reported_after_the_good_ones_with_exit_code_2(capsys, tmp_path, tune):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x01\x00\x00\x90")
    code, out, err = _run(capsys, "tokenize", tune, bad, "--stats")
    assert code == 2
    assert [line.split()[0] for line in out.splitlines()] == ["file", str(tune)]
    assert err.startswith(f"error: {bad}: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"tokens": ["BOS", "Bar", "Pitch_999"]}', "unknown token 'Pitch_999'"),
        ("{not json", "not valid JSON"),
        ('{"tokenizer": {"type": "morse"}, "tokens": ["BOS"]}', "morse"),
        ('[{"tokens": ["BOS"]}, {"tokens": ["BOS"]}]', "expected one object"),
    ],
    ids=["unknown_token", "bad_json", "unknown_tokenizer", "two_sequences"],
)
def test_decode_of_bad_tokens_is_one_error_line_and_writes_nothing(capsys, tmp_path, content, words):
    (tmp_path / "t.json").write_text(content)
    code, out, err = _run(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "out.mid")
    assert code == 2 and words in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.mid").exists()
