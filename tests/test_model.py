"""The decoder: KV cache == full forward, causality, attention probabilities, config checks."""

import numpy as np
import pytest

from music_attn.core.model import ATTENTIONS, POSITIONALS, ModelConfig, init_model

V = 23


def make_model(positional="sinusoidal", attention="full", *, max_len=40, seed=0, window=5, period=0):
    config = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_len=max_len,
                         positional=positional, attention=attention, window=window, period=period)
    model = init_model(config, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)         # larger weights: attention that is far from uniform
    for name, value in model.params.items():
        value += rng.normal(0, 0.2, value.shape).astype(np.float32)
    return model


CASES = [(p, a) for p in POSITIONALS for a in ATTENTIONS]


@pytest.mark.parametrize("positional, attention", CASES)
def test_one_token_with_cache_equals_full_forward_over_the_prefix(positional, attention):
    model = make_model(positional, attention)
    ids = np.random.default_rng(5).integers(0, V, (2, 40))
    cache = model.new_cache(batch=2)
    model.forward(ids[:, :3], cache=cache)
    for t in range(3, 40):
        step = model.forward(ids[:, t:t + 1], cache=cache)[:, 0]           # (B, V)
        full = model.forward(ids[:, :t + 1])[:, -1]                        # the whole prefix again
        np.testing.assert_allclose(step, full, atol=1e-5, rtol=0, err_msg=f"position {t}")
    assert len(cache) == 40


@pytest.mark.parametrize("positional, attention", CASES)
def test_cache_equals_full_forward_past_several_query_blocks(positional, attention):
    model = make_model(positional, attention, max_len=150, window=70)   # blocks of 64 queries
    ids = np.random.default_rng(10).integers(0, V, (1, 150))
    full, att = model.forward(ids, return_attention=True)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
    i, j = np.indices((150, 150))
    assert not att[..., j > i].any()
    cache = model.new_cache()
    steps = [model.forward(ids[:, :100], cache=cache)]
    steps += [model.forward(ids[:, t:t + 1], cache=cache) for t in range(100, 150)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", POSITIONALS)
def test_chunks_through_the_cache_equal_one_full_forward(positional):
    model = make_model(positional, "local")
    ids = np.random.default_rng(6).integers(0, V, (1, 33))
    cache = model.new_cache()
    pieces = [model.forward(ids[:, a:b], cache=cache) for a, b in ((0, 10), (10, 11), (11, 25), (25, 33))]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), model.forward(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional, attention", CASES)
def test_future_tokens_do_not_change_past_outputs(positional, attention):
    model = make_model(positional, attention)
    rng = np.random.default_rng(7)
    ids = rng.integers(0, V, (1, 30))
    changed = ids.copy()
    changed[0, 17:] = rng.integers(0, V, 13)
    a, b = model.forward(ids), model.forward(changed)
    np.testing.assert_array_equal(a[:, :17], b[:, :17])
    assert np.abs(a[:, 17:] - b[:, 17:]).max() > 1e-3        # the future itself does change


@pytest.mark.parametrize("positional, attention", CASES)
def test_attention_rows_sum_to_one_and_never_look_ahead(positional, attention):
    model = make_model(positional, attention, window=4)
    ids = np.random.default_rng(8).integers(0, V, (3, 20))
    logits, att = model.forward(ids, return_attention=True)
    assert logits.shape == (3, 20, V) and logits.dtype == np.float32
    assert att.shape == (2, 3, 4, 20, 20) and att.dtype == np.float32
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
    i, j = np.indices((20, 20))
    assert not att[..., j > i].any()
    if attention == "local":                                  # only the 4 most recent keys
        assert not att[..., j <= i - 4].any()
    assert (att >= 0).all()


def test_attention_with_a_cache_covers_cached_and_new_keys():
    model = make_model("relative")
    ids = np.random.default_rng(9).integers(0, V, (1, 12))
    cache = model.new_cache()
    model.forward(ids[:, :9], cache=cache)
    _, att = model.forward(ids[:, 9:], cache=cache, return_attention=True)
    _, full = model.forward(ids, return_attention=True)
    assert att.shape == (2, 1, 4, 3, 12)
    np.testing.assert_allclose(att, full[..., 9:, :], atol=1e-6)


def test_local_attention_ignores_tokens_beyond_the_window_with_one_layer():
    config = ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, d_ff=16, max_len=20,
                         positional="rope", attention="local", window=3)
    model = init_model(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, (1, 20))
    changed = ids.copy()
    changed[0, :10] = rng.integers(0, V, 10)        # keys more than 3 back from position 12+
    np.testing.assert_array_equal(model.forward(ids)[:, 12:], model.forward(changed)[:, 12:])


