"""Strided evaluation scores every token once, with context, and agrees with a direct computation."""

import numpy as np
import pytest

from music_attn.training.evaluate import _windows, model_nll
from music_attn.core.model import ModelConfig, init_model


@pytest.mark.parametrize("n", [2, 50, 65, 66, 200, 1001])
def test_windows_score_every_target_once_with_half_a_window_of_context(n):
    L = 64
    seq = np.arange(n)
    scored = []
    for window, mask in _windows(seq, L):
        assert len(window) <= L + 1
        positions = window[1:][mask]          # the value of a token is its position here
        context = positions - window[0]       # tokens seen before it inside the window
        assert np.all((context >= L // 2) | (window[0] == 0))
        scored.extend(positions.tolist())
    assert scored == list(range(1, n))


def _direct_nll(model, seq):
    """float64 log-softmax of the model's logits, one window at a time (the sequence fits)."""
    logits = model.forward(np.asarray(seq)[None, :-1])[0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return -logp[np.arange(len(seq) - 1), np.asarray(seq)[1:]]


def test_model_nll_equals_direct_log_softmax_on_short_sequences():
    model = init_model(ModelConfig(vocab_size=30, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=40),
                       np.random.default_rng(0))
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, 30, size=k) for k in (5, 17, 41)]
    expected = np.concatenate([_direct_nll(model, s) for s in seqs])
    nll, count = model_nll(model, seqs, batch_size=2)
    assert count == expected.size
    assert nll == pytest.approx(expected.mean(), rel=1e-5)


@pytest.fixture(scope="module")
def melodies_and_model():
    from music_attn.training.data import shipped_melodies
    from music_attn.music.tokenizer import RemiTokenizer

    tok = RemiTokenizer(velocity_bins=0)
    seqs = [tok.encode(p).ids for p in shipped_melodies()]   # 2/2 ... 9/8, 3/8: several metres
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=128)
    return seqs, init_model(config, np.random.default_rng(0), tokenizer=tok)


def test_real_continuations_decode_cleanly_in_every_metre(melodies_and_model):
    from music_attn.training.evaluate import reference_stats

    seqs, model = melodies_and_model
    stats = reference_stats(model.tokenizer, seqs)
    assert stats["n"] >= 6
    assert stats["decoded_ok"] == 1.0


def test_constrained_generations_count_as_decoded_even_when_they_end_at_eos(melodies_and_model):
    from music_attn.training.evaluate import generation_stats

    seqs, model = melodies_and_model
    model.params["head.b"][model.tokenizer.eos_id] = 3.0     # make early EOS common
    stats = generation_stats(model, seqs, seeds=12, bars=2)
    assert stats["n"] == 12 and stats["decoded_ok"] == 1.0
