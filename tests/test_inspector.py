"""Tests of music_attn.inspect.inspector: token -> note aggregation, surprise, windows, JSON."""

import json
import math
import types

import numpy as np
import pytest

from music_attn.inspect import inspector
from music_attn.inspect.inspector import AttentionMaps, attention_maps, note_name

NOTES3 = {"pitch": [60, 62, 64], "start": [0.0, 0.5, 1.0], "end": [0.5, 1.0, 1.5]}


def _random_causal_attention(rng, L, H, T):
    logits = rng.normal(size=(L, H, T, T)) * 2
    logits[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf
    att = np.exp(logits - logits.max(-1, keepdims=True))
    return att / att.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def tiny_model():
    model = pytest.importorskip("music_attn.core.model")
    config = model.ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=24)
    return model.init_model(config, np.random.default_rng(0))


def _sequence(rng, n_notes, vocab=40):
    """A REMI-like token sequence: [Position, Pitch, Duration] per note, a Bar every 4 notes."""
    labels = [-1]
    for i in range(n_notes):
        labels += ([-1] if i % 4 == 0 else []) + [-1, i, i]
    labels.append(-1)
    T = len(labels)
    notes = {"pitch": rng.integers(55, 80, n_notes), "start": np.arange(n_notes) * 0.25,
             "end": np.arange(n_notes) * 0.25 + 0.2}
    return types.SimpleNamespace(ids=rng.integers(1, vocab, T), note_of_token=np.array(labels),
                                 tokens=[f"tok{t}" for t in range(T)], notes=notes, name="tune.mid")


# ------------------------------------------------------------ aggregation
def test_note_attention_is_the_mean_over_query_tokens_of_summed_key_attention():
    A = np.array([[1.0, 0, 0, 0, 0],
                  [0.5, 0.5, 0, 0, 0],
                  [0.2, 0.3, 0.5, 0, 0],
                  [0.1, 0.2, 0.3, 0.4, 0],
                  [0.1, 0.1, 0.1, 0.3, 0.4]])
    labels = [-1, 0, 0, 1, 1]                       # token 0 is structure (a Bar)
    maps = AttentionMaps.from_arrays(A[None, None], labels, {k: v[:2] for k, v in NOTES3.items()})
    # note 0 = tokens 1, 2: to note 0: (0.5 + 0.8) / 2; to structure (0.5 + 0.2) / 2
    # note 1 = tokens 3, 4: to note 0: (0.5 + 0.2) / 2; to note 1: (0.4 + 0.7) / 2; structure 0.1
    np.testing.assert_allclose(maps.note_attention[0, 0], [[0.65, 0.0], [0.35, 0.55]], atol=1e-7)
    np.testing.assert_allclose(maps.structure_share[0, 0], [0.35, 0.1], atol=1e-7)


def test_note_attention_matches_a_python_loop_when_note_tokens_interleave():
    rng = np.random.default_rng(1)
    labels = np.array([-1, 0, 1, 0, -1, 2, 1, 2, -1, 0])    # notes' tokens are not contiguous
    A = _random_causal_attention(rng, 2, 3, labels.size)
    maps = AttentionMaps.from_arrays(A, labels, NOTES3)
    for layer in range(2):
        for head in range(3):
            for i in range(3):
                q = [t for t in range(labels.size) if labels[t] == i]
                for j in range(3):
                    k = [s for s in range(labels.size) if labels[s] == j]
                    want = sum(sum(float(A[layer, head, t, s]) for s in k) for t in q) / len(q)
                    assert maps.note_attention[layer, head, i, j] == pytest.approx(want, abs=1e-6)


