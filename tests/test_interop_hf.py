"""attention_maps_from: outside attention (Hugging Face layout, torch or numpy) -> note maps.

The hand-built cases use a sequence whose tokens-to-notes map is written out, so
every note map is known by hand; a tiny random GPT-2 over MidiTok REMI tokens
runs when transformers and miditok are installed.
"""

import math

import numpy as np
import pytest

from music_attn.interop.hf import attention_maps_from, stack_attentions
from music_attn.interop.miditok import MidiTokAlignment

#            0      1       2     3     4      5       6     7     8       9     10
TOKENS = ["Bar", "P60", "V", "D", "Pos", "P62", "V", "D", "P64", "V", "D"]
NOTE_OF = np.array([-1, 0, 0, 0, -1, 1, 1, 1, 2, 2, 2])
NOTES = {"pitch": np.array([60, 62, 64]), "start": np.array([0.0, 0.5, 1.0]),
         "end": np.array([0.5, 1.0, 1.5]), "velocity": np.array([80, 80, 80])}
SEQ = MidiTokAlignment(TOKENS, np.arange(11), NOTE_OF, NOTES)
T = len(TOKENS)


def _rows_to(keys):
    """(T, T): query t gives all its weight to key keys[t]."""
    a = np.zeros((T, T))
    a[np.arange(T), keys] = 1.0
    return a


def _hand_built():
    """Two layers x two heads of known patterns, as HF returns them: tuple of (B=2, H, T, T)."""
    to_bar = _rows_to(np.zeros(T, int))                        # everything looks at the Bar token
    to_first_note = _rows_to(np.full(T, 1))                    # everything looks at note 0's pitch
    self_half = 0.5 * np.eye(T) + 0.5 * to_bar                 # half to itself, half to Bar
    prev_note = np.zeros((T, T))                               # each note's tokens split over the
    for t in range(T):                                         # previous note's three tokens
        note = NOTE_OF[t]
        keys = np.flatnonzero(NOTE_OF == note - 1) if note > 0 else [0]
        prev_note[t, keys] = 1.0 / len(keys)
    layers = [np.stack([to_bar, to_first_note]), np.stack([self_half, prev_note])]   # (H, T, T)
    noise = np.random.default_rng(0).dirichlet(np.ones(T), (2, T))
    return tuple(np.stack([np.zeros((2, T, T)) + noise, layer]) for layer in layers)  # batch 1 is ours


def test_hand_built_patterns_give_the_note_maps_known_by_hand():
    maps = attention_maps_from(_hand_built(), SEQ, batch=1)
    na, ss = maps.note_attention, maps.structure_share                 # (L, H, N, N), (L, H, N)
    np.testing.assert_allclose(na[0, 0], 0)
    np.testing.assert_allclose(ss[0, 0], 1)
    np.testing.assert_allclose(na[0, 1], [[1, 0, 0], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(na[1, 0], 0.5 * np.eye(3))
    np.testing.assert_allclose(ss[1, 0], 0.5)
    np.testing.assert_allclose(na[1, 1], [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(ss[1, 1], [1, 0, 0])
    assert maps.note_names == ["C4", "D4", "E4"]


def test_torch_tensors_with_gradients_are_read_like_numpy():
    torch = pytest.importorskip("torch")
    layers = tuple(torch.tensor(a, requires_grad=True) for a in _hand_built())
    ours = attention_maps_from(_hand_built(), SEQ, batch=1)
    theirs = attention_maps_from(layers, SEQ, batch=1)
    np.testing.assert_allclose(theirs.note_attention, ours.note_attention, atol=1e-6)


def test_logits_give_each_note_the_sum_of_its_tokens_nll():
    V = 11
    logits = np.zeros((2, T, V))                              # uniform: every token costs log V
    logits[1, 4, 5] = 2.0                                     # but token 5 ("P62", id 5) is likelier
    maps = attention_maps_from(_hand_built(), SEQ, batch=1, logits=logits)
    p5 = math.exp(logits[1, 4, 5]) / (math.exp(logits[1, 4, 5]) + V - 1)
    assert math.isnan(maps.token_nll[0])
    np.testing.assert_allclose(maps.surprise, [3 * math.log(V), -math.log(p5) + 2 * math.log(V),
                                               3 * math.log(V)])


def test_a_token_count_that_does_not_match_the_attention_is_refused():
    att = tuple(a[:, :, :-1, :-1] for a in _hand_built())
    with pytest.raises(ValueError, match="covers 10 tokens but the sequence has 11"):
        attention_maps_from(att, SEQ)


def test_layers_of_different_shapes_are_refused():
    a, b = _hand_built()
    with pytest.raises(ValueError, match="one \\(B, H, T, T\\) array per layer"):
        stack_attentions((a, b[:, :1]))


def test_tiny_gpt2_over_miditok_remi_tokens_gives_maps_whose_rows_sum_to_one():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    miditok = pytest.importorskip("miditok")
    symusic = pytest.importorskip("symusic")
    from music_attn.training.data import shipped_melodies
    tokenizer = miditok.REMI(miditok.TokenizerConfig())
    tokens = tokenizer(symusic.Score(str(shipped_melodies()[0])))[0]
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=tokenizer["BOS_None"], eos_token_id=tokenizer["EOS_None"],
                                     attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        out = model(torch.tensor([tokens.ids]), output_attentions=True)
    maps = attention_maps_from(out.attentions, tokens, tokenizer=tokenizer, logits=out.logits)
    assert maps.note_attention.shape[:2] == (2, 2)
    total = maps.note_attention.sum(-1) + maps.structure_share
    np.testing.assert_allclose(total, 1.0, atol=1e-5)             # every query's weight is accounted for
    assert np.all(np.isfinite(maps.surprise)) and maps.surprise.min() > 0


@pytest.mark.slow
def test_our_models_attention_through_the_hf_path_gives_the_maps_of_attention_maps():
    from music_attn.inspect.inspector import attention_maps
    from music_attn.runtime.checkpoint import load_model
    from music_attn.training.data import shipped_melodies
    model = load_model()
    seqs = [model.tokenizer.encode(p) for p in shipped_melodies()]
    seq = min(seqs, key=len)                                               # one that fits the model
    assert len(seq) <= model.config.max_len
    logits, att = model.forward(seq.ids[None], return_attention=True)      # (1, T, V), (L, 1, H, T, T)
    ours = attention_maps(model, seq)
    theirs = attention_maps_from(tuple(att), seq, logits=logits)          # tuple of (1, H, T, T)
    np.testing.assert_allclose(theirs.note_attention, ours.note_attention, atol=1e-6)
    np.testing.assert_allclose(theirs.surprise, ours.surprise, atol=1e-4)
