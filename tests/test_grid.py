"""The four-voice grid tokenizer: grid tokens, note alignment, MIDI in and out, grammar, saving."""

import numpy as np
import pretty_midi
import pytest

from music_attn import GridTokenizer, TokenizerError, init_model, load_model, load_tokenizer, save_checkpoint
from music_attn.core.model import ModelConfig
from music_attn.music.tokenizers import Tokenizer

# Two beats of a cadence: soprano holds 72 then steps to 71 (repeated), alto rests once.
GRID = np.array([
    [72, 67, 64, 48],
    [72, 67, 64, 48],
    [71, -1, 62, 43],
    [71, 65, 62, 43],
])


@pytest.fixture(scope="module")
def tok():
    return GridTokenizer()


def test_vocabulary_is_specials_then_pitches_of_the_range_then_rest(tok):
    assert tok.vocab[:3] == ["PAD", "BOS", "EOS"]
    assert tok.vocab[3:] == [f"Pitch_{p}" for p in range(36, 82)] + ["Rest"]
    assert tok.vocab_size == 50


def test_encode_grid_reads_soprano_alto_tenor_bass_step_by_step_after_bos(tok):
    seq = tok.encode_grid(GRID)
    assert seq.tokens == ["BOS",
                          "Pitch_72", "Pitch_67", "Pitch_64", "Pitch_48",
                          "Pitch_72", "Pitch_67", "Pitch_64", "Pitch_48",
                          "Pitch_71", "Rest", "Pitch_62", "Pitch_43",
                          "Pitch_71", "Pitch_65", "Pitch_62", "Pitch_43"]
    assert len(seq.ids) == 1 + 4 * len(GRID)           # no EOS: ids[1:] is exactly the grid


def test_a_run_of_one_pitch_in_one_voice_is_one_note(tok):
    seq = tok.encode_grid(GRID)
    # notes in reading order: S72 A67 T64 B48 (step 0), S71 T62 B43 (step 2), A65 (step 3)
    assert seq.note_of_token.tolist() == [-1, 0, 1, 2, 3, 0, 1, 2, 3, 4, -1, 5, 6, 4, 7, 5, 6]
    notes = seq.notes
    assert notes["pitch"].tolist() == [72, 67, 64, 48, 71, 62, 43, 65]
    assert notes["track"].tolist() == [0, 1, 2, 3, 0, 2, 3, 1]
    assert notes["start_beat"].tolist() == [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.75]
    assert notes["end_beat"].tolist() == [0.5, 0.5, 0.5, 0.5, 1, 1, 1, 1]


def test_decode_writes_one_named_track_per_voice(tok):
    result = tok.decode(tok.encode_grid(GRID).ids)
    assert result.skipped == 0
    score = result.score
    assert list(score.track_names) == ["Soprano", "Alto", "Tenor", "Bass"]
    notes = score.notes
    tracks = {name: [(int(n["pitch"]), float(n["start"]), float(n["end"])) for n in notes[notes["track"] == k]]
              for k, name in enumerate(score.track_names)}
    assert tracks == {"Soprano": [(72, 0.0, 0.25), (71, 0.25, 0.5)],    # a sixteenth = 0.125 s at 120 bpm
                      "Alto": [(67, 0.0, 0.25), (65, 0.375, 0.5)],
                      "Tenor": [(64, 0.0, 0.25), (62, 0.25, 0.5)],
                      "Bass": [(48, 0.0, 0.25), (43, 0.25, 0.5)]}


def test_random_grids_survive_encode_then_grid_of(tok):
    rng = np.random.default_rng(0)
    for steps in (0, 1, 7, 50):
        grid = rng.integers(36, 82, (steps, 4))
        grid[rng.random((steps, 4)) < 0.2] = -1
        np.testing.assert_array_equal(tok.grid_of(tok.encode_grid(grid).ids), grid.reshape(-1, 4))


def test_an_unfinished_step_and_an_eos_inside_a_step_are_skipped(tok):
    ids = tok.encode_grid(GRID).ids
    assert tok.decode(ids[:-2]).skipped == 2                       # step 3 has 2 of its 4 tokens
    assert tok.decode(np.concatenate((ids[:7], [tok.eos_id], ids[7:]))).skipped == 1
    assert tok.decode(np.concatenate((ids, [tok.eos_id]))).skipped == 0