def test_each_note_row_and_its_structure_share_sum_to_one():
    rng = np.random.default_rng(2)
    seq = _sequence(rng, 12)
    A = _random_causal_attention(rng, 2, 2, seq.ids.size)
    maps = AttentionMaps.from_arrays(A, seq.note_of_token, seq.notes)
    total = maps.note_attention.sum(-1) + maps.structure_share
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_surprise_is_the_sum_of_the_token_nll_of_each_note():
    nll = np.array([np.nan, 1.0, 2.0, 0.5, 4.0, 3.0])
    labels = [-1, 0, 0, -1, 2, 1]
    maps = AttentionMaps.from_arrays(np.ones((1, 1, 6, 6)) / 6, labels, NOTES3, token_nll=nll)
    np.testing.assert_allclose(maps.surprise, [3.0, 3.0, 4.0])


def _pitch_of_name(name):
    """"Bb4" -> 70, "C#-1" -> 1: scientific pitch notation read back, written from the rule."""
    letter, rest = name[0], name[1:]
    alter = {"#": 1, "b": -1}.get(rest[:1], 0)
    octave = int(rest[1:] if alter else rest)
    return "C D EF G A B".index(letter) + alter + 12 * (octave + 1)


@pytest.mark.parametrize("melody, flat_key", [
    ([65, 67, 69, 70, 72, 70, 69, 67, 65], True),        # F major: B flat
    ([62, 64, 66, 67, 69, 71, 73, 74, 69, 66, 62], False),  # D major: F sharp, C sharp
    ([62, 65, 69, 70, 69, 65, 62], True),                # D minor: B flat
])
def test_note_names_are_spelled_in_the_key_of_the_piece(tiny_model, melody, flat_key):
    seq = _sequence(np.random.default_rng(1), len(melody))
    seq.notes["pitch"] = np.array(melody)
    maps = attention_maps(tiny_model, seq)
    assert [_pitch_of_name(n) for n in maps.note_names] == melody
    black = [n for n in maps.note_names if len(n) > 2 and n[1] in "#b"]
    assert black and all(n[1] == ("b" if flat_key else "#") for n in black)


def test_note_names_use_scientific_pitch_notation():
    assert [note_name(p) for p in (60, 61, 21, 127, 0)] == ["C4", "C#4", "A0", "G9", "C-1"]


def test_the_most_focused_head_is_the_one_with_one_hot_rows():
    T = 4
    uniform = np.tril(np.ones((T, T)))
    uniform /= uniform.sum(-1, keepdims=True)
    one_hot = np.zeros((T, T))
    one_hot[np.arange(T), [0, 0, 1, 2]] = 1                    # each note looks at the one before
    A = np.stack([np.stack([uniform, uniform]), np.stack([uniform, one_hot])])    # (2, 2, T, T)
    notes = {"pitch": [60, 62, 64, 65], "start": [0, 1, 2, 3], "end": [1, 2, 3, 4]}
    maps = AttentionMaps.from_arrays(A, [0, 1, 2, 3], notes)
    assert maps.most_focused_head() == (1, 1)
    assert maps.top_attended(3, layer=1, head=1) == [(2, 1.0)]
    assert [j for j, _ in maps.top_attended(3, layer=0, head=0, k=2)] == [0, 1]    # ties: earliest


def test_shapes_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match="note_of_token"):
        AttentionMaps.from_arrays(np.ones((1, 1, 4, 4)), [0, 1, 2], NOTES3)
    with pytest.raises(ValueError, match="note 5"):
        AttentionMaps.from_arrays(np.ones((1, 1, 3, 3)), [0, 1, 5], NOTES3)


def test_notes_are_read_from_a_structured_array_or_note_objects():
    structured = np.array([(60, 0.0, 0.5, 90)], dtype=[("pitch", "i4"), ("start", "f8"), ("end", "f8"),
                                                       ("velocity", "i4")])
    objects = [types.SimpleNamespace(pitch=60, start=0.0, end=0.5, velocity=90)]
    for notes in (structured, objects):
        maps = AttentionMaps.from_arrays(np.ones((1, 1, 1, 1)), [0], notes)
        assert (maps.pitch[0], maps.end[0], maps.velocity[0]) == (60, 0.5, 90)


