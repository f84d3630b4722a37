"""The demo and the `inspect` / `demo` subcommands: files written, MIDI that opens, clean errors."""

import json

import numpy as np
import pytest

from music_attn.runtime.checkpoint import save_checkpoint, shipped_model_path
from music_attn.demo import N_BARS, run_demo
from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers import RemiTokenizer

needs_shipped_model = pytest.mark.skipif(not shipped_model_path().is_file(),
                                         reason="the shipped model (music_attn/assets/model.npz) is absent")


def _melody(path, n_notes=24, track="Fiddle"):
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=100)
    inst = pretty_midi.Instrument(program=40, name=track)
    steps = [0, 2, 4, 5, 7, 5, 4, 2]
    for k in range(n_notes):
        start = k * 0.3
        inst.notes.append(pretty_midi.Note(80, 62 + steps[k % 8], start, start + 0.28))
    pm.instruments.append(inst)
    pm.write(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_model():
    tokenizer = RemiTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=96)
    return init_model(config, np.random.default_rng(0), tokenizer=tokenizer)


def _check_outputs(result, lines, n_melody_notes):
    import mido
    import pretty_midi

    for path in (result.page, result.json, result.midi):
        assert path.is_file() and path.stat().st_size > 0
    assert result.page.stat().st_size < 2_000_000
    assert len(mido.MidiFile(result.midi).tracks) >= 1
    notes = [n for inst in pretty_midi.PrettyMIDI(str(result.midi)).instruments for n in inst.notes]
    assert len(notes) == n_melody_notes + len(result.continuation)
    assert all(start >= max(m.start for m in notes[:n_melody_notes]) - 1e-6 for start in result.continuation["start"])
    text = "\n".join(lines)
    assert "First " in text and result.maps.tokens[1] in text
    assert "final cadence" in text and str(result.page) in text and str(result.midi) in text
    assert json.loads(result.json.read_text(encoding="utf-8"))["notes"][0]["name"] == result.maps.note_names[0]


@pytest.mark.slow
def test_demo_runs_on_a_given_model_and_melody(tmp_path, tiny_model):
    lines = []
    melody = _melody(tmp_path / "scale.mid")
    result = run_demo(tmp_path / "out", seed=1, model=tiny_model, melody=melody, echo=lines.append)
    _check_outputs(result, lines, 24)
    assert result.maps.n_notes == 24 and result.maps.texts["tracks"] == ["", "Fiddle"]


@pytest.mark.slow
def test_the_final_cadence_line_names_the_most_focused_heads_top_earlier_notes(tmp_path, tiny_model):
    lines = []
    result = run_demo(tmp_path, model=tiny_model, melody=_melody(tmp_path / "m.mid"), echo=lines.append)
    maps = result.maps
    ent = maps.head_entropy()
    layer, head = np.unravel_index(np.argmin(ent), ent.shape)
    line = next(x for x in lines if "final cadence" in x)
    assert f"layer {layer + 1}, head {head + 1}" in line
    row = maps.note_attention[layer, head, -1, :-1]
    best = int(np.argmax(row))
    assert f"{maps.note_names[best]} (note {best + 1}," in line


@pytest.mark.slow
@needs_shipped_model
def test_demo_on_the_shipped_model_writes_page_png_and_midi(tmp_path):
    pytest.importorskip("matplotlib")
    lines = []
    result = run_demo(tmp_path, echo=lines.append)
    _check_outputs(result, lines, result.maps.n_notes)
    assert result.png.read_bytes()[:4] == b"\x89PNG"
    assert f"({N_BARS} bars" in "\n".join(lines)


@pytest.mark.slow
@needs_shipped_model
def test_demo_subcommand_writes_into_the_given_folder(tmp_path, capsys):
    from music_attn.cli import main

    assert main(["demo", "-o", str(tmp_path / "d"), "--seed", "3"]) == 0
    assert any(p.suffix == ".html" for p in (tmp_path / "d").iterdir())
    assert "final cadence" in capsys.readouterr().out


def test_inspect_subcommand_writes_html_png_and_json(tmp_path, tiny_model, capsys, monkeypatch):
    from music_attn.cli import main

    save_checkpoint(tmp_path / "m.npz", tiny_model)
    melody = _melody(tmp_path / "tune.mid", n_notes=40)     # longer than max_len: read in windows
    monkeypatch.chdir(tmp_path)
    code = main(["inspect", str(melody), "-m", str(tmp_path / "m.npz"), "--json", "maps.json", "--png", "maps.png"])
    assert code == 0
    out = capsys.readouterr().out
    assert "tune_attention.html" in out and "96 tokens at a time" in out
    assert (tmp_path / "tune_attention.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert len(json.loads((tmp_path / "maps.json").read_text(encoding="utf-8"))["notes"]) == 40
    assert (tmp_path / "maps.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("content", [None, b"", b"not a midi file at all"], ids=["missing", "empty", "garbage"])
def test_inspect_on_a_bad_file_is_a_one_line_error_and_writes_nothing(tmp_path, tiny_model, capsys, content):
    from music_attn.cli import main

    save_checkpoint(tmp_path / "m.npz", tiny_model)
    bad = tmp_path / "bad.mid"
    if content is not None:
        bad.write_bytes(content)
    code = main(["inspect", str(bad), "-m", str(tmp_path / "m.npz"), "-o", str(tmp_path / "o.html")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "bad.mid" in err
    assert not (tmp_path / "o.html").exists()