def test_grammar_offers_eos_only_between_steps_and_samples_decode_cleanly(tok):
    rng = np.random.default_rng(1)
    state, ids = tok.grammar(), [tok.bos_id]
    state.advance(tok.bos_id)
    for _ in range(41):
        allowed = state.allowed()
        assert allowed[tok.eos_id] == (len(ids) % 4 == 1)        # ids start with BOS
        assert not allowed[tok.bos_id] and not allowed[tok.pad_id]
        choice = int(rng.choice(np.flatnonzero(allowed)))
        state.advance(choice)
        ids.append(choice)
        if state.done:
            break
    assert tok.decode(ids).skipped == 0


@pytest.mark.parametrize("grid", [np.zeros((3, 3), int), np.full((2, 4), 90), np.full((2, 4), 60.0),
                                  np.full((2, 4), -2)])
def test_grids_that_are_not_four_voices_in_range_are_refused(tok, grid):
    with pytest.raises(TokenizerError):
        tok.encode_grid(grid)


def test_transpose_moves_pitches_and_leaves_rests(tok):
    ids = tok.transpose(tok.encode_grid(GRID).ids, 2)
    np.testing.assert_array_equal(tok.grid_of(ids), np.where(GRID < 0, -1, GRID + 2))


def _four_part_file(path):
    """Bass, soprano, tenor, alto as tracks (out of order); the soprano repeats a note."""
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=60.0)      # a beat = 1 s
    parts = {"B": [(48, 0, 2)], "S": [(72, 0, 1), (72, 1, 2)], "T": [(64, 0, 1), (62, 1, 2)],
             "A": [(67, 0, 1.5)]}
    for name, notes in parts.items():
        inst = pretty_midi.Instrument(0, name=name)
        inst.notes = [pretty_midi.Note(80, p, s, e) for p, s, e in notes]
        pm.instruments.append(inst)
    pm.write(str(path))
    return path


def test_a_four_track_file_lands_on_the_grid_with_its_own_notes(tok, tmp_path):
    seq = tok.encode(_four_part_file(tmp_path / "chorale.mid"))
    assert seq.ids[0] == tok.bos_id and seq.ids[-1] == tok.eos_id
    grid = tok.grid_of(seq.ids)
    expected = np.array([[72, 67, 64, 48]] * 4 + [[72, 67, 62, 48]] * 2 + [[72, -1, 62, 48]] * 2)
    np.testing.assert_array_equal(grid, expected)
    # the repeated soprano note stays two notes: cells of step 4 belong to the second one
    labels = seq.note_of_token[1:-1].reshape(-1, 4)
    assert labels[3, 0] != labels[4, 0]
    assert seq.notes["pitch"][labels[4, 0]] == 72 and seq.notes["start"][labels[4, 0]] == pytest.approx(1.0)
    assert labels[6, 1] == -1
    names = [seq.score.track_names[t] for t in seq.notes["track"][labels[0]]]
    assert names == ["S", "A", "T", "B"]                     # each voice keeps its own track (and name)


def test_tokenizer_config_round_trips_through_json_and_dispatch(tok, tmp_path):
    other = GridTokenizer(pitch_range=(40, 70))
    assert Tokenizer.from_dict(other.to_dict()) == other
    assert Tokenizer.from_dict(tok.to_dict()) != other
    other.save(tmp_path / "tok.json")
    assert load_tokenizer(tmp_path / "tok.json").vocab == other.vocab


def test_a_checkpoint_with_the_grid_tokenizer_loads_and_encodes_grids(tok, tmp_path):
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                         max_len=32, positional="relative", dropout=0.1)
    model = init_model(config, np.random.default_rng(0), tokenizer=tok)
    save_checkpoint(tmp_path / "m.npz", model)
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.config == config and loaded.tokenizer == tok
    ids = loaded.tokenizer.encode_grid(GRID).ids
    np.testing.assert_array_equal(loaded.forward(ids[None]), model.forward(ids[None]))
