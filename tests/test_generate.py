"""Sampling: top-k, top-p, temperature, seeds; generation under the grammar; the command."""

import mido
import numpy as np
import pretty_midi
import pytest

from music_attn.runtime.checkpoint import save_checkpoint
from music_attn.cli import main
from music_attn.runtime.generate import generate, next_token_distribution, sample_next
from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers import RemiTokenizer


def softmax64(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


@pytest.fixture
def logits():
    return np.random.default_rng(0).normal(scale=2.0, size=50)


# --------------------------------------------------------------------------- the distribution

@pytest.mark.parametrize("k", [1, 3, 17, 50])
def test_top_k_keeps_exactly_the_k_most_likely_tokens(logits, k):
    probs = next_token_distribution(logits, 1.0, top_k=k)
    kept = set(np.flatnonzero(probs))
    assert kept == set(sorted(range(50), key=lambda i: -logits[i])[:k])
    np.testing.assert_allclose(probs[list(kept)], softmax64(logits[list(kept)]), rtol=1e-12)


def test_top_k_keeps_exactly_k_even_with_ties():
    probs = next_token_distribution(np.array([1.0, 3.0, 3.0, 3.0, 0.0]), 1.0, top_k=2)
    assert np.count_nonzero(probs) == 2 and probs[1] > 0 and probs[2] > 0


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p(logits, p):
    full = softmax64(logits)
    # reference: grow the set from the most likely token until its mass reaches p
    chosen, mass = [], 0.0
    for i in sorted(range(50), key=lambda i: -full[i]):
        if mass >= p:
            break
        chosen.append(i)
        mass += full[i]
    probs = next_token_distribution(logits, 1.0, top_p=p)
    assert set(np.flatnonzero(probs)) == set(chosen)
    np.testing.assert_allclose(probs[chosen], full[chosen] / full[chosen].sum(), rtol=1e-12)


def test_temperature_divides_the_logits(logits):
    np.testing.assert_allclose(next_token_distribution(logits, 0.5), softmax64(logits / 0.5), rtol=1e-12)
    np.testing.assert_allclose(next_token_distribution(logits, 3.0), softmax64(logits / 3.0), rtol=1e-12)


def test_temperature_zero_is_argmax_without_randomness(logits):
    assert sample_next(logits, 0.0, None, None, None) == int(np.argmax(logits))
    allowed = np.ones(50, bool)
    allowed[np.argmax(logits)] = False
    second = int(np.argsort(logits)[-2])
    assert sample_next(logits, 0, None, None, None, allowed=allowed) == second


def test_forbidden_tokens_are_never_sampled(logits):
    allowed = np.zeros(50, bool)
    allowed[[3, 7, 11]] = True
    rng = np.random.default_rng(1)
    draws = {sample_next(logits, 1.5, None, None, rng, allowed=allowed) for _ in range(300)}
    assert draws == {3, 7, 11}


@pytest.mark.slow
def test_samples_follow_the_distribution(logits):
    rng = np.random.default_rng(2)
    probs = next_token_distribution(logits, 1.0, top_k=5)
    draws = np.bincount([sample_next(logits, 1.0, 5, None, rng) for _ in range(20000)], minlength=50)
    np.testing.assert_allclose(draws / 20000, probs, atol=0.015)


def test_same_seed_same_samples_different_seed_different_samples(logits):
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sample_next(logits, 1.0, 20, 0.95, rng) for _ in range(50)]
    assert draw(5) == draw(5)
    assert draw(5) != draw(6)


def test_bad_sampling_settings_are_refused(logits):
    with pytest.raises(ValueError, match="rng"):
        sample_next(logits, 1.0, None, None, None)
    with pytest.raises(ValueError, match="top_p"):
        next_token_distribution(logits, 1.0, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        next_token_distribution(logits, 1.0, top_k=0)
    with pytest.raises(ValueError, match="masked"):
        next_token_distribution(logits, 1.0, allowed=np.zeros(50, bool))


# --------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def tokenizer():
    return RemiTokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=16,
                         max_len=96, positional="rope")
    m = init_model(config, np.random.default_rng(0), tokenizer=tokenizer)
    m.params["head.b"][tokenizer.eos_id] = -6.0        # keep random pieces going for a while
    return m


@pytest.mark.slow
def test_constrained_generation_always_decodes_without_skipped_tokens(model, tokenizer):
    for seed in range(100):
        out = generate(model, None, max_new_tokens=70, temperature=1.0, rng=np.random.default_rng(seed))
        assert out.ids[0] == tokenizer.bos_id
        assert tokenizer.decode(out.ids).skipped == 0, f"seed {seed}"


def test_unconstrained_generation_from_a_random_model_does_skip_tokens(model, tokenizer):
    skipped = [tokenizer.decode(generate(model, None, max_new_tokens=40, rng=np.random.default_rng(s),
                                         constrained=False).ids).skipped for s in range(5)]
    assert sum(skipped) > 0                    # so the test above is not vacuous