def test_cache_refuses_to_overflow_max_len():
    model = make_model(max_len=8)
    cache = model.new_cache()
    model.forward(np.zeros((1, 6), int), cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        model.forward(np.zeros((1, 3), int), cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        model.forward(np.zeros((1, 9), int))


def test_bad_ids_are_refused_with_a_clear_message():
    model = make_model()
    with pytest.raises(ValueError, match="token ids"):
        model.forward(np.array([[0, V]]))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model.forward(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="batch"):
        model.forward(np.zeros((2, 1), int), cache=model.new_cache(batch=1))


def test_config_round_trips_through_a_dict_and_rejects_nonsense():
    config = ModelConfig(vocab_size=50, d_model=24, n_heads=3, positional="relative", attention="local")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(vocab_size=50, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="positional"):
        ModelConfig(vocab_size=50, positional="learned")
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_parameters_of_the_wrong_shape_are_refused():
    model = make_model()
    params = dict(model.params)
    params["h0.ff.w1"] = params["h0.ff.w1"][:, :-1]
    with pytest.raises(ValueError, match="h0.ff.w1"):
        type(model)(model.config, params)


def test_same_seed_same_weights_and_different_seed_different_weights():
    config = ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, d_ff=16, max_len=8)
    a = init_model(config, np.random.default_rng(3))
    b = init_model(config, np.random.default_rng(3))
    c = init_model(config, np.random.default_rng(4))
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["tok_emb"], c.params["tok_emb"])