# ------------------------------------------------------------ model pass
def test_token_attention_rows_are_causal_distributions(tiny_model):
    seq = _sequence(np.random.default_rng(3), 5)
    maps = attention_maps(tiny_model, seq)
    assert maps.token_attention.shape == (2, 2, seq.ids.size, seq.ids.size)
    np.testing.assert_allclose(maps.token_attention.sum(-1), 1.0, atol=1e-5)
    assert not np.triu(maps.token_attention, 1).any()
    assert maps.n_notes == 5 and [_pitch_of_name(n) for n in maps.note_names] == seq.notes["pitch"].tolist()
    assert maps.notice == "" and maps.window == 24


def test_token_nll_matches_a_log_softmax_loop_over_the_logits(tiny_model):
    seq = _sequence(np.random.default_rng(4), 5)
    maps = attention_maps(tiny_model, seq)
    logits = np.asarray(tiny_model.forward(np.asarray(seq.ids)[None]), dtype=np.float64)[0]
    assert math.isnan(maps.token_nll[0])
    for t in range(1, seq.ids.size):
        row = logits[t - 1]
        want = math.log(sum(math.exp(x - row.max()) for x in row)) + row.max() - row[seq.ids[t]]
        assert maps.token_nll[t] == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_a_sequence_longer_than_the_window_is_read_in_overlapping_windows(tiny_model):
    seq = _sequence(np.random.default_rng(5), 20)                # 66 tokens, max_len 24
    T, W = seq.ids.size, tiny_model.config.max_len
    maps = attention_maps(tiny_model, seq)
    assert str(W) in maps.notice and maps.n_tokens == T == maps.n_tokens_in_file
    np.testing.assert_allclose(maps.token_attention.sum(-1), 1.0, atol=1e-5)
    t, s = np.nonzero(maps.token_attention.any(axis=(0, 1)))
    assert (t - s).max() < W and (t >= s).all()                   # keys inside the query's window
    assert np.isfinite(maps.token_nll[1:]).all()
    _, first = tiny_model.forward(np.asarray(seq.ids[:W])[None], return_attention=True)
    np.testing.assert_allclose(maps.token_attention[:, :, :W, :W], first[:, 0], atol=1e-6)
    _, last = tiny_model.forward(np.asarray(seq.ids[T - W:])[None], return_attention=True)
    np.testing.assert_allclose(maps.token_attention[:, :, -1, T - W:], last[:, 0, :, -1], atol=1e-6)


def test_a_smaller_window_limits_how_far_back_tokens_look(tiny_model):
    seq = _sequence(np.random.default_rng(6), 8)
    maps = attention_maps(tiny_model, seq, window=8)
    t, s = np.nonzero(maps.token_attention.any(axis=(0, 1)))
    assert (t - s).max() == 7
    with pytest.raises(ValueError, match="max_len"):
        attention_maps(tiny_model, seq, window=25)


def test_ids_outside_the_model_vocabulary_are_refused(tiny_model):
    seq = _sequence(np.random.default_rng(8), 4, vocab=41)
    seq.ids[3] = 40
    with pytest.raises(ValueError, match="vocabulary"):
        attention_maps(tiny_model, seq)


def test_a_midi_input_without_a_tokenizer_is_a_clear_error(tiny_model, tmp_path):
    from music_attn.errors import MusicAttnError

    with pytest.raises(MusicAttnError, match="tokenizer"):
        attention_maps(tiny_model, tmp_path / "x.mid")


# ---------------------------------------------------------------- output
def test_notebook_display_is_an_escaped_iframe_of_the_page():
    maps = AttentionMaps.from_arrays(np.ones((1, 1, 1, 1)), [0], {k: v[:1] for k, v in NOTES3.items()},
                                     name='"><script>alert(1)</script>')
    shown = maps._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "<script" not in shown


