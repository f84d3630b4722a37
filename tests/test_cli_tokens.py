"""`music-attn tokenize` and `music-attn decode`: output, JSON round trip, one-line errors."""

import json
import os

import mido
import pretty_midi
import pytest

from midi_factory import midi_file, mido_reference, note_events, save, tempo, track
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


def test_a_bad_midi_file_gets_its_error_line_and_the_good_ones_their_output(capsys, tmp_path, tune):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x01\x00\x00\x90")
    code, out, err = _run(capsys, "tokenize", tune, bad)
    assert code == 2 and out.startswith(f"# {tune}: 3 notes") and str(bad) not in out
    assert err.startswith(f"error: {bad}: ") and err.count("\n") == 1 and "Traceback" not in err
    code, out, err = _run(capsys, "tokenize", bad, tune, "--stats")
    rows = out.splitlines()
    assert code == 2 and len(rows) == 2 and rows[1].split()[:2] == [str(tune), "3"]
    assert err.startswith(f"error: {bad}: ") and err.count("\n") == 1


def test_json_of_several_files_decodes_item_by_item_and_marks_the_bad_one(capsys, tmp_path, tune):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi")
    code, out, _ = _run(capsys, "tokenize", tune, bad, "--json")
    docs = json.loads(out)
    assert code == 2 and [d["file"] for d in docs] == [str(tune), str(bad)] and "error" in docs[1]
    (tmp_path / "both.json").write_text(out)
    code, _, err = _run(capsys, "decode", tmp_path / "both.json", "-o", tmp_path / "x.mid")
    assert code == 2 and "--item 1..2" in err and not (tmp_path / "x.mid").exists()
    code, out, _ = _run(capsys, "decode", tmp_path / "both.json", "--item", "1", "-o", tmp_path / "x.mid")
    assert code == 0 and "3 notes" in out
    code, _, err = _run(capsys, "decode", tmp_path / "both.json", "--item", "2", "-o", tmp_path / "y.mid")
    assert code == 2 and "bad.mid" in err and "holds no tokens" in err and not (tmp_path / "y.mid").exists()


def test_decode_reads_a_bare_list_of_ids_or_of_token_strings(capsys, tmp_path, tune):
    _, out, _ = _run(capsys, "tokenize", tune, "--json")
    doc = json.loads(out)
    for name, content in (("ids.json", doc["ids"]), ("tokens.json", doc["tokens"])):
        (tmp_path / name).write_text(json.dumps(content))
        code, out, err = _run(capsys, "decode", tmp_path / name, "-o", tmp_path / f"{name}.mid")
        assert code == 0 and err == "" and "3 notes" in out and "0 skipped" in out
    (tmp_path / "far.json").write_text("[1, 5, 99999999]")
    code, _, err = _run(capsys, "decode", tmp_path / "far.json", "-o", tmp_path / "far.mid")
    assert code == 2 and "99999999 outside the vocabulary" in err


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"tokens": ["BOS", "Bar", "Pitch_999"]}', "unknown token 'Pitch_999'"),
        ("{not json", "not valid JSON"),
        ('{"tokenizer": {"type": "morse"}, "tokens": ["BOS"]}', "morse"),
        ('[{"tokens": ["BOS"]}, {"tokens": ["BOS"]}]', "pick one with --item 1..2"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        ('{"ids": [1, 2.5]}', "list of integers"),
    ],
    ids=["unknown_token", "bad_json", "unknown_tokenizer", "two_sequences", "deep_nesting", "float_id"],
)
def test_decode_of_bad_tokens_is_one_error_line_and_writes_nothing(capsys, tmp_path, content, words):
    (tmp_path / "t.json").write_text(content)
    code, out, err = _run(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "out.mid")
    assert code == 2 and words in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.mid").exists()


def test_decode_writes_the_bpm_it_is_given_and_says_what_it_assumed(capsys, tune, tmp_path):
    _, out, _ = _run(capsys, "tokenize", tune, "--json")
    (tmp_path / "tokens.json").write_text(out)
    code, out, _ = _run(capsys, "decode", tmp_path / "tokens.json", "-o", tmp_path / "out.mid", "--bpm", "90")
    assert code == 0 and "assumed tempo 90 bpm" in out
    tempos = [m.tempo for t in mido.MidiFile(tmp_path / "out.mid").tracks for m in t if m.type == "set_tempo"]
    assert tempos == [mido.bpm2tempo(90)]
    code, _, err = _run(capsys, "decode", tmp_path / "tokens.json", "-o", tmp_path / "x.mid", "--bpm", "nan")
    assert code == 2 and "--bpm" in err and err.count("\n") == 1 and not (tmp_path / "x.mid").exists()


