"""Strided evaluation scores every token once, with context, and agrees with a direct computation."""

import numpy as np
import pytest

from music_attn.training.evaluate import model_nll
from music_attn.runtime.windows import sequence_nll, spans, window_start
from music_attn.core.model import ModelConfig, init_model


@pytest.mark.parametrize("n", [1, 2, 50, 63, 64, 65, 200, 1001])
@pytest.mark.parametrize("size, stride", [(64, None), (64, 16), (10, 10), (7, 3)])
def test_spans_give_every_position_to_exactly_one_window_with_enough_context(n, size, stride):
    step = size // 2 if stride is None else stride
    owner = []
    for s in spans(n, size, stride):
        assert 0 <= s.start <= s.keep < s.stop <= n and s.stop - s.start <= size
        owner.extend(range(s.keep, s.stop))
        for p in range(s.keep, s.stop):                   # context inside the window
            assert s.start == 0 or p - s.start >= size - step
    assert owner == list(range(n))                        # a partition of 0..n-1, in order


@pytest.mark.parametrize("n", [1, 15, 16, 17, 63, 64, 65, 200, 1001])
@pytest.mark.parametrize("size, stride, align", [(64, None, 16), (64, 16, 16), (64, 32, 4), (10, 8, 4)])
def test_aligned_spans_start_on_the_grid_and_still_partition_with_context(n, size, stride, align):
    step = (size // 2) // align * align if stride is None else stride
    owner = []
    for s in spans(n, size, stride, align=align):
        assert s.start % align == 0, s
        assert 0 <= s.start <= s.keep < s.stop <= n and s.stop - s.start <= size
        owner.extend(range(s.keep, s.stop))
        for p in range(s.keep, s.stop):
            assert s.start == 0 or p - s.start >= size - step
    assert owner == list(range(n))


def test_a_stride_off_the_models_period_is_refused():
    with pytest.raises(ValueError, match="period"):
        spans(100, 64, 24, align=16)


@pytest.mark.parametrize("size, stride", [(8, None), (8, 3), (5, 5)])
def test_window_start_is_the_first_grid_window_that_holds_the_position(size, stride):
    step = size // 2 if stride is None else stride
    for p in range(60):
        start = window_start(p, size, stride)
        assert start % step == 0 and start <= p < start + size
        assert start == 0 or p >= start - step + size     # the window before did not hold it


def test_sequence_nll_equals_one_forward_when_the_sequence_fits_and_windows_agree_after():
    model = init_model(ModelConfig(vocab_size=30, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=40),
                       np.random.default_rng(0))
    seq = np.random.default_rng(1).integers(1, 30, size=90)
    np.testing.assert_allclose(sequence_nll(model, seq[:41]), _direct_nll(model, seq[:41]), rtol=1e-6)
    nll = sequence_nll(model, seq, window=40, stride=20)
    for s in spans(89, 40, 20):          # each kept target equals a direct forward of its window
        direct = _direct_nll(model, seq[s.start:s.stop + 1])
        np.testing.assert_allclose(nll[s.keep:s.stop], direct[s.keep - s.start:], rtol=1e-6)


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
    from music_attn.music.tokenizers import RemiTokenizer

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