def test_a_melody_without_notes_is_a_midi_error(tiny_model):
    from music_attn.errors import MidiError

    seq = types.SimpleNamespace(ids=np.array([1, 2]), note_of_token=np.array([-1, -1]), tokens=["BOS", "EOS"],
                                notes={"pitch": [], "start": [], "end": []}, name="silence.mid")
    with pytest.raises(MidiError, match="silence.mid: no notes"):
        attention_maps(tiny_model, seq)


def test_head_entropy_is_the_mean_entropy_over_earlier_notes():
    A = np.array([[1.0, 0.0, 0.0],
                  [0.6, 0.4, 0.0],                 # note 1: only note 0 is earlier -> entropy 0
                  [0.3, 0.3, 0.4]])                # note 2: 50/50 over notes 0, 1 -> ln 2
    maps = AttentionMaps.from_arrays(A[None, None], [0, 1, 2], NOTES3)
    assert maps.head_entropy()[0, 0] == pytest.approx(math.log(2) / 2)


# ------------------------------------------------------- band storage, any length
from conftest import loop_note_attention                                       # noqa: E402
from midi_factory import midi_file, note_events, track                         # noqa: E402
from music_attn.runtime.windows import spans                                  # noqa: E402


def _dense_from_windows(model, ids, window):
    """Independent dense reference (L, H, T, T): row t from a forward of the window that owns t."""
    ids = np.asarray(ids)
    T, cfg = ids.size, model.config
    dense = np.zeros((cfg.n_layers, cfg.n_heads, T, T))
    for s in spans(T, window):
        _, att = model.forward(ids[None, s.start:s.stop], return_attention=True)
        dense[:, :, s.keep:s.stop, s.start:s.stop] = att[:, 0, :, s.keep - s.start:, :]
    return dense


@pytest.mark.parametrize("n_notes, window", [(6, None), (14, None), (14, 9), (14, 2)])
def test_band_note_maps_equal_dense_maps_for_every_layer_head_and_window(tiny_model, n_notes, window):
    seq = _sequence(np.random.default_rng(7), n_notes)
    maps = attention_maps(tiny_model, seq, window=window)
    W = window or tiny_model.config.max_len
    if seq.ids.size <= W:                                   # fits: one full forward is the reference
        dense = tiny_model.forward(np.asarray(seq.ids)[None], return_attention=True)[1][:, 0]
    else:
        dense = _dense_from_windows(tiny_model, seq.ids, W)
    want, structure = loop_note_attention(dense, seq.note_of_token, n_notes)
    assert maps.token_band.shape[-1] == W
    np.testing.assert_allclose(maps.token_attention, dense, atol=1e-6)
    np.testing.assert_allclose(maps.note_attention, want, atol=2e-6)
    np.testing.assert_allclose(maps.structure_share, structure, atol=2e-6)
    for layer, head in np.ndindex(2, 2):                    # CSR rows: keys increasing, rows sum to 1 - structure
        indptr, keys, weights = maps.note_rows(layer, head)
        assert all((np.diff(keys[a:b]) > 0).all() for a, b in zip(indptr[:-1], indptr[1:]))
        np.testing.assert_allclose(np.add.reduceat(weights, indptr[:-1]) + structure[layer, head], 1, atol=1e-5)


def test_dense_and_band_inputs_give_the_same_maps():
    rng = np.random.default_rng(2)
    labels = np.array([-1, 0, 0, -1, 1, 2, 2, -1, 1])
    A = _random_causal_attention(rng, 2, 2, labels.size)
    T = labels.size
    band = np.zeros((2, 2, T, T))
    for t in range(T):
        band[:, :, t, T - 1 - t:] = A[:, :, t, :t + 1]        # column T - 1 is the query itself
    dense_maps = AttentionMaps.from_arrays(A, labels, NOTES3)
    band_maps = AttentionMaps.from_arrays(None, labels, NOTES3, band=band)
    np.testing.assert_allclose(band_maps.note_attention, dense_maps.note_attention, atol=1e-6)
    np.testing.assert_allclose(band_maps.token_attention, A, atol=1e-6)