@pytest.mark.slow
def test_generation_stops_after_the_requested_bars(model, tokenizer):
    for seed in range(10):
        out = generate(model, None, n_bars=2, rng=np.random.default_rng(seed))
        bars = int(np.sum(out.ids == tokenizer.bar_id))
        assert bars <= 2 and (out.stop != "bars" or bars == 2)
        if out.stop == "tokens":        # the bound of n_bars * max_len new tokens (a cut note dropped)
            assert 2 * 96 - 4 <= len(out.ids) - 1 <= 2 * 96


def test_generation_respects_the_token_budget_and_keeps_the_prompt(model, tokenizer):
    prompt = tokenizer.ids_from_tokens(["BOS", "Bar", "Position_0", "Pitch_60", "Velocity_80",
                                        "Duration_12", "EOS"])
    out = generate(model, prompt, max_new_tokens=12, rng=np.random.default_rng(0))
    assert out.prompt_length == 6 and np.array_equal(out.ids[:6], prompt[:6])   # EOS dropped
    assert len(out.ids) - 6 <= 12
    assert tokenizer.decode(out.ids).skipped == 0


def test_same_seed_generates_the_same_sequence(model):
    a = generate(model, None, max_new_tokens=30, top_k=10, rng=np.random.default_rng(3))
    b = generate(model, None, max_new_tokens=30, top_k=10, rng=np.random.default_rng(3))
    c = generate(model, None, max_new_tokens=30, top_k=10, rng=np.random.default_rng(4))
    assert np.array_equal(a.ids, b.ids) and not np.array_equal(a.ids, c.ids)


def test_greedy_generation_is_the_same_with_and_without_the_cache(model):
    a = generate(model, None, max_new_tokens=40, temperature=0)
    b = generate(model, None, max_new_tokens=40, temperature=0, use_cache=False)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_long_prompt_is_cropped_and_generation_slides_past_max_len(model, tokenizer):
    bar = ["Bar", "Position_0", "Pitch_62", "Velocity_80", "Duration_12"]
    prompt = tokenizer.ids_from_tokens(["BOS"] + bar * 33)                    # 166 > max_len 96
    assert tokenizer.decode(prompt).skipped == 0
    out = generate(model, prompt, max_new_tokens=250, rng=np.random.default_rng(0))
    assert np.array_equal(out.ids[:len(prompt)], prompt)
    assert out.stop == "eos" or len(out.ids) - len(prompt) >= 250 - 4   # minus a note cut short
    assert len(out.ids) > 96 + len(prompt) or out.stop == "eos"
    assert tokenizer.decode(out.ids).skipped == 0


def test_sliding_window_gives_each_token_at_least_half_a_window_of_context(model):
    """Greedy generation past max_len equals a plain loop that feeds the model, for each new
    token, the tokens since the last multiple of L/2 that leaves the window at most L long."""
    L = model.config.max_len
    out = generate(model, None, max_new_tokens=2 * L + 20, temperature=0, constrained=False)
    seq = [int(out.ids[0])]
    for _ in range(2 * L + 20):
        p = len(seq) - 1                                   # position whose logits we need
        start = 0
        while p - start >= L:                              # the window [start, p] must fit
            start += L // 2
        assert p - start >= L // 2 or start == 0           # at least half a window of context
        seq.append(int(np.argmax(model.forward(np.asarray([seq[start:]]))[0, -1])))
    np.testing.assert_array_equal(out.ids, seq[:len(out.ids)])
    assert len(out.ids) == 2 * L + 21 or out.ids[-1] == model.tokenizer.eos_id


def test_sliding_window_of_a_period_model_restarts_only_on_its_period(tokenizer):
    """A model with ``period`` P reads windows that start at multiples of P: with L = 40 and
    P = 12 the starts move by 12 (the largest multiple of P within L/2), checked against a
    plain loop, and the cached generation gives the same tokens."""
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=16,
                         max_len=40, positional="relative", period=12)
    model = init_model(config, np.random.default_rng(1), tokenizer=tokenizer)
    model.params["period_emb"] += np.random.default_rng(2).normal(0, 1.0, (12, 16)).astype(np.float32)
    out = generate(model, None, max_new_tokens=100, temperature=0, constrained=False)
    seq = [int(out.ids[0])]
    for _ in range(100):
        p, start = len(seq) - 1, 0
        while p - start >= 40:
            start += 12
        seq.append(int(np.argmax(model.forward(np.asarray([seq[start:]]))[0, -1])))
    np.testing.assert_array_equal(out.ids, seq[:len(out.ids)])
    assert len(out.ids) == 101 or out.ids[-1] == tokenizer.eos_id


