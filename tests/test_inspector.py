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
    assert maps.n_notes == 5 and maps.note_names == [note_name(p) for p in seq.notes["pitch"]]
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


def test_a_melody_too_long_for_memory_is_cut_with_a_notice(tiny_model, monkeypatch):
    monkeypatch.setattr(inspector, "_MAX_TOKEN_MAP_BYTES", 4 * 2 * 2 * 30 * 30)    # 30 tokens
    seq = _sequence(np.random.default_rng(7), 20)
    maps = attention_maps(tiny_model, seq)
    assert maps.n_tokens == 30 and maps.n_tokens_in_file == seq.ids.size
    assert "first 30 of" in maps.notice
    kept = sorted(set(seq.note_of_token[:30]) - {-1})
    assert maps.n_notes == len(kept) and list(maps.pitch) == list(seq.notes["pitch"][kept])


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
def test_json_holds_notes_tokens_and_maps_with_nan_as_null():
    labels = [-1, 0, 0, 1, 2]
    nll = [np.nan, 1, 1, 1, 1]
    att = _random_causal_attention(np.random.default_rng(9), 1, 2, 5)
    maps = AttentionMaps.from_arrays(att, labels, NOTES3, token_nll=nll, tokens=list("abcde"),
                                     texts={"tracks": ["<b>lead</b>"]})
    data = json.loads(maps.to_json())
    assert [n["name"] for n in data["notes"]] == ["C4", "D4", "E4"]
    assert data["tokens"][0] == {"index": 0, "token": "a", "id": 0, "note": -1, "nll": None}
    assert np.asarray(data["note_attention"]).shape == (1, 2, 3, 3)
    total = np.asarray(data["note_attention"]).sum(-1) + np.asarray(data["structure_share"])
    np.testing.assert_allclose(total, 1.0, atol=5e-4)
    assert "token_attention" not in data and data["texts"]["tracks"] == ["<b>lead</b>"]
    assert np.asarray(json.loads(maps.to_json(token_attention=True))["token_attention"]).shape == (1, 2, 5, 5)


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