def test_a_bidirectional_dense_input_keeps_its_attention_to_later_notes():
    A = np.full((1, 1, 3, 3), 1 / 3)
    maps = AttentionMaps.from_arrays(A, [0, 1, 2], NOTES3)
    np.testing.assert_allclose(maps.note_attention[0, 0], A[0, 0], atol=1e-7)


def test_rollout_matches_a_hand_computation_on_three_tokens_and_two_layers():
    A1 = [[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]
    A2 = [[1.0, 0, 0], [0.6, 0.4, 0], [0.1, 0.1, 0.8]]
    att = np.array([[A1], [A2]])                                # (L=2, H=1, 3, 3)
    # 0.5 A + 0.5 I: layer 1 rows [1,0,0] [.25,.75,0] [.1,.15,.75]; layer 2 [1,0,0] [.3,.7,0] [.05,.05,.9]
    # R = A2' A1': row 1 = .3 [1,0,0] + .7 [.25,.75,0]; row 2 = .05 r0 + .05 r1 + .9 r2 of layer 1
    want = [[1.0, 0, 0], [0.475, 0.525, 0], [0.1525, 0.1725, 0.675]]
    np.testing.assert_allclose(inspector.attention_rollout(att), want, atol=1e-12)
    maps = AttentionMaps.from_arrays(att, [-1, 0, 1], {k: v[:2] for k, v in NOTES3.items()})
    np.testing.assert_allclose(maps.note_row(1, "rollout"), [0.1725, 0.675], atol=1e-6)
    np.testing.assert_allclose(maps.shares("rollout")[0], [0.475, 0.1525], atol=1e-6)


def test_rollout_renormalises_rows_that_do_not_sum_to_one():
    att = np.array([[[[2.0, 0], [1.0, 1.0]]]])                  # rows sum to 2
    # 0.5 A + 0.5 I = [[1.5, 0], [.5, 1]] -> rows [1, 0], [1/3, 2/3]
    np.testing.assert_allclose(inspector.attention_rollout(att), [[1, 0], [1 / 3, 2 / 3]], atol=1e-12)


def test_model_rollout_is_taken_within_the_window_that_owns_each_query(tiny_model):
    seq = _sequence(np.random.default_rng(8), 14)
    W = 9
    maps = attention_maps(tiny_model, seq, window=W)
    for s in spans(seq.ids.size, W):
        _, att = tiny_model.forward(np.asarray(seq.ids[s.start:s.stop])[None], return_attention=True)
        rolled = inspector.attention_rollout(att[:, 0])
        for t in range(s.keep, s.stop):
            row = maps.rollout_band[t, W - 1 - (t - s.start):]
            np.testing.assert_allclose(row, rolled[t - s.start, :t - s.start + 1], atol=1e-5)


# ------------------------------------------------------------------- model fit
def test_model_fit_is_the_mean_token_nll_next_to_the_validation_nll(tiny_model):
    seq = _sequence(np.random.default_rng(9), 6)
    logits = np.asarray(tiny_model.forward(np.asarray(seq.ids)[None])[0], dtype=np.float64)
    direct = [math.log(sum(math.exp(x - row.max()) for x in row)) + row.max() - row[seq.ids[t + 1]]
              for t, row in enumerate(logits[:-1])]
    tiny_model.metrics = {"validation_nats_per_token": float(np.mean(direct)) / 3}
    try:
        fit = attention_maps(tiny_model, seq).model_fit
    finally:
        del tiny_model.metrics
    assert fit["nats_per_token"] == pytest.approx(np.mean(direct), rel=1e-6)
    assert fit["ratio"] == pytest.approx(3.0, rel=1e-6)
    assert "far outside" in fit["reading"] and "--melody" not in fit["reading"]   # one voice: no hint
    assert attention_maps(tiny_model, seq).model_fit["validation_nats_per_token"] is None


def test_checkpoint_metrics_load_as_model_metrics_and_a_malformed_entry_is_refused(remi_model, tmp_path):
    from music_attn.errors import CheckpointError
    from music_attn.runtime.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "a.npz", remi_model, metrics={"validation_nats_per_token": 0.75})
    assert load_checkpoint(tmp_path / "a.npz").model.metrics == {"validation_nats_per_token": 0.75}
    save_checkpoint(tmp_path / "b.npz", remi_model)
    assert load_checkpoint(tmp_path / "b.npz").model.metrics == {}
    entries = dict(np.load(tmp_path / "a.npz"))
    entries["metrics"] = np.array("[1, 2]")
    np.savez(tmp_path / "c.npz", **entries)
    with pytest.raises(CheckpointError, match="metrics"):
        load_checkpoint(tmp_path / "c.npz")


