"""Harmonization: voice-leading counts, the sampling rules, the melody kept exactly, bad melodies."""

import subprocess
import sys

import mido
import numpy as np
import pytest

from midi_factory import midi_file, note_events, save, tempo, time_signature, track
from music_attn.core.model import ModelConfig, init_model
from music_attn.errors import MusicAttnError
from music_attn.music.tokenizers.grid import GridTokenizer
from music_attn.music.voice_leading import PAIRS, chord_is_complete, motion_flags, voice_leading
from music_attn.runtime.harmonize import (condition_of, harmonization_nll, harmonize, read_melody,
                                          rule_mask, sample_voices)


@pytest.fixture(scope="module")
def model():
    """A small random harmonizer (reads 8 sixteenths ahead), fast enough for every test."""
    tok = GridTokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                         max_len=96, period=16, condition=8)
    return init_model(config, np.random.default_rng(0), tokenizer=tok)


def _melody_file(tmp_path, notes, *, tpb=96, metre=(3, 4), name="Tune", extra_tracks=(), key="G"):
    meta = track([(0, tempo(90)), (0, time_signature(*metre)), (0, mido.MetaMessage("key_signature", key=key)),
                  (tpb * 6, tempo(70))])
    melody = track([(0, mido.MetaMessage("track_name", name=name))] + note_events(notes))
    path = tmp_path / "melody.mid"
    save(midi_file(meta, melody, *extra_tracks, ticks_per_beat=tpb), path)
    return path


# ----------------------------------------------------------------------------- voice leading

def test_parallel_fifths_and_octaves_are_counted_only_in_similar_motion():
    # S and B: C5/F3... each row S A T B; a sixteenth per row
    grid = np.array([[67, 64, 55, 48],      # G4 over C3: a fifth + 2 octaves between S and B
                     [69, 65, 57, 50],      # A4 over D3: both up a step -> parallel fifth S-B
                     [67, 64, 55, 48]])     # both down again: another parallel
    report = voice_leading(grid)
    # each move: S-B fifths (67/48, 69/50), T-B fifths (55/48, 57/50), S-T octaves (67/55, 69/57)
    assert report.counts["parallels"] == 3 * 2
    contrary = np.array([[67, 64, 60, 48], [74, 65, 59, 43]])   # G4/C3 -> D5/G2: fifth to fifth, contrary
    assert voice_leading(contrary).counts["parallels"] == 0


def test_held_notes_make_no_parallels_and_runs_of_equal_rows_are_one_chord():
    grid = np.array([[67, 64, 60, 48]] * 4 + [[67, 65, 60, 50]] * 4)   # S and T hold, A and B move
    report = voice_leading(grid)
    assert report.counts["parallels"] == 0
    moves = sum(motion_flags(grid[3], grid[4])[0])
    assert report.counts["pair_moves"] == moves == 5      # every pair but S-T has a moving voice


def test_hidden_octaves_crossing_spacing_and_chords_by_hand():
    hidden = np.array([[64, 60, 55, 48], [72, 64, 55, 48 + 12]])       # S leaps up to C5, B up to C4
    assert voice_leading(hidden).counts["hidden_octaves"] == 1
    crossing = np.array([[60, 64, 55, 48]])                              # alto above soprano
    assert voice_leading(crossing).counts["crossing"] == 1
    spaced = np.array([[79, 64, 55, 48]])                                 # G5 over E4: 15 semitones
    assert voice_leading(spaced).counts["spacing"] == 1
    assert chord_is_complete([67, 64, 60, 48]) and chord_is_complete([65, 62, 59, 43])  # C, G7
    assert not chord_is_complete([72, 67, 60, 48]) and not chord_is_complete([62, 60, 55, 48])


def test_bar_counts_add_up_to_the_piece():
    rng = np.random.default_rng(3)
    grid = rng.integers(40, 80, (64, 4))
    grid = -np.sort(-grid, axis=1)
    report = voice_leading(grid)
    assert [b for b, _ in report.bars] == [1, 2, 3, 4]
    for name, total in report.counts.items():
        assert sum(c[name] for _, c in report.bars) == total


# ----------------------------------------------------------------------------- the rules

