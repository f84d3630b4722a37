"""Dropout: the layer, its backward by finite differences, and its place in the model (training only)."""

import numpy as np
import pytest

from music_attn.core.layers import dropout_backward, dropout_forward
from music_attn.core.model import ModelConfig, init_model
from test_layers import assert_grad


def test_dropout_zeroes_about_p_and_scales_the_rest_by_one_over_keep():
    x = np.random.default_rng(0).normal(size=(200, 300))
    out, _ = dropout_forward(x, 0.3, np.random.default_rng(1))
    dropped = out == 0
    assert abs(dropped.mean() - 0.3) < 0.01                         # 60,000 draws: sd 0.002
    np.testing.assert_allclose(out[~dropped], x[~dropped] / 0.7, rtol=1e-12)


def test_dropout_is_the_identity_without_rng_or_with_p_zero():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    for p, rng in ((0.5, None), (0.0, np.random.default_rng(1))):
        out, cache = dropout_forward(x, p, rng)
        assert out is x
        assert dropout_backward(x, cache) is x


def test_dropout_keeps_float32():
    x = np.ones((4, 5), np.float32)
    out, cache = dropout_forward(x, 0.5, np.random.default_rng(0))
    assert out.dtype == np.float32 and dropout_backward(out, cache).dtype == np.float32


def test_dropout_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    x, dout = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
    _, cache = dropout_forward(x, 0.4, np.random.default_rng(9))
    dx = dropout_backward(dout, cache)
    assert_grad(lambda: dropout_forward(x, 0.4, np.random.default_rng(9))[0], x, dx, dout)


def _model(dropout, positional="relative"):
    config = ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_len=10,
                         positional=positional, dropout=dropout)
    rng = np.random.default_rng(7)
    model = init_model(config, rng, dtype=np.float64)
    for value in model.params.values():
        value += rng.normal(0, 0.3, value.shape)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("positional", ["sinusoidal", "relative"])
def test_model_gradients_with_dropout_match_finite_differences(positional):
    model = _model(0.3, positional)
    rng = np.random.default_rng(3)
    ids, targets = rng.integers(0, 11, (2, 7)), rng.integers(-1, 11, (2, 7))

    def loss():     # the same masks every call: a fresh Generator with the same seed
        return np.array(model.loss_and_grads(ids, targets, rng=np.random.default_rng(5))[0])
    _, grads = model.loss_and_grads(ids, targets, rng=np.random.default_rng(5))
    for name, value in model.params.items():
        assert_grad(loss, value, grads[name], 1.0, entries=16)


def test_dropout_changes_training_loss_but_never_inference():
    with_dropout, without = _model(0.5), _model(0.0)
    ids = np.random.default_rng(4).integers(0, 11, (2, 9))
    np.testing.assert_array_equal(with_dropout.forward(ids), without.forward(ids))
    train_loss, _ = with_dropout.loss_and_grads(ids[:, :-1], ids[:, 1:], rng=np.random.default_rng(0))
    assert train_loss != pytest.approx(without.loss(ids[:, :-1], ids[:, 1:]), rel=1e-6)
    no_rng_loss, _ = with_dropout.loss_and_grads(ids[:, :-1], ids[:, 1:])
    assert no_rng_loss == pytest.approx(without.loss(ids[:, :-1], ids[:, 1:]), rel=1e-12)


def test_configs_saved_before_dropout_load_with_dropout_off():
    saved = ModelConfig(vocab_size=11).to_dict()
    del saved["dropout"]
    assert ModelConfig.from_dict(saved).dropout == 0.0


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_outside_zero_to_one_is_refused(p):
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(vocab_size=11, dropout=p)