# ------------------------------------------------------- passages, tracks, voices
Q = 480


@pytest.fixture(scope="module")
def remi_model():
    from music_attn.core.model import ModelConfig, init_model
    from music_attn.music.tokenizers import RemiTokenizer

    tok = RemiTokenizer(velocity_bins=0)
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=32)
    model = init_model(config, np.random.default_rng(1))
    model.tokenizer = tok
    return model


def duet(path, bars=12):
    """4/4: a tune of quarter notes (track 1, 'Tune') over half notes a tenth lower (track 2, 'Bass')."""
    tune = [(60 + (3 * i) % 12, i * Q, (i + 1) * Q, 80) for i in range(4 * bars)]
    bass = [(45 + (5 * i) % 12, 2 * i * Q, 2 * (i + 1) * Q, 80) for i in range(2 * bars)]
    name = lambda n: [(0, mido.MetaMessage("track_name", name=n))]      # noqa: E731
    midi_file(track([]), track(name("Tune") + note_events(tune)),
              track(name("Bass") + note_events(bass, channel=1))).save(path)
    return path


import mido                                                                    # noqa: E402


def test_a_passage_is_read_exactly_as_in_the_whole_piece(remi_model, tmp_path):
    path = duet(tmp_path / "duet.mid")
    whole = attention_maps(remi_model, path)
    part = attention_maps(remi_model, path, bars=(5, 8))
    inside = np.flatnonzero((whole.bar >= 5) & (whole.bar <= 8))
    assert part.n_notes == inside.size == 24 and (part.pitch == whole.pitch[inside]).all()
    assert part.bar.min() == 5 and part.beat.min() == 1.0
    np.testing.assert_allclose(part.surprise, whole.surprise[inside], atol=1e-9)
    for layer, head in [(0, 0), (1, 1), ("rollout", None)]:
        for i, j in enumerate(inside):
            row = whole.note_row(j, layer, head)
            np.testing.assert_allclose(part.note_row(i, layer, head), row[inside], atol=1e-6)
            structure, context = part.shares(layer, head)
            assert context[i] == pytest.approx(row[:inside[0]].sum(), abs=1e-6)
            assert structure[i] == pytest.approx(whole.shares(layer, head)[0][j], abs=1e-6)
    assert part.context_share.max() > 0.05                 # the music before the passage is heard
    assert part.n_tokens < whole.n_tokens and "context" in part.notice


def test_seconds_choose_the_notes_starting_in_them(remi_model, tmp_path):
    path = duet(tmp_path / "duet.mid")
    part = attention_maps(remi_model, path, start=2.0, end=4.0)   # 120 bpm: beats 4..7
    assert part.start.min() >= 2.0 and part.start.max() < 4.0 and part.n_notes == 6