def test_tempo_and_program_tokens_bring_back_tempo_and_instrument(capsys, tmp_path):
    meta = [(0, tempo(96)), (0, mido.Message("program_change", program=40, channel=0))]
    path = save(midi_file(track(meta + note_events(NOTES))), tmp_path / "violin.mid")
    code, out, _ = _run(capsys, "tokenize", path, "--json", "--tempo", "--programs")
    (tmp_path / "tokens.json").write_text(out)
    code, out, _ = _run(capsys, "decode", tmp_path / "tokens.json", "-o", tmp_path / "out.mid")
    assert code == 0 and "assumed" not in out
    back = mido_reference(tmp_path / "out.mid")
    assert [t for _, t in back["tempos"]] == [mido.bpm2tempo(96)]
    assert [(n[0], n[-1]) for n in back["notes"]] == [(60, 40), (64, 40), (67, 40)]
    assert list(back["names"].values()) == ["Violin"]


def test_tokenize_says_how_many_drum_notes_it_left_out_and_drums_keeps_them(capsys, tmp_path):
    drums = note_events([(36, 0, 240, 100), (38, 240, 480, 100)], channel=9)
    path = save(midi_file(track(note_events(NOTES) + drums)), tmp_path / "band.mid")
    code, out, err = _run(capsys, "tokenize", path, "--stats")
    assert code == 0 and err == f"note: {path}: 2 drum notes left out (--drums keeps them)\n"
    assert out.splitlines()[1].split()[1] == "3"
    code, out, err = _run(capsys, "tokenize", path, "--stats", "--drums")
    assert code == 0 and err == "" and out.splitlines()[1].split()[1] == "5"


@pytest.mark.parametrize("content, words", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"tokenizer": {"type": "remi", "positions_per_beat": 1e9}, "ids": [1, 2]}', "positions_per_beat"),
    ('{"tokenizer": {"type": "performance", "time_step": NaN}, "ids": [1, 2]}', "time_step"),
    ('{"ids": [1, 1e400]}', "integers"),
    ('[1, 100000000000000000000000000000]', "outside the vocabulary"),
], ids=["deep", "huge_setting", "nan_setting", "infinite_id", "huge_id"])
def test_hostile_token_json_is_one_error_line(capsys, tmp_path, content, words):
    (tmp_path / "t.json").write_text(content)
    code, out, err = _run(capsys, "decode", tmp_path / "t.json", "-o", tmp_path / "out.mid")
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "out.mid").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_token_json_that_is_a_fifo_or_a_folder_is_refused(capsys, tmp_path):
    os.mkfifo(tmp_path / "pipe.json")
    for path, what in ((tmp_path / "pipe.json", "FIFO"), (tmp_path, "directory")):
        code, _, err = _run(capsys, "decode", path, "-o", tmp_path / "out.mid")
        assert code == 2 and f"{path}: is a {what}" in err and err.count("\n") == 1


def test_generate_and_inspect_say_how_many_drum_notes_they_left_out(capsys, tmp_path):
    drums = note_events([(36, 0, 240, 100), (38, 240, 480, 100)], channel=9)
    path = save(midi_file(track(note_events(NOTES) + drums)), tmp_path / "band.mid")
    code, _, err = _run(capsys, "generate", "--prompt", path, "--tokens", "3", "-o", tmp_path / "gen.mid")
    assert code == 0 and err == f"note: {path}: 2 drum notes left out (--drums keeps them); the output keeps them\n"
    code, _, err = _run(capsys, "inspect", path, "-o", tmp_path / "page.html")
    assert code == 0 and err == f"note: {path}: 2 drum notes left out (--drums keeps them)\n"
    code, out, err = _run(capsys, "inspect", path, "-o", tmp_path / "page.html", "--drums")
    assert code == 0 and err == "" and "5 notes" in out