def test_rule_mask_never_allows_what_the_analysis_counts_as_a_fault():
    rng = np.random.default_rng(7)
    pitches = np.arange(36, 82)
    for _ in range(300):
        prev = -np.sort(-rng.integers(45, 80, 4))
        cur = -np.sort(-rng.integers(45, 80, 4))
        for v in (1, 2, 3):
            ok = rule_mask(v, cur, prev, pitches)
            for p in pitches[ok]:
                row = cur.copy()
                row[v] = p
                row[v + 1:] = -1
                _, parallel, hidden = motion_flags(prev, row)
                mine = [k for k, (a, b) in enumerate(PAIRS) if b == v]     # the pairs voice v makes
                assert not parallel[mine].any() and not hidden[mine].any()
                assert p <= row[v - 1] and (v == 3 or row[v - 1] - p <= 12)


def test_rules_on_give_no_parallels_or_crossing_where_the_free_model_makes_them(model):
    soprano = np.repeat([72, 74, 76, 77, 79, 77, 76, 74, 72, 71, 72], 4)
    ruled, _ = sample_voices(model, soprano, num_samples=4, rng=1, rules=True)
    free, _ = sample_voices(model, soprano, num_samples=4, rng=1, rules=False)
    ruled_counts = [voice_leading(g).counts for g in ruled]
    assert all(c["parallels"] == 0 and c["crossing"] == 0 and c["hidden_octaves"] == 0 for c in ruled_counts)
    free_faults = sum(voice_leading(g).counts["crossing"] + voice_leading(g).counts["parallels"] for g in free)
    assert free_faults > 0                    # a random model breaks them: the rules did the work
    np.testing.assert_array_equal(ruled[:, :, 0], np.broadcast_to(soprano, ruled[:, :, 0].shape))


def test_sample_i_of_several_is_the_single_run_with_seed_plus_i(model):
    soprano = np.repeat([67, 69, 71, 72], 4)
    many, _ = sample_voices(model, soprano, num_samples=3, rng=10)
    one, _ = sample_voices(model, soprano, num_samples=1, rng=12)
    np.testing.assert_array_equal(many[2], one[0])


def test_a_melody_longer_than_the_window_is_read_in_sliding_windows(model):
    soprano = np.repeat(np.tile([72, 74, 76, 74], 12), 2)               # 96 steps = 385 tokens > 96
    grids, logp = sample_voices(model, soprano, num_samples=2, rng=0)
    assert grids.shape == (2, 96, 4) and np.isfinite(logp).all()
    assert (grids[:, :, 1:] >= 0).all()                                  # no rest under a sounding soprano


# ----------------------------------------------------------------------------- condition and NLL

def test_condition_tokens_are_the_soprano_of_the_next_steps():
    tok = GridTokenizer()
    soprano = np.array([60, 62, -1, 65, 67])
    n = 1 + 4 * len(soprano)
    cond = condition_of(tok, soprano, n, 3)
    cell = {p: tok.grid_ids([[p, -1, -1, -1]])[0, 0] for p in soprano}
    for j in range(n):
        step = (j - 1) // 4
        for k in range(3):
            s = step + 1 + k
            want = cell[soprano[s]] if s < len(soprano) else tok.pad_id
            assert cond[j, k] == want


def test_harmonization_nll_is_the_mean_over_lower_cells_of_a_float64_reference(model):
    from conftest import reference_logits64
    model64 = model.astype(np.float64)
    rng = np.random.default_rng(5)
    grid = np.column_stack([rng.integers(60, 80, 20), rng.integers(55, 70, 20), rng.integers(48, 62, 20),
                            rng.integers(36, 55, 20)])
    ids = model.tokenizer.encode_grid(grid).ids
    cond = condition_of(model.tokenizer, grid[:, 0], len(ids), 8)
    logits = reference_logits64(model64, ids, cond)                    # (n, V), 81 tokens < 96
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    lower = [i for i in range(len(ids) - 1) if i % 4 != 0]           # target i is cell i: voice i % 4
    assert harmonization_nll(grid, model=model64, keys=1) == pytest.approx(nll[lower].mean(), rel=1e-9)


# ----------------------------------------------------------------------------- the file