def test_tracks_and_the_top_voice_choose_what_the_model_reads(remi_model, tmp_path):
    path = duet(tmp_path / "duet.mid")
    assert set(attention_maps(remi_model, path, tracks=["bass"]).track.tolist()) == {2}
    assert set(attention_maps(remi_model, path, tracks=[1]).track.tolist()) == {1}
    top = attention_maps(remi_model, path, melody=True)
    assert top.n_notes == 48 and set(top.track.tolist()) == {1}        # the tune is always higher
    with pytest.raises(inspector.MusicAttnError, match="Bass"):
        attention_maps(remi_model, path, tracks=["viola"])


def test_a_melody_model_on_many_voices_is_told_to_keep_one(remi_model, tmp_path):
    path = duet(tmp_path / "duet.mid")
    remi_model.metrics = {"validation_nats_per_token": 1e-3}
    try:
        assert "--melody" in attention_maps(remi_model, path).model_fit["reading"]
        assert "--melody" not in attention_maps(remi_model, path, melody=True).model_fit["reading"]
    finally:
        del remi_model.metrics


# ------------------------------------------------------------------------ JSON
def test_json_lists_every_note_and_the_top_keys_with_the_rest_summed(remi_model, tmp_path):
    maps = attention_maps(remi_model, duet(tmp_path / "duet.mid", bars=4))
    data = json.loads(maps.to_json(top_k=3))
    assert len(data["notes"]) == maps.n_notes == 24
    assert set(data["notes"][0]) >= {"pitch", "start", "end", "bar", "beat", "track", "surprise"}
    assert set(data["model_fit"]) >= {"nats_per_token", "validation_nats_per_token"}
    for layer in range(2):
        for head in range(2):
            entry = data["note_attention"]["layers"][layer][head]
            dense = maps.note_attention[layer, head]
            for i in range(maps.n_notes):
                keys, weights = entry["keys"][i], entry["weights"][i]
                assert len(keys) <= 3 and weights == sorted(weights, reverse=True)
                np.testing.assert_allclose(weights, dense[i, keys], atol=1e-3)
                assert weights[-1] >= np.sort(dense[i])[-len(keys)] - 1e-3      # the strongest ones
                total = sum(weights) + entry["rest"][i] + entry["structure"][i] + entry["context"][i]
                assert total == pytest.approx(1.0, abs=5e-3)
    assert data["note_attention"]["rollout"]["keys"][5]
    assert "token_band" not in data and "token_band" in json.loads(maps.to_json(token_band=True))


# ------------------------------------------------------------------- any length
_LIMITED = r"""
import resource, sys
import numpy as np
limit = int(sys.argv[3]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from music_attn.core.model import ModelConfig, init_model
from music_attn.inspect.inspector import attention_maps
from music_attn.music.tokenizers import RemiTokenizer
tok = RemiTokenizer(velocity_bins=0)
config = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=int(sys.argv[2]))
model = init_model(config, np.random.default_rng(0))
model.tokenizer = tok
maps = attention_maps(model, sys.argv[1], progress=False)
rows = maps.note_rows(1, 1)
print(maps.n_notes, maps.n_tokens, len(maps.to_json()) // 2**20, float(np.add.reduceat(rows.weights, rows.indptr[:-1]).max()))
"""


@pytest.mark.slow
def test_a_ten_thousand_note_piece_is_inspected_whole_under_a_memory_limit(tmp_path):
    import os
    import subprocess
    import sys

    from music_attn.bench.inspect import make_piece

    path = tmp_path / "long.mid"
    assert make_piece(path, 10_000) == 10_000
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # dense token maps would need 2 x 2 x T x T x 4 bytes, about 8 GB here; the limit is 1 GB
    out = subprocess.run([sys.executable, "-c", _LIMITED, str(path), "256", "1024"], capture_output=True,
                         text=True, env=env, timeout=900, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-2000:]
    notes, tokens, json_mb, top_row = out.stdout.split()
    assert int(notes) == 10_000 and int(tokens) > 20_000 and float(top_row) <= 1 + 1e-5