@pytest.mark.slow
def test_shipped_model_logits_on_a_melody_equal_a_float64_reference():
    """The shipped checkpoint loads and gives, on a packaged melody, the logits of the model
    written from the maths in float64 (tests/conftest.py), to float32 tolerance."""
    from conftest import reference_logits64
    from music_attn.runtime.checkpoint import load_model
    from music_attn.training.data import shipped_melodies

    model = load_model()
    ids = model.tokenizer.encode(shipped_melodies()[0]).ids[:120]
    ours = model.forward(ids[None, :])[0]
    np.testing.assert_allclose(ours, reference_logits64(model, ids), rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
def test_logits_equal_a_float64_reference_written_from_the_maths(positional):
    from conftest import reference_logits64
    model = make_model(positional, max_len=40).astype(np.float64)
    ids = np.random.default_rng(3).integers(0, model.config.vocab_size, 33)
    np.testing.assert_allclose(model.forward(ids[None, :])[0], reference_logits64(model, ids),
                               rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- decode step

@pytest.mark.parametrize("positional, attention", CASES)
def test_float32_decode_steps_equal_forward_across_a_cache_restart(positional, attention):
    """Model.decode (folded weights, float32) gives forward's logits of each prefix, for a batch,
    past the local window, and again after the cache restarts on a later window, as
    generation does when the window is full."""
    model = make_model(positional, attention, max_len=24)
    ids = np.random.default_rng(5).integers(0, V, (2, 34))
    cache = model.new_cache(batch=2)
    for start, end in ((0, 24), (12, 34)):                      # the second window restarts the cache
        cache.reset()
        model.forward(ids[:, start:start + 4], cache=cache)
        full = model.forward(ids[:, start:end])                 # (B, T, V), no cache
        for t in range(start + 4, end):
            step = model.decode(ids[:, t], cache)
            np.testing.assert_allclose(step, full[:, t - start], rtol=2e-4, atol=2e-5,
                                       err_msg=f"{positional} {attention} t={t}")


@pytest.mark.slow
def test_decode_of_the_shipped_model_equals_a_float64_reference():
    """The shipped checkpoint decoding a melody token by token gives the float64 model written
    from the maths (tests/conftest.py), to float32 tolerance."""
    from conftest import reference_logits64
    from music_attn.runtime.checkpoint import load_model
    from music_attn.training.data import shipped_melodies

    model = load_model()
    ids = model.tokenizer.encode(shipped_melodies()[0]).ids[:100]
    cache = model.new_cache()
    model.forward(ids[None, :10], cache=cache)
    steps = np.stack([model.decode(ids[t:t + 1], cache)[0].copy() for t in range(10, 100)])
    np.testing.assert_allclose(steps, reference_logits64(model, ids)[10:], rtol=1e-4, atol=2e-4)


def test_decode_refuses_what_forward_refuses():
    model = make_model()
    cache = model.new_cache(batch=2)
    model.forward(np.zeros((2, 39), int), cache=cache)
    for tokens, words in (([1, -1], "token ids"), ([1, V], "token ids"), ([1.0, 2.0], "integer"),
                          ([1], "batch")):
        with pytest.raises(ValueError, match=words):
            model.decode(np.array(tokens), cache)
    model.decode(np.array([1, 2]), cache)                       # position 39: the last one
    with pytest.raises(ValueError, match="exceed"):
        model.decode(np.array([1, 2]), cache)


def test_a_cache_decodes_with_the_weights_of_the_model_that_uses_it():
    a, b = make_model(seed=0), make_model(seed=7)
    ids = np.random.default_rng(0).integers(0, V, (1, 6))
    cache = a.new_cache()
    a.forward(ids[:, :5], cache=cache)
    a.decode(ids[:, 5], cache)                                  # sets up a's decode weights
    cache.reset()
    b.forward(ids[:, :5], cache=cache)
    np.testing.assert_allclose(b.decode(ids[:, 5], cache), b.forward(ids)[:, -1], rtol=2e-4, atol=2e-5)


# ----------------------------------------------------------------------------- period embedding

@pytest.mark.parametrize("positional", POSITIONALS)
def test_period_embedding_logits_equal_the_float64_reference(positional):
    from conftest import reference_logits64
    model = make_model(positional, max_len=40, period=6).astype(np.float64)
    ids = np.random.default_rng(4).integers(0, V, 33)
    np.testing.assert_allclose(model.forward(ids[None, :])[0], reference_logits64(model, ids),
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_period_embedding_decode_and_cache_equal_the_full_forward(attention):
    model = make_model("relative", attention, period=4)
    ids = np.random.default_rng(9).integers(0, V, (2, 30))
    full = model.forward(ids)
    cache = model.new_cache(batch=2)
    steps = [model.forward(ids[:, :7], cache=cache)[:, -1]]        # an odd prefix: phase 3 next
    steps += [model.decode(ids[:, t], cache).copy() for t in range(7, 30)]
    np.testing.assert_allclose(np.stack(steps, axis=1), full[:, 6:], atol=1e-5, rtol=0)


def test_period_embedding_gradient_matches_finite_differences():
    from test_layers import assert_grad
    model = make_model("relative", max_len=12, period=3).astype(np.float64)
    rng = np.random.default_rng(2)
    ids, targets = rng.integers(0, V, (2, 10)), rng.integers(-1, V, (2, 10))
    _, grads = model.loss_and_grads(ids, targets)
    assert np.abs(grads["period_emb"]).min() > 0                     # every row is used
    assert_grad(lambda: np.array(model.loss(ids, targets)), model.params["period_emb"],
                grads["period_emb"], 1.0, entries=18)


@pytest.mark.parametrize("period", [-1, 41, 2.0, True])
def test_bad_periods_are_refused(period):
    with pytest.raises(ValueError, match="period"):
        ModelConfig(vocab_size=V, max_len=40, period=period)


def test_a_repeated_cache_continues_every_row_like_the_original():
    model = make_model("relative", "soft_align")
    ids = np.random.default_rng(3).integers(0, V, (3, 12))
    ids[:, :7] = ids[0, :7]                                     # one prompt, three continuations
    one = model.new_cache()
    model.forward(ids[:1, :7], cache=one)
    cache = one.repeat(3)
    assert len(cache) == 7 and cache.batch == 3
    steps = np.stack([model.decode(ids[:, t], cache).copy() for t in range(7, 12)], axis=1)
    np.testing.assert_allclose(steps, model.forward(ids)[:, 7:], rtol=2e-4, atol=2e-5)
    with pytest.raises(ValueError, match="one sequence"):
        cache.repeat(2)


# ----------------------------------------------------------------------------- condition tokens

def _conditioned(K=3, **kw):
    model = make_model("relative", max_len=24, **kw)
    config = ModelConfig(**{**model.config.to_dict(), "condition": K})
    return init_model(config, np.random.default_rng(5)).astype(np.float64)


def test_condition_logits_equal_the_float64_reference():
    from conftest import reference_logits64
    model = _conditioned(period=4)
    rng = np.random.default_rng(11)
    ids, cond = rng.integers(0, V, 20), rng.integers(0, V, (20, 3))
    np.testing.assert_allclose(model.forward(ids[None], condition=cond[None])[0],
                               reference_logits64(model, ids, cond), rtol=1e-9, atol=1e-10)


def test_condition_changes_the_output_where_it_changes_and_nowhere_before():
    model = _conditioned()
    rng = np.random.default_rng(12)
    ids, cond = rng.integers(0, V, (1, 16)), rng.integers(0, V, (1, 16, 3))
    other = cond.copy()
    other[0, 9, 1] = (other[0, 9, 1] + 1) % V
    a, b = model.forward(ids, condition=cond)[0], model.forward(ids, condition=other)[0]
    np.testing.assert_array_equal(a[:9], b[:9])                   # causal: earlier outputs unchanged
    assert np.abs(a[9] - b[9]).max() > 1e-6


def test_condition_gradient_matches_finite_differences():
    from test_layers import assert_grad
    model = _conditioned(K=2)
    rng = np.random.default_rng(13)
    ids, targets = rng.integers(0, V, (2, 10)), rng.integers(-1, V, (2, 10))
    cond = rng.integers(0, V, (2, 10, 2))
    _, grads = model.loss_and_grads(ids, targets, condition=cond)
    used = grads["cond_emb"][0, cond[0, :, 0]]
    assert np.abs(used).min() > 0
    assert_grad(lambda: np.array(model.loss(ids, targets, condition=cond)), model.params["cond_emb"],
                grads["cond_emb"], 1.0, entries=24)


def test_soft_targets_train_on_distributions_and_one_hot_ones_are_the_hard_loss():
    model = _conditioned(K=2)
    rng = np.random.default_rng(15)
    ids, targets = rng.integers(0, V, (4, 10)), rng.integers(-1, V, (4, 10))
    cond = rng.integers(0, V, (4, 10, 2))
    soft = rng.random((4, 10, V))
    soft /= soft.sum(-1, keepdims=True)
    loss, _ = model.loss_and_grads(ids, targets, condition=cond, soft=soft, workers=2)
    logits = model.forward(ids, condition=cond)                     # float64, no dropout
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    counted = targets >= 0
    assert loss == pytest.approx(-(soft * logp).sum(-1)[counted].sum() / counted.sum(), rel=1e-10)
    hard, hard_grads = model.loss_and_grads(ids, targets, condition=cond, workers=2)
    one_hot, one_hot_grads = model.loss_and_grads(ids, targets, condition=cond, workers=2,
                                                  soft=np.eye(V)[np.maximum(targets, 0)])
    assert one_hot == pytest.approx(hard, rel=1e-12)
    for name, g in hard_grads.items():
        np.testing.assert_allclose(one_hot_grads[name], g, rtol=1e-10, atol=1e-13)


def test_condition_decode_steps_equal_the_full_forward():
    model = _conditioned(period=4).astype(np.float32)
    rng = np.random.default_rng(14)
    ids, cond = rng.integers(0, V, (2, 18)), rng.integers(0, V, (2, 18, 3))
    full = model.forward(ids, condition=cond)
    cache = model.new_cache(batch=2)
    steps = [model.forward(ids[:, :5], cache=cache, condition=cond[:, :5])[:, -1]]
    steps += [model.decode(ids[:, t], cache, condition=cond[:, t]).copy() for t in range(5, 18)]
    np.testing.assert_allclose(np.stack(steps, axis=1), full[:, 4:], atol=1e-5, rtol=0)


def test_a_conditioned_model_refuses_a_missing_or_misshapen_condition():
    model = _conditioned()
    ids = np.zeros((1, 4), int)
    with pytest.raises(ValueError, match="condition"):
        model.forward(ids)
    with pytest.raises(ValueError, match="condition"):
        model.forward(ids, condition=np.zeros((1, 4, 2), int))
    with pytest.raises(ValueError, match="condition"):
        model.forward(ids, condition=np.full((1, 4, 3), V))