def test_the_melody_tempo_map_metre_and_key_are_kept_and_three_voices_added(tmp_path, model):
    notes = [(67, 0, 96, 80), (71, 96, 144, 81), (72, 144, 192, 82), (74, 192, 384, 83),
             (72, 384, 480, 84), (71, 480, 576, 85)]
    path = _melody_file(tmp_path, notes, tpb=96)
    out = harmonize(path, model=model, seed=3)
    out.write(tmp_path / "out.mid")
    before, after = mido.MidiFile(path), mido.MidiFile(tmp_path / "out.mid")
    assert after.ticks_per_beat == before.ticks_per_beat
    assert list(after.tracks[0]) == list(before.tracks[0])             # tempo map, metre, key signature
    assert list(after.tracks[1]) == list(before.tracks[1])             # the melody, message for message
    names = [next(m.name for m in t if m.type == "track_name") for t in after.tracks[2:]]
    assert names == ["Alto", "Tenor", "Bass"]
    melody = out.notes[out.notes["track"] == 1]
    assert [tuple(int(x) for x in n) for n in melody[["pitch", "start_tick", "end_tick", "velocity"]]] == \
        [(p, s, e, v) for p, s, e, v in notes]
    lower = out.notes[out.notes["track"] >= 2]
    assert len(lower) and lower["start_tick"].min() >= 0 and lower["end_tick"].max() <= 576


def test_the_same_seed_writes_the_same_bytes(tmp_path, model):
    path = _melody_file(tmp_path, [(72, 0, 96, 80), (74, 96, 192, 80), (76, 192, 384, 80)])
    harmonize(path, model=model, seed=4).write(tmp_path / "a.mid")
    harmonize(path, model=model, seed=4).write(tmp_path / "b.mid")
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()


def test_a_melody_out_of_range_is_moved_for_the_model_and_the_voices_back(tmp_path, model):
    path = _melody_file(tmp_path, [(96, 0, 96, 80), (98, 96, 192, 80), (100, 192, 288, 80)])
    out = harmonize(path, model=model, seed=0)
    assert any("moved down 2 octaves" in m for m in out.messages)
    lower = out.notes[out.notes["track"] >= 2]
    assert lower["pitch"].max() <= 100 and lower["pitch"].min() >= 36 + 24 - 12   # back up by 24


def test_triplets_and_chords_in_the_melody_are_reported_not_dropped(tmp_path, model):
    notes = [(72, 0, 32, 80), (74, 32, 64, 80), (76, 64, 96, 80),          # a triplet at tpb 96
             (77, 96, 192, 80), (65, 96, 192, 80)]                          # a chord: F5 over F4
    path = _melody_file(tmp_path, notes)
    out = harmonize(path, model=model, seed=0)
    text = " ".join(out.messages)
    assert "2 melody notes start off the sixteenth" in text
    assert "top voice (4 notes)" in text and "1 notes under it" in text
    assert len(out.notes[out.notes["track"] == 1]) == 5                 # every melody note is in the file


def test_a_passage_keeps_the_whole_melody_and_the_voices_sound_under_its_bars_only(tmp_path, model):
    notes = [(72 + (i % 5), 96 * i, 96 * (i + 1), 80) for i in range(12)]    # 4 bars of 3/4, a quarter each
    path = _melody_file(tmp_path, notes)
    out = harmonize(path, model=model, seed=0, bars=(2, 3))
    melody = out.notes[out.notes["track"] == 1]
    assert len(melody) == 12                                             # the whole track is kept
    lower = out.notes[out.notes["track"] >= 2]
    bar_ticks = 3 * 96
    assert len(lower) and lower["start_tick"].min() >= bar_ticks and lower["end_tick"].max() <= 3 * bar_ticks
    with pytest.raises(MusicAttnError, match="bars 6:7 of track .* hold no notes"):
        harmonize(path, model=model, seed=0, bars=(6, 7))


def test_a_track_is_chosen_by_name_and_an_ambiguous_file_is_refused(tmp_path, model):
    bass = track([(0, mido.MetaMessage("track_name", name="Bass line"))] + note_events([(40, 0, 384, 70)], 1))
    path = _melody_file(tmp_path, [(72, 0, 384, 80)], extra_tracks=(bass,))
    with pytest.raises(MusicAttnError, match="choose the melody with --track"):
        read_melody(path)
    assert read_melody(path, track="Tune").track.index == 1