def test_decode_step_equals_the_forward_of_one_token(model):
    """Model.decode (the single-query path) gives forward's logits, for every positional and
    attention option, batched or not, at positions past a local window."""
    for positional in ("sinusoidal", "rope", "relative"):
        for attention in ("full", "local", "soft_align"):
            config = ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_len=48,
                                 positional=positional, attention=attention, window=5)
            m = init_model(config, np.random.default_rng(1), dtype=np.float64)
            ids = np.random.default_rng(2).integers(0, 40, (3, 30))
            full = m.forward(ids)                                     # (B, T, V), no cache at all
            cache = m.new_cache(3)
            m.forward(ids[:, :10], cache=cache)
            for t in range(10, 30):
                np.testing.assert_allclose(m.decode(ids[:, t], cache), full[:, t], rtol=1e-10,
                                           atol=1e-12, err_msg=f"{positional} {attention} t={t}")


@pytest.mark.slow
def test_batched_samples_equal_single_runs_with_their_seeds(model, tokenizer):
    """Sample i of a batch is what a single run with sample i's generator gives: its own
    grammar, its own stop (some stop early at EOS), its own seed stream."""
    m64 = model.astype(np.float64)                 # float64: batch and single agree to ~1e-16
    prompt = tokenizer.ids_from_tokens(["BOS", "Bar", "Position_0", "Pitch_60", "Velocity_80",
                                        "Duration_12"])
    seeds = [11, 12, 13, 14, 15]
    batch = generate(m64, prompt, n_bars=3, top_p=0.95, num_samples=len(seeds),
                     rng=[np.random.default_rng(s) for s in seeds])
    singles = [generate(m64, prompt, n_bars=3, top_p=0.95, rng=np.random.default_rng(s)) for s in seeds]
    for b, s in zip(batch, singles):
        np.testing.assert_array_equal(b.ids, s.ids)
        assert (b.stop, b.bars, b.prompt_length) == (s.stop, s.bars, s.prompt_length)
    assert len({tuple(b.ids) for b in batch}) == len(seeds)            # the streams differ
    assert len({len(b.ids) for b in batch}) > 1                        # and stop at different times


def test_no_end_forbids_eos_until_the_bars_are_written(model, tokenizer):
    eager = model.astype(np.float32)
    eager.params["head.b"][tokenizer.eos_id] = 8.0                    # a model that wants to stop
    ended = generate(eager, None, n_bars=3, rng=np.random.default_rng(0))
    assert ended.stop == "eos" and ended.bars < 3                       # so the test is not vacuous
    for seed in range(5):
        out = generate(eager, None, n_bars=3, no_end=True, rng=np.random.default_rng(seed))
        new = out.ids[out.prompt_length:]
        bars = int(np.sum(new == tokenizer.bar_id))
        assert out.bars == bars
        eos_at = np.flatnonzero(new == tokenizer.eos_id)
        assert eos_at.size == 0 or np.sum(new[:eos_at[0]] == tokenizer.bar_id) >= 3
        assert (out.stop != "eos" or bars >= 3) and (out.stop != "bars" or bars == 3)
        assert tokenizer.decode(out.ids).skipped == 0


def test_generated_reports_the_bars_it_wrote(model, tokenizer):
    for seed in range(5):
        out = generate(model, None, n_bars=2, rng=np.random.default_rng(seed))
        assert out.bars == int(np.sum(out.ids[out.prompt_length:] == tokenizer.bar_id))


# --------------------------------------------------------------------------- command line

def test_generate_command_writes_midi_that_mido_and_pretty_midi_open(model, tmp_path, capsys):
    checkpoint = tmp_path / "m.npz"
    save_checkpoint(checkpoint, model)
    out = tmp_path / "out.mid"
    assert main(["generate", "-m", str(checkpoint), "--bars", "2", "--seed", "3", "--top-p", "0.9",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "out.mid" in printed and "0 tokens skipped" in printed
    assert mido.MidiFile(str(out)).length >= 0
    pretty_midi.PrettyMIDI(str(out))


def test_generate_command_continues_a_prompt(model, tokenizer, tmp_path, capsys):
    from midi_factory import random_tune, save
    checkpoint, prompt, out = tmp_path / "m.npz", tmp_path / "prompt.mid", tmp_path / "out.mid"
    save_checkpoint(checkpoint, model)
    save(random_tune(np.random.default_rng(0), n_bars=2)[0], prompt)
    assert main(["generate", "-m", str(checkpoint), "--prompt", str(prompt), "--tokens", "10",
                 "-o", str(out)]) == 0
    n_prompt = len(tokenizer.encode(prompt).ids)
    assert f"after a {n_prompt - 1}-token prompt" in capsys.readouterr().out
    assert len(pretty_midi.PrettyMIDI(str(out)).instruments[0].notes) > 0


def test_generate_command_with_bad_options_is_a_one_line_error(model, tmp_path, capsys):
    checkpoint = tmp_path / "m.npz"
    save_checkpoint(checkpoint, model)
    assert main(["generate", "-m", str(checkpoint), "--top-p", "1.5", "-o", str(tmp_path / "o.mid")]) == 2
    assert capsys.readouterr().err.startswith("error: --top-p")
    assert main(["generate", "-m", str(tmp_path / "nope.npz"), "-o", str(tmp_path / "o.mid")]) == 2
    assert "nope.npz" in capsys.readouterr().err
    assert not (tmp_path / "o.mid").exists()