# ------------------------------------------------------------------------- CLI
def _cli(args, capsys):
    from music_attn.cli import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_inspects_a_passage_of_some_tracks_and_prints_the_model_fit(remi_model, tmp_path, capsys):
    from music_attn.runtime.checkpoint import save_checkpoint

    ckpt = tmp_path / "m.npz"
    save_checkpoint(ckpt, remi_model, metrics={"validation_nats_per_token": 0.5})
    path = duet(tmp_path / "duet.mid")
    html, js = tmp_path / "p.html", tmp_path / "p.json"
    code, out, err = _cli(["inspect", str(path), "-m", str(ckpt), "-o", str(html), "--json", str(js),
                           "--bars", "3:4", "--track", "Tune"], capsys)
    assert code == 0 and err == ""                           # no progress bar when stderr is not a terminal
    data = json.loads(js.read_text())
    assert [n["bar"] for n in data["notes"]] == [3] * 4 + [4] * 4 and {n["track"] for n in data["notes"]} == {1}
    assert data["model_fit"]["validation_nats_per_token"] == 0.5
    assert f"{data['model_fit']['nats_per_token']:.3f} nats per token" in out and "0.500" in out
    assert "far outside" in out and html.is_file()


@pytest.mark.parametrize("extra, message", [(["--bars", "4:2"], "bars"), (["--track", "viola"], "viola"),
                                            (["--bars", "40:41"], "no notes"), (["--start", "nan"], "finite")])
def test_cli_refuses_a_bad_choice_in_one_line_and_writes_nothing(remi_model, tmp_path, capsys, extra, message):
    from music_attn.runtime.checkpoint import save_checkpoint

    ckpt = tmp_path / "m.npz"
    save_checkpoint(ckpt, remi_model)
    html = tmp_path / "p.html"
    code, out, err = _cli(["inspect", str(duet(tmp_path / "duet.mid")), "-m", str(ckpt), "-o", str(html)] + extra,
                          capsys)
    assert code == 2 and err.startswith("error:") and message in err and err.count("\n") == 1
    assert not html.exists()


# ----------------------------------------------------- fast path == reference
def _numbers(x):
    """Every number of a JSON-like value, in order (None as NaN)."""
    if isinstance(x, dict):
        return [n for key in sorted(x) for n in _numbers(x[key])]
    if isinstance(x, list):
        return [n for item in x for n in _numbers(item)]
    if x is None or isinstance(x, (int, float)) and not isinstance(x, bool):
        return [math.nan if x is None else float(x)]
    return []


def test_batched_windows_give_the_json_of_the_one_window_reference(tmp_path, monkeypatch):
    """The shipped model on a four-voice piece of 12 windows (two model calls, of 8 and 4):
    the batched, threaded reader equals `_run_windows_one_by_one` to 1e-6, band, rollout,
    NLL and every number of the JSON, for the whole piece and for a passage."""
    from music_attn.bench.inspect import make_piece
    from music_attn.runtime.checkpoint import load_model

    model, path = load_model(), tmp_path / "quartet.mid"
    make_piece(path, 700)
    fast = [attention_maps(model, path), attention_maps(model, path, bars=(20, 30))]
    monkeypatch.setattr(inspector, "_run_windows", inspector._run_windows_one_by_one)
    slow = [attention_maps(model, path), attention_maps(model, path, bars=(20, 30))]
    assert fast[0].n_tokens > 8 * 128 + 256 and fast[1].n_tokens < fast[0].n_tokens
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a.token_band, b.token_band, atol=1e-6)
        np.testing.assert_allclose(a.rollout_band, b.rollout_band, atol=1e-6)
        np.testing.assert_allclose(a.token_nll, b.token_nll, atol=1e-6)
        x, y = _numbers(a.to_dict(decimals=9)), _numbers(b.to_dict(decimals=9))
        assert len(x) == len(y) and len(x) > 50_000
        np.testing.assert_allclose(x, y, atol=1e-6)