@pytest.mark.parametrize("notes, message", [([], "no pitched notes"),
                                            ([(72, 0, 96 * 4 * 10_000, 80)], "at most")])
def test_bad_melodies_get_one_line_and_nothing_is_written(tmp_path, notes, message):
    path = _melody_file(tmp_path, notes, metre=(4, 4))
    out = tmp_path / "out.mid"
    run = subprocess.run([sys.executable, "-m", "music_attn", "harmonize", str(path), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_analyze_prints_the_faults_of_each_bar(tmp_path):
    tpb = 96
    voices = [[(67, 0, 96), (69, 96, 192)], [(64, 0, 192)], [(55, 0, 96), (57, 96, 192)], [(48, 0, 96), (50, 96, 192)]]
    tracks = [track([(0, mido.MetaMessage("track_name", name=n))] + note_events([(p, s, e, 80) for p, s, e in v], c))
              for c, (n, v) in enumerate(zip(["S", "A", "T", "B"], voices))]
    path = tmp_path / "four.mid"
    save(midi_file(*tracks, ticks_per_beat=tpb), path)
    run = subprocess.run([sys.executable, "-m", "music_attn", "analyze", str(path), "--json", str(tmp_path / "a.json")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "parallel 5ths/8ves 3" in run.stdout            # S-T octaves, S-B and T-B fifths, all up a step
    import json
    bars = json.loads((tmp_path / "a.json").read_text())["bars"]
    assert bars[0]["bar"] == 1 and bars[0]["parallels"] == 3


def test_harmonization_i_of_several_is_the_single_run_with_seed_plus_i(tmp_path, model):
    path = _melody_file(tmp_path, [(72, 0, 96, 80), (71, 96, 192, 80), (69, 192, 288, 80), (67, 288, 576, 80)])
    many = harmonize(path, model=model, seed=10, num_samples=3)
    np.testing.assert_array_equal(many[2].grid, harmonize(path, model=model, seed=12).grid)


def test_the_kept_voicing_has_the_fewest_faults_then_the_most_complete_chords():
    from music_attn.runtime.harmonize import best_voicing
    clean = np.array([[72, 67, 64, 48], [74, 67, 65, 47]])            # C major, then G7 (B D F G)
    thin = np.array([[72, 67, 60, 48], [74, 67, 62, 43]])             # one parallel octave, incomplete
    parallel = np.array([[72, 64, 55, 48], [74, 65, 57, 50]])          # complete, but two parallels
    grids = np.stack([parallel, thin, clean])
    assert best_voicing(grids, np.zeros(3)) == 2
    assert best_voicing(grids[:2], np.array([0.0, -50.0])) == 1        # fewer faults beats likelihood


def test_the_condition_read_from_a_token_sequence_is_the_condition_of_its_soprano(model):
    from music_attn.runtime.harmonize import condition_for_ids
    grid = np.array([[72, 67, 64, 48], [74, 67, 65, 47], [-1, 60, 55, 48], [76, 67, 60, 48]])
    ids = np.append(model.tokenizer.encode_grid(grid).ids, model.tokenizer.eos_id)
    np.testing.assert_array_equal(condition_for_ids(model, ids),
                                  condition_of(model.tokenizer, grid[:, 0], len(ids), 8))


def test_inspect_reads_the_harmonizer_window_by_window_as_the_one_window_reference():
    from music_attn.inspect.inspector import _run_windows, _run_windows_one_by_one
    from music_attn.runtime.harmonize import load_harmonizer
    harmonizer = load_harmonizer()
    rng = np.random.default_rng(2)
    grid = np.column_stack([rng.integers(62, 78, 300), rng.integers(55, 70, 300), rng.integers(48, 62, 300),
                            rng.integers(40, 55, 300)])
    ids = harmonizer.tokenizer.encode_grid(np.repeat(grid, 2, axis=0)).ids.astype(np.int64)   # 2,401 tokens
    fast = _run_windows(harmonizer, ids, 1024, 0, len(ids), None)
    slow = _run_windows_one_by_one(harmonizer, ids, 1024, 0, len(ids))
    for f, s in zip(fast, slow):                       # float32 sums in another order: 1e-6 relative
        np.testing.assert_allclose(f, s, atol=1e-6, rtol=1e-5)
